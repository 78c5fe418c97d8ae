//! The inbound server-server API, mounted by the transport on its streams.
//!
//! The self-describing endpoints (`/federation/v1/version`, the self-certifying key
//! server) and `openid/userinfo` (asked by third parties that are not servers) are open; everything else sits behind [`auth::require_signature`] and may
//! trust the [`FederationOrigin`](crate::federation::FederationOrigin) it sets. Unknown paths get
//! `404 M_UNRECOGNIZED` like the client API.

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

use crate::client_api::unrecognized;
use crate::server::Server;

use super::{
    auth, backfill, devices, directory, event, extremities, hierarchy, keys, mailbox, media,
    membership, missing_events, openid, public_rooms, query, send, state, timestamp,
};

/// The federation router, with `Server` state applied.
pub fn router(server: Arc<Server>) -> Router {
    let signed = Router::new()
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            axum::routing::put(send::send_transaction),
        )
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(event::get_event),
        )
        .route("/_matrix/federation/v1/state/{room_id}", get(state::state))
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(state::state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(state::event_auth),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(backfill::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(missing_events::get_missing_events),
        )
        .route(
            "/_matrix/federation/unstable/org.warren.extremities/{room_id}",
            get(extremities::extremities),
        )
        .route(
            "/_matrix/federation/unstable/org.warren.mailbox/deposit/{owner}/{txn_id}",
            axum::routing::put(mailbox::put_deposit),
        )
        .route(
            "/_matrix/federation/unstable/org.warren.mailbox/deposits",
            get(mailbox::get_deposits),
        )
        .route(
            "/_matrix/federation/unstable/org.warren.mailbox/ack",
            post(mailbox::ack),
        )
        .route(
            "/_matrix/federation/unstable/org.warren.mailbox/record/{owner}",
            get(mailbox::get_record),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(directory::query_directory),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(devices::user_devices),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(devices::user_keys_query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(devices::user_keys_claim),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(public_rooms::get_public_rooms).post(public_rooms::post_public_rooms),
        )
        .route(
            "/_matrix/federation/v1/hierarchy/{room_id}",
            get(hierarchy::hierarchy),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            axum::routing::put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            axum::routing::put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            axum::routing::put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v1/timestamp_to_event/{room_id}",
            get(timestamp::timestamp_to_event),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            axum::routing::put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(media::thumbnail),
        )
        .route_layer(from_fn_with_state(server.clone(), auth::require_signature));
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid::userinfo),
        )
        .merge(signed)
        .fallback(unrecognized)
        .layer(axum::middleware::from_fn(
            crate::client_api::request_log::log_federation_request,
        ))
        .with_state(server)
}

async fn version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "server": { "name": "Warren", "version": env!("CARGO_PKG_VERSION") }
    }))
}
