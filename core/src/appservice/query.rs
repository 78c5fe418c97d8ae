//! Node → appservice requests other than transactions: `ping`, user and room alias
//! queries, third-party lookups. Each is one bounded HTTP request with the `hs_token`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Registered;
use crate::error::Error;
use crate::server::Server;

/// How long a query or ping may take (Synapse allows 60 s for a transaction; a query
/// holds a client's request, so it gets less).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read of a query's answer.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A bounded HTTP client for appservices (on the same device or the LAN: plain http
/// allowed, no redirects).
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(2)
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn shared() -> Result<&'static reqwest::Client, Error> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = client(QUERY_TIMEOUT).map_err(Error::internal)?;
    Ok(CLIENT.get_or_init(|| c))
}

/// A failed request in a few words (no URL: it may carry a token in a query).
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// `POST /_matrix/app/v1/ping`: the round trip in milliseconds, or the Matrix error the
/// client API answers (`M_URL_NOT_SET`, `M_CONNECTION_TIMEOUT`, `M_CONNECTION_FAILED`,
/// `M_BAD_STATUS`).
pub async fn ping(a: &Registered, transaction_id: Option<&str>) -> Result<u64, Error> {
    let Some(url) = &a.url else {
        return Err(Error::AppserviceFailed(
            http::StatusCode::BAD_REQUEST,
            "M_URL_NOT_SET",
            "the appservice has no url".into(),
        ));
    };
    let mut body = serde_json::Map::new();
    if let Some(t) = transaction_id {
        body.insert("transaction_id".into(), Value::String(t.to_owned()));
    }
    let started = Instant::now();
    let res = shared()?
        .post(format!("{url}/_matrix/app/v1/ping"))
        .bearer_auth(&a.hs_token)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                Error::AppserviceFailed(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "M_CONNECTION_TIMEOUT",
                    "the appservice did not answer in time".into(),
                )
            } else {
                Error::AppserviceFailed(
                    http::StatusCode::BAD_GATEWAY,
                    "M_CONNECTION_FAILED",
                    format!("cannot reach the appservice: {}", describe(&e)),
                )
            }
        })?;
    let status = res.status();
    if !status.is_success() {
        let text = read_capped(res).await.unwrap_or_default();
        return Err(Error::AppserviceBadStatus(
            status.as_u16(),
            String::from_utf8_lossy(&text).into_owned(),
        ));
    }
    // It is up: a sender waiting out a backoff tries again now.
    a.wake.notify_one();
    Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

async fn read_capped(mut res: reqwest::Response) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

/// GET a path of the appservice's; `Some(json)` for a 2xx answer.
async fn get(a: &Registered, path: &str, query: &[(String, String)]) -> Option<Value> {
    let url = a.url.as_ref()?;
    let mut target = format!("{url}{path}");
    for (i, (k, v)) in query.iter().enumerate() {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(&format!("{}={}", enc(k), enc(v)));
    }
    let res = shared()
        .ok()?
        .get(target)
        .bearer_auth(&a.hs_token)
        .send()
        .await
        .map_err(|e| tracing::info!(appservice = %a.id, path, error = %describe(&e), "appservice query failed"))
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    serde_json::from_slice(&read_capped(res).await?).ok()
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Ask the appservices whose namespace holds `user_id` whether it exists (they create
/// it before answering 200). Whether one said yes.
pub async fn query_user(server: &Server, user_id: &str) -> bool {
    for a in server.appservices.all() {
        if a.is_user_in_namespace(user_id)
            && get(a, &format!("/_matrix/app/v1/users/{}", enc(user_id)), &[])
                .await
                .is_some()
        {
            return true;
        }
    }
    false
}

/// A local user's profile; a user unknown here but in an appservice's namespace is
/// asked of the appservice first (it may create the user, as bridges do for puppets).
pub async fn local_profile(
    server: &Server,
    user_id: &str,
) -> Result<Option<crate::storage::Profile>, Error> {
    if let Some(p) = server.db.read(|c| crate::storage::profile(c, user_id))? {
        return Ok(Some(p));
    }
    if query_user(server, user_id).await {
        return server.db.read(|c| crate::storage::profile(c, user_id));
    }
    Ok(None)
}

/// Ask the appservices whose namespace holds `alias` whether it exists (they create the
/// room and alias before answering 200). Whether one said yes.
pub async fn query_alias(server: &Server, alias: &str) -> bool {
    for a in server.appservices.all() {
        if a.is_alias_in_namespace(alias)
            && get(a, &format!("/_matrix/app/v1/rooms/{}", enc(alias)), &[])
                .await
                .is_some()
        {
            return true;
        }
    }
    false
}

/// `GET /thirdparty/protocols`: each declared protocol, as its appservice describes it
/// (`instances` merged where two appservices declare the same protocol).
pub async fn protocols(server: &Server) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for a in server.appservices.all() {
        for p in &a.protocols {
            let Some(mut info) = get(
                a,
                &format!("/_matrix/app/v1/thirdparty/protocol/{}", enc(p)),
                &[],
            )
            .await
            else {
                continue;
            };
            tag_instances(&mut info, &a.id);
            match out.get_mut(p) {
                Some(existing) => {
                    if let (Some(have), Some(more)) = (
                        existing["instances"].as_array_mut(),
                        info["instances"].as_array(),
                    ) {
                        have.extend(more.iter().cloned());
                    }
                }
                None => {
                    out.insert(p.clone(), info);
                }
            }
        }
    }
    out
}

/// Synapse adds the appservice's id to each instance, so clients can send it back.
fn tag_instances(info: &mut Value, as_id: &str) {
    if let Some(instances) = info["instances"].as_array_mut() {
        for i in instances {
            if i.is_object() {
                i["instance_id"] = Value::String(format!(
                    "{as_id}|{}",
                    i["network_id"].as_str().unwrap_or_default()
                ));
            }
        }
    }
}

/// One protocol's description, if an appservice declares it.
pub async fn protocol(server: &Server, protocol: &str) -> Option<Value> {
    protocols(server).await.remove(protocol)
}

/// Third-party locations or users: `kind` is `location` or `user`, `protocol` `None` for
/// the reverse lookups (by alias or user id). The answers of every appservice that
/// declares the protocol (or, for reverse lookups, of all), concatenated.
pub async fn lookup(
    server: &Server,
    kind: &str,
    protocol: Option<&str>,
    query: &[(String, String)],
) -> Vec<Value> {
    let mut out = Vec::new();
    for a in server.appservices.all() {
        let path = match protocol {
            Some(p) if a.protocols.iter().any(|x| x == p) => {
                format!("/_matrix/app/v1/thirdparty/{kind}/{}", enc(p))
            }
            Some(_) => continue,
            None => format!("/_matrix/app/v1/thirdparty/{kind}"),
        };
        if let Some(Value::Array(items)) = get(a, &path, query).await {
            out.extend(items);
        }
    }
    out
}
