//! Registration files: Synapse's YAML format, read and checked at start.
//!
//! The file is parsed into ruma's [`Registration`] plus the unstable keys ruma does not
//! know (`de.sorunome.msc2409.push_ephemeral`, the MSC2409 spelling of
//! `receive_ephemeral`; `org.matrix.msc3202`, device masquerading and the device data
//! of transactions). Every problem is one line naming the file and the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;
use ruma::api::appservice::{Namespace, Registration};
use serde::Deserialize;

/// The unstable keys of a registration.
#[derive(Debug, Default, Deserialize)]
struct Unstable {
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral", default)]
    push_ephemeral: bool,
    #[serde(rename = "org.matrix.msc3202", default)]
    msc3202: bool,
}

/// One compiled namespace entry.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Anchored at the start, as Synapse matches (`re.match`).
    pub regex: Regex,
    /// Only this appservice may create what matches.
    pub exclusive: bool,
    /// The regex as the file gives it.
    pub source: String,
}

/// A registration, checked and compiled.
#[derive(Debug)]
pub struct AppService {
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// `id`.
    pub id: String,
    /// `url`; `None` when the appservice takes no pushes.
    pub url: Option<String>,
    /// What the appservice presents (`Authorization: Bearer`).
    pub as_token: String,
    /// What this node presents to the appservice.
    pub hs_token: String,
    /// `@sender_localpart:server`, the appservice's own user.
    pub sender: String,
    /// `namespaces.users`.
    pub users: Vec<Pattern>,
    /// `namespaces.aliases`.
    pub aliases: Vec<Pattern>,
    /// `namespaces.rooms`.
    pub rooms: Vec<Pattern>,
    /// Exempt from rate limits unless `rate_limited: true` is set (Synapse's default is
    /// `true`; so is ours).
    pub rate_limited: bool,
    /// Third-party protocols it answers for.
    pub protocols: Vec<String>,
    /// Gets typing, receipts and presence in its transactions (MSC2409).
    pub receive_ephemeral: bool,
    /// May act as a device (`device_id=`) and gets to-device messages, device list
    /// changes and one-time key counts (MSC3202, MSC4203).
    pub msc3202: bool,
}

fn matches(patterns: &[Pattern], s: &str) -> bool {
    patterns.iter().any(|p| p.regex.is_match(s))
}

fn matches_exclusive(patterns: &[Pattern], s: &str) -> bool {
    patterns.iter().any(|p| p.exclusive && p.regex.is_match(s))
}

impl AppService {
    /// The user is the appservice's own or in its user namespace.
    pub fn is_user_in_namespace(&self, user_id: &str) -> bool {
        user_id == self.sender || matches(&self.users, user_id)
    }

    /// The user is in one of its exclusive user namespaces (or is its sender).
    pub fn claims_user(&self, user_id: &str) -> bool {
        user_id == self.sender || matches_exclusive(&self.users, user_id)
    }

    /// The alias is in its alias namespace.
    pub fn is_alias_in_namespace(&self, alias: &str) -> bool {
        matches(&self.aliases, alias)
    }

    /// The alias is in one of its exclusive alias namespaces.
    pub fn claims_alias(&self, alias: &str) -> bool {
        matches_exclusive(&self.aliases, alias)
    }

    /// The room id is in its room namespace.
    pub fn is_room_in_namespace(&self, room_id: &str) -> bool {
        matches(&self.rooms, room_id)
    }
}

/// A registration problem: one line naming the file and the key.
fn problem(file: &Path, key: &str, what: impl std::fmt::Display) -> String {
    format!("appservice {}: {key}: {what}", file.display())
}

fn compile(file: &Path, key: &str, list: &[Namespace]) -> Result<Vec<Pattern>, String> {
    list.iter()
        .enumerate()
        .map(|(i, ns)| {
            Regex::new(&format!("^(?:{})", ns.regex))
                .map(|regex| Pattern {
                    regex,
                    exclusive: ns.exclusive,
                    source: ns.regex.clone(),
                })
                .map_err(|e| {
                    let first = e.to_string().lines().last().unwrap_or_default().to_owned();
                    problem(file, &format!("namespaces.{key}[{i}].regex"), first)
                })
        })
        .collect()
}

/// Parse one registration file.
pub fn parse(file: &Path, text: &str, server_name: &str) -> Result<AppService, String> {
    let reg: Registration = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {})", l.line()))
            .unwrap_or_default();
        problem(file, "registration", format!("{e}{at}").replace('\n', " "))
    })?;
    let unstable: Unstable = serde_yaml_ng::from_str(text).unwrap_or_default();
    for (key, value) in [
        ("id", &reg.id),
        ("as_token", &reg.as_token),
        ("hs_token", &reg.hs_token),
        ("sender_localpart", &reg.sender_localpart),
    ] {
        if value.trim().is_empty() {
            return Err(problem(file, key, "must not be empty"));
        }
    }
    if reg.as_token == reg.hs_token {
        return Err(problem(file, "hs_token", "must differ from as_token"));
    }
    if !crate::account::valid_localpart(&reg.sender_localpart) {
        return Err(problem(
            file,
            "sender_localpart",
            "may contain only a-z, 0-9 and ._=-/+",
        ));
    }
    if let Some(url) = &reg.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(problem(
            file,
            "url",
            "must be an http:// or https:// URL, or null",
        ));
    }
    Ok(AppService {
        file: file.to_owned(),
        id: reg.id.clone(),
        url: reg.url.clone().map(|u| u.trim_end_matches('/').to_owned()),
        as_token: reg.as_token.clone(),
        hs_token: reg.hs_token.clone(),
        sender: format!("@{}:{server_name}", reg.sender_localpart),
        users: compile(file, "users", &reg.namespaces.users)?,
        aliases: compile(file, "aliases", &reg.namespaces.aliases)?,
        rooms: compile(file, "rooms", &reg.namespaces.rooms)?,
        rate_limited: reg.rate_limited.unwrap_or(true),
        protocols: reg.protocols.clone().unwrap_or_default(),
        receive_ephemeral: reg.receive_ephemeral || unstable.push_ephemeral,
        msc3202: unstable.msc3202,
    })
}

/// Read and check every registration file; problems across files (a repeated id or
/// token, a sender inside another appservice's exclusive namespace) are reported too.
pub fn load_all(files: &[PathBuf], server_name: &str) -> Result<Vec<AppService>, String> {
    let mut out: Vec<AppService> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("appservice {}: cannot read: {e}", file.display()))?;
        let a = parse(file, &text, server_name)?;
        // Checked in this order, so a file with several problems names the first.
        if let Some(other) = out.iter().find(|o| o.id == a.id) {
            return Err(problem(
                file,
                "id",
                format!("{:?} is also the id in {}", a.id, other.file.display()),
            ));
        }
        let tokens: HashSet<&str> = out
            .iter()
            .flat_map(|o| [o.as_token.as_str(), o.hs_token.as_str()])
            .collect();
        for (key, token) in [("as_token", &a.as_token), ("hs_token", &a.hs_token)] {
            if tokens.contains(token.as_str()) {
                return Err(problem(file, key, "is also a token of another appservice"));
            }
        }
        for other in &out {
            if other.sender == a.sender {
                return Err(problem(
                    file,
                    "sender_localpart",
                    format!("also the sender of {}", other.file.display()),
                ));
            }
            for (mine, theirs) in [(&a, other), (other, &a)] {
                if theirs.claims_user(&mine.sender) {
                    return Err(problem(
                        &mine.file,
                        "sender_localpart",
                        format!(
                            "{} is in an exclusive user namespace of {}",
                            mine.sender,
                            theirs.file.display()
                        ),
                    ));
                }
            }
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "abcd";

    fn reg(id: &str, as_token: &str, hs_token: &str, sender: &str, users: &str) -> String {
        format!(
            "id: {id}\nurl: http://127.0.0.1:29318\nas_token: {as_token}\nhs_token: {hs_token}\n\
             sender_localpart: {sender}\nrate_limited: false\n\
             de.sorunome.msc2409.push_ephemeral: true\n\
             namespaces:\n  users:\n  - exclusive: true\n    regex: '{users}'\n  aliases: []\n  rooms: []\n"
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn a_synapse_registration_parses_with_its_unstable_keys() {
        let a = parse(
            Path::new("r.yaml"),
            &reg("bridge", "at", "ht", "bridgebot", "@bridge_.*:abcd"),
            SERVER,
        )
        .expect("parse");
        assert_eq!(a.sender, "@bridgebot:abcd");
        assert!(a.receive_ephemeral, "the MSC2409 key is honoured");
        assert!(!a.rate_limited);
        assert!(a.claims_user("@bridge_alice:abcd"));
        assert!(a.claims_user("@bridgebot:abcd"));
        assert!(!a.claims_user("@alice:abcd"));
        // Anchored at the start only, as Synapse matches.
        assert!(!a.is_user_in_namespace("@x@bridge_alice:abcd"));
    }

    #[test]
    fn each_problem_is_one_line_naming_the_file_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let one = write(d, "one.yaml", &reg("a", "t1", "h1", "abot", "@a_.*"));
        let cases = [
            (reg("a", "t2", "h2", "bbot", "@b_.*"), "id"),
            (reg("b", "t1", "h2", "bbot", "@b_.*"), "as_token"),
            (reg("b", "t2", "t1", "bbot", "@b_.*"), "hs_token"),
            (
                reg("b", "t2", "h2", "bbot", "@b_(.*"),
                "namespaces.users[0].regex",
            ),
            (reg("b", "t2", "h2", "a_bot", "@b_.*"), "sender_localpart"),
            (reg("b", "t2", "t2", "bbot", "@b_.*"), "hs_token"),
            (reg("b", "t2", "h2", "B bot", "@b_.*"), "sender_localpart"),
            ("id: [".to_owned(), "registration"),
        ];
        for (text, key) in cases {
            let two = write(d, "two.yaml", &text);
            let err = load_all(&[one.clone(), two.clone()], SERVER).expect_err(key);
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(err.contains("two.yaml"), "names the file: {err}");
            assert!(err.contains(&format!(": {key}:")), "names {key}: {err}");
        }
        let two = write(d, "two.yaml", &reg("b", "t2", "h2", "bbot", "@b_.*"));
        assert_eq!(
            load_all(&[one, two], SERVER).expect("two good files").len(),
            2
        );
    }
}
