//! Tests of joining, leaving and inviting over federation.

use super::join::persist_remote_join;
use super::*;
use crate::events::EventReference;
use crate::identity::Identity;

/// The joining side keeps a restricted join only with the resident's signature.
#[tokio::test]
async fn a_restricted_join_needs_the_authorising_servers_signature() {
    let (_dir, node) = crate::test_support::node().await;
    let server = node.server().clone();
    let resident = Identity::from_seed([7; 32]).expect("identity");
    let room = format!("!room:{}", resident.server_name());
    let (_, rules) = rules_for("11").expect("rules");
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(server.user_id("bob")),
        content: json!({
            "membership": "join",
            "join_authorised_via_users_server": format!("@alice:{}", resident.server_name()),
        }),
        sender: server.user_id("bob"),
        redacts: None,
    };
    let some_id = format!("${}", "a".repeat(43));
    let (id, mut object) = build_pdu(
        &server.identity,
        &rules,
        Some(&room),
        &ev,
        &EventReference::ids(std::slice::from_ref(&some_id)),
        &EventReference::ids(std::slice::from_ref(&some_id)),
        3,
        now_ms(),
    )
    .expect("build");
    let persist = |object: &ruma::CanonicalJsonObject| {
        let join = serde_json::to_value(object).expect("json");
        server.write(|c| persist_remote_join(c, &room, "11", join, vec![], vec![], &id))
    };
    // Only our signature: refused before anything else is looked at.
    let Err(e) = persist(&object) else {
        panic!("a join without the resident's signature was kept");
    };
    assert!(e.to_string().contains("signature"), "{e}");
    // Countersigned: the signatures pass, and the (empty) state is what fails.
    sign_event(
        resident.server_name(),
        resident.keypair(),
        &mut object,
        &rules.redaction,
    )
    .expect("sign");
    let Err(e) = persist(&object) else {
        panic!("a join with no room state was kept");
    };
    assert!(e.to_string().contains("no create event"), "{e}");
    node.shutdown().await.expect("shutdown");
}
