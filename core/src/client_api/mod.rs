//! The client-server API: axum handlers, one file per spec module.
//!
//! Handlers are thin: extract (which rejects bad input with Matrix errors), authorise,
//! call a service in `rooms`/`sync`/`storage`, answer JSON.

pub(crate) mod account;
mod account_data;
mod appservice;
mod delayed_events;
mod directory;
mod ephemeral;
mod extract;
mod keys;
pub mod listener;
mod media;
mod membership;
mod openid;
mod presence;
mod profile;
mod push;
mod relations;
mod reporting;
pub mod request_log;
mod room_keys;
pub mod rooms;
mod search;
mod spaces;
mod sync;
mod to_device;
mod upgrade;
mod versions;
mod voip;

use std::sync::Arc;

use axum::{
    Router,
    routing::{MethodRouter, get, post, put},
};
use http::{Method, StatusCode, header};
use tower_http::cors::{Any, CorsLayer};

pub use crate::rooms::filter::RoomEventFilter;
pub use crate::rooms::state_at::state_at;
pub use extract::{Requester, parse_json};
pub use rooms::{lazy_members, opts as client_opts};

use crate::error::Error;
use crate::server::Server;

/// Register `route` under `/_matrix/client/v3` and the legacy `/r0` prefix.
fn client(
    router: Router<Arc<Server>>,
    path: &str,
    route: MethodRouter<Arc<Server>>,
) -> Router<Arc<Server>> {
    router
        .route(&format!("/_matrix/client/v3{path}"), route.clone())
        .route(&format!("/_matrix/client/r0{path}"), route)
}

pub(crate) async fn unrecognized() -> Error {
    Error::Unrecognized(StatusCode::NOT_FOUND, "unrecognized request".into())
}

async fn method_not_allowed() -> Error {
    Error::Unrecognized(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed for this endpoint".into(),
    )
}

/// The content repository: authenticated media under `/_matrix/client/v1/media`, the
/// legacy (unauthenticated download) endpoints under `/_matrix/media/{v3,r0}`.
fn media_routes() -> Vec<(String, MethodRouter<Arc<Server>>)> {
    let authed = "/_matrix/client/v1/media";
    let mut routes = vec![
        (format!("{authed}/config"), get(media::config)),
        (format!("{authed}/preview_url"), get(media::preview_url)),
        (
            format!("{authed}/download/{{server_name}}/{{media_id}}"),
            get(media::download_authed),
        ),
        (
            format!("{authed}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
            get(media::download_authed_named),
        ),
        (
            format!("{authed}/thumbnail/{{server_name}}/{{media_id}}"),
            get(media::thumbnail_authed),
        ),
        ("/_matrix/media/v1/create".to_owned(), post(media::create)),
    ];
    for legacy in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        routes.extend([
            (format!("{legacy}/config"), get(media::config)),
            (format!("{legacy}/preview_url"), get(media::preview_url)),
            (format!("{legacy}/upload"), post(media::upload)),
            (
                format!("{legacy}/upload/{{server_name}}/{{media_id}}"),
                put(media::upload_to),
            ),
            (
                format!("{legacy}/download/{{server_name}}/{{media_id}}"),
                get(media::download_legacy),
            ),
            (
                format!("{legacy}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(media::download_legacy_named),
            ),
            (
                format!("{legacy}/thumbnail/{{server_name}}/{{media_id}}"),
                get(media::thumbnail_legacy),
            ),
        ]);
    }
    routes
}

/// Client API routes of one area: paths under `/_matrix/client/{v3,r0}`.
type Routes = Vec<(&'static str, MethodRouter<Arc<Server>>)>;

/// The server's capabilities, TURN servers and OpenID tokens.
fn server_routes() -> Routes {
    vec![
        ("/capabilities", get(versions::capabilities)),
        ("/voip/turnServer", get(voip::turn_server)),
        (
            "/user/{user_id}/openid/request_token",
            post(openid::request_token),
        ),
    ]
}

/// Registration, login, the account and its devices.
fn account_routes() -> Routes {
    vec![
        ("/register", post(account::register)),
        ("/register/available", get(account::available)),
        (
            "/register/m.login.registration_token/validity",
            get(account::token_validity),
        ),
        ("/login", get(account::login_flows).post(account::login)),
        ("/refresh", post(account::refresh)),
        ("/logout", post(account::logout)),
        ("/logout/all", post(account::logout_all)),
        ("/account/whoami", get(account::whoami)),
        ("/account/password", post(account::change_password)),
        ("/account/deactivate", post(account::deactivate)),
        (
            "/account/3pid",
            get(account::threepids).post(account::threepid_add),
        ),
        ("/account/3pid/add", post(account::threepid_add)),
        ("/account/3pid/bind", post(account::threepid_add)),
        ("/account/3pid/delete", post(account::threepid_delete)),
        ("/account/3pid/unbind", post(account::threepid_delete)),
        (
            "/account/3pid/email/requestToken",
            post(account::request_token),
        ),
        (
            "/account/3pid/msisdn/requestToken",
            post(account::request_token),
        ),
        (
            "/account/password/email/requestToken",
            post(account::request_token),
        ),
        (
            "/account/password/msisdn/requestToken",
            post(account::request_token),
        ),
        ("/register/email/requestToken", post(account::request_token)),
        (
            "/register/msisdn/requestToken",
            post(account::request_token),
        ),
        ("/devices", get(account::devices)),
        (
            "/devices/{device_id}",
            get(account::device)
                .put(account::rename_device)
                .delete(account::delete_device),
        ),
        ("/delete_devices", post(account::delete_devices)),
    ]
}

/// Presence and profiles.
fn profile_routes() -> Routes {
    vec![
        (
            "/presence/{user_id}/status",
            get(presence::get_status).put(presence::set_status),
        ),
        ("/profile/{user_id}", get(profile::get_profile)),
        (
            "/profile/{user_id}/{field}",
            get(profile::get_field).put(profile::set_field),
        ),
    ]
}

/// Rooms: creating, sending, state, redaction, reading events and members, upgrades and reports.
fn room_routes() -> Routes {
    vec![
        ("/createRoom", post(rooms::create_room)),
        (
            "/rooms/{room_id}/send/{event_type}/{txn_id}",
            put(rooms::send_message),
        ),
        ("/rooms/{room_id}/state", get(rooms::get_all_state)),
        (
            "/rooms/{room_id}/state/{event_type}",
            get(rooms::get_state_empty).put(rooms::put_state_empty),
        ),
        (
            "/rooms/{room_id}/state/{event_type}/",
            get(rooms::get_state_empty).put(rooms::put_state_empty),
        ),
        (
            "/rooms/{room_id}/state/{event_type}/{state_key}",
            get(rooms::get_state).put(rooms::put_state),
        ),
        (
            "/rooms/{room_id}/redact/{event_id}/{txn_id}",
            put(rooms::redact),
        ),
        ("/rooms/{room_id}/event/{event_id}", get(rooms::get_event)),
        ("/rooms/{room_id}/context/{event_id}", get(rooms::context)),
        ("/rooms/{room_id}/messages", get(rooms::messages)),
        ("/rooms/{room_id}/members", get(rooms::members)),
        (
            "/rooms/{room_id}/joined_members",
            get(rooms::joined_members),
        ),
        ("/rooms/{room_id}/upgrade", post(upgrade::upgrade)),
        (
            "/rooms/{room_id}/report/{event_id}",
            post(reporting::report_event),
        ),
        ("/rooms/{room_id}/report", post(reporting::report_room)),
    ]
}

/// Joining, knocking, leaving, invites, kicks and bans.
fn membership_routes() -> Routes {
    vec![
        ("/rooms/{room_id}/join", post(membership::join_by_id)),
        ("/knock/{room_id_or_alias}", post(membership::knock)),
        (
            "/join/{room_id_or_alias}",
            post(membership::join_by_id_or_alias),
        ),
        ("/rooms/{room_id}/leave", post(membership::leave)),
        ("/rooms/{room_id}/invite", post(membership::invite)),
        ("/rooms/{room_id}/kick", post(membership::kick)),
        ("/rooms/{room_id}/ban", post(membership::ban)),
        ("/rooms/{room_id}/unban", post(membership::unban)),
        ("/rooms/{room_id}/forget", post(membership::forget)),
        ("/joined_rooms", get(membership::joined_rooms)),
    ]
}

/// The room directory and aliases, the user directory, third-party lookups and search.
fn directory_routes() -> Routes {
    vec![
        (
            "/directory/room/{room_alias}",
            get(directory::get_alias)
                .put(directory::put_alias)
                .delete(directory::delete_alias),
        ),
        ("/rooms/{room_id}/aliases", get(directory::room_aliases)),
        (
            "/directory/list/room/{room_id}",
            get(directory::get_visibility).put(directory::put_visibility),
        ),
        (
            "/publicRooms",
            get(directory::get_public_rooms).post(directory::post_public_rooms),
        ),
        ("/user_directory/search", post(directory::search_users)),
        ("/thirdparty/protocols", get(directory::protocols)),
        ("/thirdparty/protocol/{protocol}", get(directory::protocol)),
        (
            "/thirdparty/location/{protocol}",
            get(directory::location_for_protocol),
        ),
        (
            "/thirdparty/user/{protocol}",
            get(directory::user_for_protocol),
        ),
        ("/thirdparty/location", get(directory::location_for_alias)),
        ("/thirdparty/user", get(directory::user_for_user_id)),
        ("/search", post(search::search)),
    ]
}

/// Typing notifications, receipts and read markers.
fn ephemeral_routes() -> Routes {
    vec![
        ("/rooms/{room_id}/typing/{user_id}", put(ephemeral::typing)),
        (
            "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post(ephemeral::receipt),
        ),
        (
            "/rooms/{room_id}/read_markers",
            post(ephemeral::read_markers),
        ),
    ]
}

/// Account data, room tags and filters.
fn account_data_routes() -> Routes {
    vec![
        (
            "/user/{user_id}/account_data/{event_type}",
            get(account_data::get_global).put(account_data::put_global),
        ),
        (
            "/user/{user_id}/rooms/{room_id}/account_data/{event_type}",
            get(account_data::get_room).put(account_data::put_room),
        ),
        (
            "/user/{user_id}/rooms/{room_id}/tags",
            get(account_data::get_tags),
        ),
        (
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put(account_data::put_tag).delete(account_data::delete_tag),
        ),
        ("/user/{user_id}/filter", post(account_data::create_filter)),
        (
            "/user/{user_id}/filter/{filter_id}",
            get(account_data::get_filter),
        ),
    ]
}

/// `/sync`.
fn sync_routes() -> Routes {
    vec![("/sync", get(sync::sync_events))]
}

/// Push rules, notifications and pushers.
fn push_routes() -> Routes {
    vec![
        ("/pushrules", get(push::get_all)),
        ("/pushrules/", get(push::get_all)),
        ("/pushrules/global", get(push::get_global)),
        ("/pushrules/global/", get(push::get_global)),
        (
            "/pushrules/{scope}/{kind}/{rule_id}",
            get(push::get_rule)
                .put(push::put_rule)
                .delete(push::delete_rule),
        ),
        (
            "/pushrules/{scope}/{kind}/{rule_id}/enabled",
            get(push::get_enabled).put(push::put_enabled),
        ),
        (
            "/pushrules/{scope}/{kind}/{rule_id}/actions",
            get(push::get_actions).put(push::put_actions),
        ),
        ("/notifications", get(push::notifications)),
        ("/pushers", get(push::get_pushers)),
        ("/pushers/set", post(push::set_pusher)),
    ]
}

/// End-to-end encryption: device keys, to-device messages and key backups.
fn e2ee_routes() -> Routes {
    vec![
        ("/keys/upload", post(keys::upload)),
        ("/keys/query", post(keys::query)),
        ("/keys/claim", post(keys::claim)),
        ("/keys/changes", get(keys::changes)),
        (
            "/keys/device_signing/upload",
            post(keys::upload_signing_keys),
        ),
        ("/keys/signatures/upload", post(keys::upload_signatures)),
        ("/sendToDevice/{event_type}/{txn_id}", put(to_device::send)),
        (
            "/room_keys/version",
            get(room_keys::current_version).post(room_keys::create_version),
        ),
        (
            "/room_keys/version/{version}",
            get(room_keys::get_version)
                .put(room_keys::update_version)
                .delete(room_keys::delete_version),
        ),
        (
            "/room_keys/keys",
            get(room_keys::get_all)
                .put(room_keys::put_all)
                .delete(room_keys::delete_all),
        ),
        (
            "/room_keys/keys/{room_id}",
            get(room_keys::get_room)
                .put(room_keys::put_room)
                .delete(room_keys::delete_room),
        ),
        (
            "/room_keys/keys/{room_id}/{session_id}",
            get(room_keys::get_session)
                .put(room_keys::put_session)
                .delete(room_keys::delete_session),
        ),
    ]
}

/// Endpoints outside `/v3` and `/r0`: those the spec only defines under `/v1`, and
/// unstable ones.
fn v1_routes() -> Vec<(String, MethodRouter<Arc<Server>>)> {
    // Relationships and threads exist under `/v1` only (as in the spec and Synapse).
    let v1 = "/_matrix/client/v1/rooms/{room_id}";
    let mut routes = vec![
        (format!("{v1}/relations/{{event_id}}"), get(relations::all)),
        (
            format!("{v1}/relations/{{event_id}}/{{rel_type}}"),
            get(relations::by_rel_type),
        ),
        (
            format!("{v1}/relations/{{event_id}}/{{rel_type}}/{{event_type}}"),
            get(relations::by_rel_and_event_type),
        ),
        (format!("{v1}/threads"), get(relations::threads)),
        (
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned(),
            post(sync::sliding_sync),
        ),
    ];
    // Endpoints the spec only defines under `/v1`.
    for (path, route) in [
        (
            "/_matrix/client/v1/rooms/{room_id}/hierarchy",
            get(spaces::space_hierarchy),
        ),
        (
            "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
            get(rooms::timestamp_to_event),
        ),
        (
            "/_matrix/client/v1/appservice/{appservice_id}/ping",
            post(appservice::ping),
        ),
        // Room reports are spec v1.13; clients talking to a v1.11 server use the MSC path.
        (
            "/_matrix/client/unstable/org.matrix.msc4151/rooms/{room_id}/report",
            post(reporting::report_room),
        ),
    ] {
        routes.push((path.to_owned(), route));
    }
    routes.extend([
        (delayed_events::PREFIX.to_owned(), get(delayed_events::list)),
        (
            format!("{}/{{delay_id}}", delayed_events::PREFIX),
            post(delayed_events::update),
        ),
        (
            format!("{}/{{delay_id}}/{{action}}", delayed_events::PREFIX),
            post(delayed_events::update_by_path),
        ),
    ]);
    routes
}

/// Any origin may call the API from a browser.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::HeaderName::from_static("x-requested-with"),
        ])
}

/// The whole client-server API router.
pub fn router(server: Arc<Server>) -> Router {
    let mut r: Router<Arc<Server>> = Router::new()
        .route(
            "/_matrix/client/versions",
            get(versions::versions).fallback(method_not_allowed),
        )
        .route(
            "/.well-known/matrix/client",
            get(voip::well_known_client).fallback(method_not_allowed),
        );
    let routes = [
        server_routes(),
        account_routes(),
        profile_routes(),
        room_routes(),
        membership_routes(),
        directory_routes(),
        ephemeral_routes(),
        account_data_routes(),
        sync_routes(),
        push_routes(),
        e2ee_routes(),
    ];
    for (path, route) in routes.into_iter().flatten() {
        r = client(r, path, route.fallback(method_not_allowed));
    }
    for (path, route) in v1_routes().into_iter().chain(media_routes()) {
        r = r.route(&path, route.fallback(method_not_allowed));
    }
    r.route("/_warren/health", get(|| async { "ok" }))
        .merge(crate::admin::routes(server.clone()))
        .fallback(unrecognized)
        // Extractors outside `extract` (the admin API's JSON) stop at the same size; media
        // uploads read the raw body under their own limit.
        .layer(axum::extract::DefaultBodyLimit::max(
            server.config.max_request_bytes,
        ))
        .layer(cors())
        .layer(axum::middleware::from_fn(request_log::log_request))
        .with_state(server)
}

/// Take one token of `action` for the caller (see [`Server::rate_limit_requester`]).
pub(crate) fn rate_limit(
    server: &Server,
    action: crate::ratelimit::Action,
    caller: &Requester,
) -> Result<(), Error> {
    server.rate_limit_requester(action, caller)
}
