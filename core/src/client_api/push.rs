//! Push rules (`/pushrules`), `GET /notifications` and pushers.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::push::Action;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Q};
use crate::error::Error;
use crate::events::{ClientEventOptions, client_event};
use crate::push::{self, RuleAddress};
use crate::server::Server;
use crate::storage::now_ms;

type JsonResult = Result<Json<Value>, Error>;

fn address(path: &(String, String, String)) -> RuleAddress<'_> {
    RuleAddress {
        scope: &path.0,
        kind: &path.1,
        rule_id: &path.2,
    }
}

fn rules_of(server: &Server, user_id: &str) -> Result<Value, Error> {
    server.db.read(|c| push::rules_json(c, user_id))
}

/// `GET /pushrules/`: every scope.
pub(super) async fn get_all(State(server): State<Arc<Server>>, Auth(caller): Auth) -> JsonResult {
    Ok(Json(rules_of(&server, &caller.user_id)?))
}

/// `GET /pushrules/global/`: the global ruleset.
pub(super) async fn get_global(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> JsonResult {
    let all = rules_of(&server, &caller.user_id)?;
    Ok(Json(all["global"].clone()))
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}`.
pub(super) async fn get_rule(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
) -> JsonResult {
    Ok(Json(push::get_rule(
        &server,
        &caller.user_id,
        address(&path),
    )?))
}

#[derive(Deserialize)]
pub(super) struct Position {
    before: Option<String>,
    after: Option<String>,
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}`.
pub(super) async fn put_rule(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
    Q(pos): Q<Position>,
    Body(body): Body<Value>,
) -> JsonResult {
    push::put_rule(
        &server,
        &caller.user_id,
        address(&path),
        pos.before.as_deref(),
        pos.after.as_deref(),
        &body,
    )?;
    Ok(Json(json!({})))
}

/// `DELETE /pushrules/{scope}/{kind}/{ruleId}`.
pub(super) async fn delete_rule(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
) -> JsonResult {
    push::delete_rule(&server, &caller.user_id, address(&path))?;
    Ok(Json(json!({})))
}

/// `GET .../enabled`.
pub(super) async fn get_enabled(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
) -> JsonResult {
    let enabled = push::rule_enabled(&server, &caller.user_id, address(&path))?;
    Ok(Json(json!({ "enabled": enabled })))
}

#[derive(Deserialize)]
pub(super) struct EnabledBody {
    enabled: bool,
}

/// `PUT .../enabled`.
pub(super) async fn put_enabled(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
    Body(body): Body<EnabledBody>,
) -> JsonResult {
    push::set_rule_enabled(&server, &caller.user_id, address(&path), body.enabled)?;
    Ok(Json(json!({})))
}

/// `GET .../actions`.
pub(super) async fn get_actions(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
) -> JsonResult {
    let actions = push::rule_actions(&server, &caller.user_id, address(&path))?;
    Ok(Json(json!({ "actions": actions })))
}

#[derive(Deserialize)]
pub(super) struct ActionsBody {
    actions: Vec<Action>,
}

/// `PUT .../actions`.
pub(super) async fn put_actions(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(path): P<(String, String, String)>,
    Body(body): Body<ActionsBody>,
) -> JsonResult {
    push::set_rule_actions(&server, &caller.user_id, address(&path), body.actions)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct NotificationsQuery {
    from: Option<String>,
    limit: Option<i64>,
    only: Option<String>,
}

/// `GET /notifications`.
pub(super) async fn notifications(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<NotificationsQuery>,
) -> JsonResult {
    let from = match q.from.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| Error::InvalidParam("invalid `from` token".into()))?,
        ),
    };
    let only_highlight = q.only.as_deref() == Some("highlight");
    let page = server.db.read_tx(|c| {
        push::notifications(
            c,
            &caller.user_id,
            from,
            q.limit.unwrap_or(20),
            only_highlight,
        )
    })?;
    let opts = ClientEventOptions {
        viewer: None,
        include_room_id: true,
        now_ms: now_ms(),
    };
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(row, ev)| {
            json!({
                "actions": serde_json::from_str::<Value>(&row.actions).unwrap_or(json!([])),
                "event": client_event(ev, opts),
                "read": row.read,
                "room_id": row.room_id,
                "ts": row.ts,
            })
        })
        .collect();
    let mut body = json!({ "notifications": items });
    if let Some(next) = page.next_token {
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

/// `GET /pushers`.
pub(super) async fn get_pushers(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> JsonResult {
    Ok(Json(
        json!({ "pushers": push::get_pushers(&server, &caller.user_id)? }),
    ))
}

/// `POST /pushers/set`.
pub(super) async fn set_pusher(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<Value>,
) -> JsonResult {
    push::set_pusher(&server, &caller.user_id, &caller.device_id, &body)?;
    Ok(Json(json!({})))
}
