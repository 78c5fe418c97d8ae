//! Building a new local PDU: fields, content hash, signature, reference hash.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    canonical_json::{RedactedBecause, redact},
    room_version_rules::RoomVersionRules,
    signatures::{add_content_hash_to_event, reference_hash},
};
use serde_json::{Value, json};

use super::reference::{EventReference, references_json};
use crate::error::Error;
use crate::identity::Identity;

/// What a client asks to send; the room engine fills in the DAG fields.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Event type.
    pub kind: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Content object.
    pub content: Value,
    /// Sender user id.
    pub sender: String,
    /// Redaction target (top-level `redacts` before room v11; copied into content from v11).
    pub redacts: Option<String>,
}

/// The longest event type or state key peers accept, in bytes (the spec's size limits).
const MAX_ID_BYTES: usize = 255;

/// Build, hash and sign a PDU. Returns its event id and canonical JSON.
///
/// The references are written in the room version's format (pairs with the referenced
/// event's hash in versions 1 and 2, see [`super::reference`]). The event id is the
/// reference hash from room version 3 on; in versions 1 and 2 it is `$random:server`,
/// carried in the PDU's own `event_id` field, which the signature covers.
#[allow(clippy::too_many_arguments)]
pub fn build_pdu(
    identity: &Identity,
    rules: &RoomVersionRules,
    room_id: Option<&str>,
    ev: &NewEvent,
    prev_events: &[EventReference],
    auth_events: &[EventReference],
    depth: i64,
    origin_server_ts: i64,
) -> Result<(String, CanonicalJsonObject), Error> {
    let mut content = ev.content.clone();
    let mut value = json!({
        "type": ev.kind,
        "sender": ev.sender,
        "origin_server_ts": origin_server_ts,
        "prev_events": references_json(prev_events, &rules.event_format),
        "auth_events": references_json(auth_events, &rules.event_format),
        "depth": depth,
    });
    let own_id = rules
        .event_format
        .require_event_id
        .then(|| random_event_id(identity.server_name()));
    if let Some(id) = &own_id {
        value["event_id"] = Value::String(id.clone());
    }
    if let Some(redacts) = &ev.redacts {
        if rules.redaction.content_field_redacts
            && let Some(obj) = content.as_object_mut()
        {
            obj.insert("redacts".to_owned(), Value::String(redacts.clone()));
        }
        // Older clients and servers read the top-level field; keep both.
        value["redacts"] = Value::String(redacts.clone());
    }
    value["content"] = content;
    if let Some(room_id) = room_id {
        value["room_id"] = Value::String(room_id.to_owned());
    }
    if let Some(sk) = &ev.state_key {
        value["state_key"] = Value::String(sk.clone());
    }
    let mut object = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(Error::internal("event is not an object")),
        Err(e) => return Err(Error::BadJson(format!("event is not canonical JSON: {e}"))),
    };
    let hash = hash_and_sign(identity, rules, &mut object)?;
    // Never make what peers refuse: the receiving side's format checks (the whole event
    // at most 65,536 bytes; type, state key, sender and room id at most 255) apply here.
    // A type or state key that is too long is a malformed request (400), not a large one.
    for (field, value) in [
        ("type", Some(&ev.kind)),
        ("state_key", ev.state_key.as_ref()),
    ] {
        if value.is_some_and(|v| v.len() > MAX_ID_BYTES) {
            return Err(Error::InvalidParam(format!(
                "the event's {field} is longer than {MAX_ID_BYTES} bytes"
            )));
        }
    }
    ruma::state_res::check_pdu_format(&object, &rules.event_format)
        .map_err(|e| Error::TooLarge(format!("event rejected: {e}")))?;
    Ok((own_id.unwrap_or_else(|| format!("${hash}")), object))
}

/// Add the content hash and this server's signature to a new event (no `signatures`
/// or `unsigned` yet); returns its reference hash. What ruma's `hash_and_sign_event`
/// and `reference_hash` do, with the redacted event serialised once instead of twice:
/// the bytes signed (the redacted event without `signatures` and `unsigned`) are the
/// bytes the reference hash is taken of.
fn hash_and_sign(
    identity: &Identity,
    rules: &RoomVersionRules,
    object: &mut CanonicalJsonObject,
) -> Result<String, Error> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use ruma::room_version_rules::EventIdFormatVersion;
    use ruma::signatures::KeyPair;
    use sha2::{Digest, Sha256};

    debug_assert!(
        !object.contains_key("signatures") && !object.contains_key("unsigned"),
        "only a new event's own fields are signed and hashed here"
    );
    let signing_error =
        |e: &dyn std::fmt::Display| Error::BadJson(format!("cannot sign event: {e}"));
    add_content_hash_to_event(object).map_err(|e| signing_error(&e))?;
    let redacted = redact(object.clone(), &rules.redaction, None::<RedactedBecause>)
        .map_err(|e| signing_error(&e))?;
    // Its size is checked on the whole event afterwards (`check_pdu_format`).
    let signed = serde_json::to_string(&redacted).map_err(|e| signing_error(&e))?;
    let signature = identity.keypair().sign(signed.as_bytes());
    let mut by_key = CanonicalJsonObject::new();
    by_key.insert(
        signature.id(),
        CanonicalJsonValue::String(signature.base64()),
    );
    let mut signatures = CanonicalJsonObject::new();
    signatures.insert(
        identity.server_name().to_owned(),
        CanonicalJsonValue::Object(by_key),
    );
    object.insert("signatures".into(), CanonicalJsonValue::Object(signatures));
    let digest = Sha256::digest(signed.as_bytes());
    Ok(match rules.event_id_format {
        EventIdFormatVersion::V1 | EventIdFormatVersion::V2 => STANDARD_NO_PAD.encode(digest),
        _ => URL_SAFE_NO_PAD.encode(digest),
    })
}

/// The id of a PDU in a room of these rules: its own `event_id` field in room versions
/// 1 and 2 (which must name the server that made it), else its reference hash. `Err`
/// says why there is none.
pub fn event_id_of(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<String, String> {
    if !rules.event_format.require_event_id {
        let hash = reference_hash(object, rules).map_err(|e| format!("bad PDU: {e}"))?;
        return Ok(format!("${hash}"));
    }
    let Some(CanonicalJsonValue::String(id)) = object.get("event_id") else {
        return Err("the PDU has no event_id, which its room version requires".into());
    };
    let parsed = ruma::EventId::parse(id).map_err(|e| format!("bad event_id {id}: {e}"))?;
    if parsed.server_name().is_none() {
        return Err(format!("event_id {id} names no server"));
    }
    Ok(id.clone())
}

/// A fresh event id of the original format (room versions 1 and 2): `$` and 18 random
/// letters and digits (as Synapse makes them), then this server's name, which must sign
/// the event.
fn random_event_id(server_name: &str) -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    let local: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(18)
        .map(char::from)
        .collect();
    format!("${local}:{server_name}")
}

/// Room ids from room version 12 on are the create event's reference hash.
pub fn room_id_from_create_event_id(event_id: &str) -> String {
    format!("!{}", event_id.trim_start_matches('$'))
}

/// Redact a stored PDU's JSON per the room version's redaction algorithm.
pub fn redact_json(json: &str, rules: &RoomVersionRules) -> Result<String, Error> {
    let object: CanonicalJsonObject = serde_json::from_str(json)?;
    let redacted = redact(object, &rules.redaction, None::<RedactedBecause>)
        .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
    Ok(serde_json::to_string(&redacted)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::rules_for;

    fn identity() -> Identity {
        Identity::from_seed([7u8; 32]).expect("identity")
    }

    fn message(server: &str) -> NewEvent {
        NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": "hello"}),
            sender: format!("@a:{server}"),
            redacts: None,
        }
    }

    /// The spec's published examples (appendices, "Signing JSON" and "Signing events"),
    /// made with the seed `YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1`.
    fn spec_identity() -> Identity {
        use base64::Engine;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        // The spec's seed has non-zero trailing bits, which strict decoders refuse.
        let lenient = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let seed = lenient
            .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .expect("seed");
        Identity::from_seed(seed.try_into().expect("32 bytes")).expect("identity")
    }

    #[test]
    fn signing_json_matches_the_spec_examples() {
        let id = spec_identity();
        for (input, expected) in [
            (
                json!({}),
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
            ),
            (
                json!({"one": 1, "two": "Two"}),
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
            ),
        ] {
            let mut obj = match CanonicalJsonValue::try_from(input).expect("canonical") {
                CanonicalJsonValue::Object(o) => o,
                _ => unreachable!("object literal"),
            };
            ruma::signatures::sign_json("domain", id.keypair(), &mut obj).expect("sign");
            let v = serde_json::to_value(&obj).expect("value");
            assert_eq!(v["signatures"]["domain"]["ed25519:p2p"], expected);
        }
    }

    #[test]
    fn signing_events_matches_the_spec_example() {
        let id = spec_identity();
        let event = json!({
            "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
            "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
            "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
            "unsigned": {"age_ts": 1000000}
        });
        let mut obj = match CanonicalJsonValue::try_from(event).expect("canonical") {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!("object literal"),
        };
        let (_, rules) = rules_for("10").expect("rules");
        ruma::signatures::hash_and_sign_event("domain", id.keypair(), &mut obj, &rules.redaction)
            .expect("sign");
        let v = serde_json::to_value(&obj).expect("value");
        assert_eq!(
            v["hashes"]["sha256"],
            "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        );
        assert_eq!(
            v["signatures"]["domain"]["ed25519:p2p"],
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        );
    }

    /// A message built by `id` in a room of `rules`.
    fn built_message(id: &Identity, rules: &RoomVersionRules) -> (String, CanonicalJsonObject) {
        let room = format!("!r:{}", id.server_name());
        let ev = message(id.server_name());
        build_pdu(id, rules, Some(&room), &ev, &[], &[], 1, 1000).expect("build")
    }

    #[test]
    fn built_events_verify_with_the_key_from_the_server_name() {
        let id = identity();
        for v in crate::events::SUPPORTED_ROOM_VERSIONS {
            let (_, rules) = rules_for(v).expect("rules");
            let (event_id, obj) = built_message(&id, &rules);
            // Versions 1 and 2: `$random:server`, in the PDU; later: the hash, outside it.
            let own = rules.event_format.require_event_id;
            assert!(
                event_id.starts_with('$') && event_id.contains(':') == own,
                "{event_id}"
            );
            assert_eq!(
                obj.get("event_id").and_then(|v| v.as_str()),
                own.then_some(event_id.as_str()),
                "v{v}"
            );
            let key = crate::identity::public_key_from_server_name(id.server_name()).expect("key");
            let mut keys = std::collections::BTreeMap::new();
            keys.insert(
                crate::identity::KEY_ID.to_owned(),
                ruma::serde::Base64::new(key.to_vec()),
            );
            let mut map = std::collections::BTreeMap::new();
            map.insert(id.server_name().to_owned(), keys);
            let verified = ruma::signatures::verify_event(&map, &obj, &rules).expect("verify");
            assert_eq!(verified, ruma::signatures::Verified::All);
        }
    }

    /// Hashing and signing with one serialisation of the redacted event gives what
    /// ruma's `hash_and_sign_event` and `reference_hash` give (ed25519 signatures are
    /// deterministic), in every supported room version.
    #[test]
    fn one_serialisation_signs_and_hashes_as_ruma_does() {
        let id = identity();
        for v in crate::events::SUPPORTED_ROOM_VERSIONS {
            let (_, rules) = rules_for(v).expect("rules");
            let (event_id, ours) = built_message(&id, &rules);
            let mut theirs = ours.clone();
            theirs.remove("hashes");
            theirs.remove("signatures");
            ruma::signatures::hash_and_sign_event(
                id.server_name(),
                id.keypair(),
                &mut theirs,
                &rules.redaction,
            )
            .expect("sign");
            assert_eq!(ours, theirs, "v{v}");
            let hash = reference_hash(&theirs, &rules).expect("hash");
            if !rules.event_format.require_event_id {
                assert_eq!(event_id, format!("${hash}"), "v{v}");
            }
        }
    }

    #[test]
    fn tampering_breaks_the_content_hash() {
        let id = identity();
        let (_, rules) = rules_for("12").expect("rules");
        let (_, mut obj) = build_pdu(
            &id,
            &rules,
            Some("!r"),
            &message(id.server_name()),
            &[],
            &[],
            1,
            1000,
        )
        .expect("build");
        obj.insert(
            "content".into(),
            CanonicalJsonValue::try_from(json!({"body": "evil"})).expect("cv"),
        );
        let key = crate::identity::public_key_from_server_name(id.server_name()).expect("key");
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(
            crate::identity::KEY_ID.to_owned(),
            ruma::serde::Base64::new(key.to_vec()),
        );
        let mut map = std::collections::BTreeMap::new();
        map.insert(id.server_name().to_owned(), keys);
        // Signatures cover the redacted form, so they still verify; the hash does not.
        assert_eq!(
            ruma::signatures::verify_event(&map, &obj, &rules).expect("verify"),
            ruma::signatures::Verified::Signatures
        );
    }

    #[test]
    fn redaction_follows_the_room_version() {
        let id = identity();
        let ev = NewEvent {
            kind: "m.room.create".into(),
            state_key: Some(String::new()),
            content: json!({"room_version": "11", "m.federate": true, "extra": 1}),
            sender: format!("@a:{}", id.server_name()),
            redacts: None,
        };
        let (_, rules11) = rules_for("11").expect("rules");
        let (_, obj) = build_pdu(&id, &rules11, Some("!r:x"), &ev, &[], &[], 1, 1).expect("build");
        let json = serde_json::to_string(&obj).expect("json");
        // v11 keeps the whole create content.
        let red: Value =
            serde_json::from_str(&redact_json(&json, &rules11).expect("redact")).expect("parse");
        assert_eq!(red["content"]["extra"], json!(1));
        // v10 keeps only `creator`.
        let (_, rules10) = rules_for("10").expect("rules");
        let red: Value =
            serde_json::from_str(&redact_json(&json, &rules10).expect("redact")).expect("parse");
        assert!(red["content"].get("extra").is_none());
        // Messages lose their content in every version.
        let (_, obj) = build_pdu(
            &id,
            &rules11,
            Some("!r:x"),
            &message(id.server_name()),
            &[],
            &[],
            1,
            1,
        )
        .expect("b");
        let json = serde_json::to_string(&obj).expect("json");
        let red: Value =
            serde_json::from_str(&redact_json(&json, &rules11).expect("redact")).expect("parse");
        assert_eq!(red["content"], json!({}));
        assert!(red.get("signatures").is_some() && red.get("hashes").is_some());
    }
}
