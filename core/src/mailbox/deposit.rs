//! Leaving mail for an unreachable node with one of its mailboxes, and holding it.

use std::sync::Arc;

use ruma::CanonicalJsonObject;
use serde_json::{Value, json};

use super::record;
use crate::error::Error;
use crate::federation::client;
use crate::federation::keys;
use crate::federation::warren_api::Deposit;
use crate::server::Server;
use crate::storage::{self, now_ms};

/// EDUs not worth keeping for later: who is typing and who is online now says nothing
/// by the time the owner is back.
const PERISHABLE_EDUS: [&str; 2] = ["m.typing", "m.presence"];

/// Deposit one transaction for `destination` with the first of its mailboxes that takes
/// it. Returns the mailbox, `None` when nothing in it is worth keeping (only typing and
/// presence: the rows can go), or an error when no mailbox is known or none took it (the
/// caller keeps the rows and backs off as usual).
pub async fn deposit(
    server: &Arc<Server>,
    destination: &str,
    txn_id: &str,
    pdus: &[Value],
    edus: &[Value],
) -> Result<Option<String>, Error> {
    let Some((record, _)) = server.db.read(|c| record::held(c, destination))? else {
        return Err(Error::NotFound(format!(
            "no mailbox known for {destination}"
        )));
    };
    let edus: Vec<&Value> = edus
        .iter()
        .filter(|e| {
            let kind = e.get("edu_type").and_then(Value::as_str).unwrap_or("");
            !PERISHABLE_EDUS.contains(&kind)
        })
        .collect();
    if pdus.is_empty() && edus.is_empty() {
        return Ok(None);
    }
    let body = keys::sign(
        server,
        &json!({
            "origin": server.server_name(),
            "destination": destination,
            "txn_id": txn_id,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": edus,
        }),
    )?;
    let mut last = Error::NotFound(format!("{destination} names no mailbox"));
    for mailbox in record.mailboxes.iter().filter(|m| *m != destination) {
        if mailbox == server.server_name() {
            // This node is the destination's mailbox itself: hold it here.
            match accept(server, server.server_name(), destination, txn_id, &body) {
                Ok(()) => return Ok(Some(mailbox.clone())),
                Err(e) => last = e,
            }
            continue;
        }
        let hints = record.addresses.get(mailbox).cloned().unwrap_or_default();
        match put(server, mailbox, destination, txn_id, &body, &hints).await {
            Ok(()) => return Ok(Some(mailbox.clone())),
            Err(e) => {
                tracing::debug!(%destination, %mailbox, error = %e, "mailbox did not take a deposit");
                last = e;
            }
        }
    }
    Err(last)
}

/// `PUT …/deposit/{owner}/{txn_id}` to one mailbox; when it cannot be reached, try the
/// owner's address hints for it once.
async fn put(
    server: &Server,
    mailbox: &str,
    owner: &str,
    txn_id: &str,
    body: &Value,
    hints: &[String],
) -> Result<(), Error> {
    let request = Deposit {
        owner: owner.to_owned(),
        txn_id: txn_id.to_owned(),
        transaction: body.clone(),
    };
    let first = client::execute(server, mailbox, request.clone()).await;
    match first {
        Ok(_) => return Ok(()),
        Err(Error::RemoteServer(e)) if !hints.is_empty() => {
            let Some(transport) = server.transport() else {
                return Err(Error::RemoteServer(e));
            };
            let mut reached = false;
            for address in hints {
                if transport
                    .connect(address)
                    .await
                    .is_ok_and(|name| name == mailbox)
                {
                    reached = true;
                    break;
                }
            }
            if !reached {
                return Err(Error::RemoteServer(e));
            }
        }
        Err(e) => return Err(e),
    }
    client::execute(server, mailbox, request).await.map(|_| ())
}

/// The mailbox's side: hold `body`, a transaction `depositor` signed for `owner`, if
/// this node is one of `owner`'s mailboxes and the deposit fits the quotas. A repeated
/// deposit (same owner, depositor and transaction id) succeeds and is kept once.
pub fn accept(
    server: &Server,
    depositor: &str,
    owner: &str,
    txn_id: &str,
    body: &Value,
) -> Result<(), Error> {
    let limits = &server.config.mailbox;
    if !limits.serve {
        return Err(Error::Forbidden(
            "this node does not hold mail for others".into(),
        ));
    }
    if !limits.allowed_owners.is_empty() && !limits.allowed_owners.iter().any(|o| o == owner) {
        return Err(Error::Forbidden(format!(
            "this node holds mail only for the nodes its operator allows, not {owner}"
        )));
    }
    let me = server.server_name();
    let named = server
        .db
        .read(|c| record::held(c, owner))?
        .is_some_and(|(r, _)| r.names(me));
    if !named || owner == me {
        return Err(Error::Forbidden(format!(
            "{owner} has not named this node as its mailbox"
        )));
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str);
    if field("origin") != Some(depositor)
        || field("destination") != Some(owner)
        || field("txn_id") != Some(txn_id)
    {
        return Err(Error::BadJson(
            "a deposit's origin, destination and txn_id must be the depositor, the owner and the path's".into(),
        ));
    }
    let object: CanonicalJsonObject = serde_json::from_value(body.clone())
        .map_err(|e| Error::BadJson(format!("a deposit must be canonical JSON: {e}")))?;
    keys::verify_signed_by(depositor, &object)?;
    let text = serde_json::to_string(body)?;
    let bytes = text.len() as u64;
    let ttl_ms = i64::try_from(limits.ttl.as_millis()).unwrap_or(i64::MAX);
    server.db.write(|c| {
        let now = now_ms();
        storage::expire_deposits(c, now.saturating_sub(ttl_ms))?;
        let usage = storage::deposit_usage(c, owner, depositor)?;
        let full = if usage.owner_count == 0 && usage.owners as usize >= limits.max_owners {
            Some("it holds mail for as many nodes as it will")
        } else if usage.owner_count as u64 >= limits.max_deposits_per_owner
            || usage.owner_bytes as u64 + bytes > limits.owner_quota_bytes
        {
            Some("the owner's mailbox is full")
        } else if usage.depositor_bytes as u64 + bytes > limits.depositor_quota_bytes {
            Some("this depositor's share of the owner's mailbox is full")
        } else {
            None
        };
        if let Some(why) = full {
            // A repeat of a deposit already held is fine even when full.
            if storage::has_deposit(c, owner, depositor, txn_id)? {
                return Ok(());
            }
            return Err(Error::LimitExceeded(format!("mailbox refused: {why}")));
        }
        storage::insert_deposit(c, owner, depositor, txn_id, &text, now)?;
        Ok(())
    })
}
