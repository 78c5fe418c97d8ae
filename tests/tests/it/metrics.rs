//! The Prometheus endpoint on the admin API: it parses as text exposition format, counts
//! a request under its route template, refuses a scrape without the admin token and
//! keeps unknown paths out of its labels.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use warren_tests::*;

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> anyhow::Result<f64> {
    Ok(match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().with_context(|| format!("value {s:?}"))?,
    })
}

/// A strict parser of the text format 0.0.4: every line is a `# HELP`, a `# TYPE` or a
/// sample of a family whose `# TYPE` came first (histogram samples with their suffixes).
fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    ensure!(text.ends_with('\n'), "no final newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().context("help name")?;
            ensure!(valid_name(name), "help name {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("type line")?;
            ensure!(valid_name(name), "type name {line:?}");
            ensure!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "type {line:?}"
            );
            ensure!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family declared twice: {name}"
            );
            continue;
        }
        ensure!(!line.starts_with('#') && !line.is_empty(), "line {line:?}");
        let name_end = line
            .find(['{', ' '])
            .with_context(|| format!("sample {line:?}"))?;
        let name = &line[..name_end];
        ensure!(valid_name(name), "sample name {line:?}");
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let end: usize;
            loop {
                // label name
                let start = chars.peek().map(|(i, _)| *i).context("labels")?;
                if inner[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = inner[start..].find('=').context("label =")? + start;
                let key = &inner[start..eq];
                ensure!(valid_name(key), "label name {key:?} in {line:?}");
                ensure!(inner[eq + 1..].starts_with('"'), "label quote {line:?}");
                while let Some((i, _)) = chars.peek() {
                    if *i > eq + 1 {
                        break;
                    }
                    chars.next();
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => bail!("bad escape {other:?} in {line:?}"),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                ensure!(closed, "unclosed label value in {line:?}");
                ensure!(
                    labels.insert(key.to_owned(), value).is_none(),
                    "label twice in {line:?}"
                );
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    other => bail!("after label {other:?} in {line:?}"),
                }
            }
            rest = &inner[end..];
        }
        let value = rest.strip_prefix(' ').context("space before value")?;
        ensure!(!value.contains(' '), "timestamps are not written: {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        ensure!(
            types.contains_key(family),
            "sample before its # TYPE: {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: parse_value(value)?,
        });
    }
    Ok(samples)
}

#[test]
fn the_parser_is_strict() {
    assert!(parse("# TYPE a counter\na{b=\"c\\\"d\"} 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "no TYPE");
    assert!(parse("# TYPE a counter\na{b=c} 1\n").is_err(), "unquoted");
    assert!(parse("# TYPE a counter\na{b=\"c\"} x\n").is_err(), "value");
    assert!(parse("# TYPE a counter\na 1").is_err(), "final newline");
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_count_requests_by_template_and_need_the_admin_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let base = node.client_url().trim_end_matches('/').to_owned();
    let token = std::fs::read_to_string(dir.path().join(warren_core::admin::TOKEN_FILE))?;
    let url = format!("{base}/_warren/admin/v1/metrics");
    let http = http_client()?;

    // No token, a wrong token: refused like every admin route.
    let status = http.get(&url).send().await?.status().as_u16();
    ensure!(status == 401 || status == 403, "no token: {status}");
    let status = http
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await?
        .status()
        .as_u16();
    ensure!(status == 401 || status == 403, "wrong token: {status}");

    // Some traffic: a route with a parameter, an event, unknown paths.
    let alice = RawUser::register(base.clone(), "alice").await?;
    alice
        .ok(
            reqwest::Method::GET,
            &format!("/profile/{}", alice.id()),
            Value::Null,
        )
        .await?;
    alice.create_room(json!({"name": "metrics"})).await?;
    let marker = format!("zz{}", std::process::id());
    for i in 0..25 {
        let status = http
            .get(format!("{base}/_matrix/client/v3/{marker}-{i}/x"))
            .send()
            .await?
            .status()
            .as_u16();
        ensure!(status == 404 || status == 400, "unknown path: {status}");
    }

    let response = http.get(&url).bearer_auth(token.trim()).send().await?;
    ensure!(response.status() == 200, "scrape: {}", response.status());
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    let text = response.text().await?;
    let samples = parse(&text).with_context(|| text.clone())?;

    // The profile request counted under its template, not its path.
    let counted = find(
        &samples,
        "warren_http_requests_total",
        &[
            ("api", "client"),
            ("endpoint", "/_matrix/client/v3/profile/{user_id}"),
            ("method", "GET"),
            ("status", "200"),
        ],
    )
    .with_context(|| format!("profile request not counted:\n{text}"))?;
    ensure!(counted.value >= 1.0, "{counted:?}");
    let histogram = find(
        &samples,
        "warren_http_request_duration_seconds_count",
        &[
            ("api", "client"),
            ("endpoint", "/_matrix/client/v3/profile/{user_id}"),
        ],
    )
    .context("duration histogram")?;
    ensure!(histogram.value >= 1.0, "{histogram:?}");
    // The refused scrapes are admin requests.
    ensure!(
        find(
            &samples,
            "warren_http_requests_total",
            &[("api", "admin"), ("endpoint", "/_warren/admin/v1/metrics")],
        )
        .is_some(),
        "admin requests: {text}"
    );
    // Unknown paths: one `unmatched` series, never the path itself.
    let unmatched = find(
        &samples,
        "warren_http_requests_total",
        &[
            ("api", "client"),
            ("endpoint", "unmatched"),
            ("method", "GET"),
        ],
    )
    .context("unmatched")?;
    ensure!(unmatched.value >= 25.0, "{unmatched:?}");
    for s in &samples {
        for v in s.labels.values() {
            ensure!(!v.contains(&marker), "a raw path became a label: {s:?}");
        }
        if let Some(e) = s.labels.get("endpoint") {
            ensure!(
                e == "unmatched" || e == "overflow" || e.starts_with('/'),
                "endpoint {e}"
            );
        }
    }
    let series = samples
        .iter()
        .filter(|s| s.name == "warren_http_requests_total")
        .count();
    ensure!(
        series <= warren_core::metrics::MAX_SERIES,
        "{series} series"
    );

    // Events, gauges.
    let local = find(
        &samples,
        "warren_events_persisted_total",
        &[("origin", "local")],
    )
    .context("events")?;
    ensure!(local.value >= 1.0, "{local:?}");
    ensure!(
        find(
            &samples,
            "warren_events_persisted_total",
            &[("origin", "remote")]
        )
        .is_some(),
        "remote events"
    );
    for gauge in [
        "warren_federation_queue_destinations",
        "warren_peers_connected",
        "warren_wal_bytes",
        "warren_uptime_seconds",
    ] {
        find(&samples, gauge, &[]).with_context(|| format!("{gauge}:\n{text}"))?;
    }
    // The writer has run the test's writes, committed them, and was held for them.
    let writer = |name: &str| -> anyhow::Result<f64> {
        Ok(find(&samples, name, &[])
            .with_context(|| format!("{name}:\n{text}"))?
            .value)
    };
    let writes = writer("warren_writer_writes_total")?;
    let commits = writer("warren_writer_commits_total")?;
    ensure!(
        writes >= 1.0 && commits >= 1.0 && commits <= writes,
        "{writes} writes, {commits} commits"
    );
    ensure!(
        writer("warren_writer_busy_seconds_total")? > 0.0,
        "writer busy time"
    );
    let db = find(&samples, "warren_database_bytes", &[]).context("database bytes")?;
    ensure!(db.value > 0.0, "{db:?}");
    if cfg!(target_os = "linux") {
        let rss = find(&samples, "warren_process_resident_memory_bytes", &[]).context("rss")?;
        ensure!(rss.value > 0.0, "{rss:?}");
    }
    Ok(())
}

/// Scrapes `node`'s metrics with its admin token and parses them.
async fn scrape(dir: &std::path::Path, base: &str) -> anyhow::Result<Vec<Sample>> {
    let token = std::fs::read_to_string(dir.join(warren_core::admin::TOKEN_FILE))?;
    let text = http_client()?
        .get(format!(
            "{}/_warren/admin/v1/metrics",
            base.trim_end_matches('/')
        ))
        .bearer_auth(token.trim())
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    parse(&text).with_context(|| text.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_requests_and_peers_are_counted() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let r = warren_core::federation::client::request(
        b.node.server(),
        &a.name(),
        http::Method::GET,
        "/_matrix/federation/v1/version",
        None,
    )
    .await?;
    ensure!(r.status() == 200, "version: {}", r.status());

    let samples = scrape(da.path(), &a.node.client_url()).await?;
    let counted = find(
        &samples,
        "warren_http_requests_total",
        &[
            ("api", "federation"),
            ("endpoint", "/_matrix/federation/v1/version"),
            ("method", "GET"),
            ("status", "200"),
        ],
    )
    .context("federation request not counted")?;
    ensure!(counted.value >= 1.0, "{counted:?}");
    let peers = find(&samples, "warren_peers_connected", &[]).context("peers")?;
    ensure!(peers.value >= 1.0, "{peers:?}");
    let queues = samples
        .iter()
        .filter(|s| s.name == "warren_federation_queue_depth")
        .count();
    ensure!(
        queues <= warren_core::metrics::MAX_QUEUE_DESTINATIONS,
        "{queues} queue series"
    );
    a.stop().await?;
    b.stop().await
}
