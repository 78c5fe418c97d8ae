//! Registration, login, logout, whoami, password changes, devices and UIAA.

use std::sync::Arc;
use std::time::Instant;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AppserviceToken, Auth, Body, ClientIp, P, Q, Requester};
use crate::account::{RefreshToken, Session};
use crate::error::Error;
use crate::ratelimit::Action;
use crate::rooms::random_string;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

pub use crate::password::{hash_password, verify_password};

/// An in-progress user-interactive authentication session.
#[derive(Clone, Debug)]
pub struct UiaaSession {
    /// Stages completed so far.
    pub completed: Vec<String>,
    /// For authenticated endpoints: the user the session belongs to.
    pub user_id: Option<String>,
    /// Created at, for expiry.
    pub created: std::time::Instant,
}

/// The client API's UIAA sessions, keyed by session id (kept on the `Server`, which is
/// the router's state).
pub type UiaaSessions = parking_lot::Mutex<std::collections::HashMap<String, UiaaSession>>;

/// UIAA sessions kept at once. `/register` without `auth` makes one and needs no account,
/// so the map is capped: past it the oldest session goes (its client starts over).
pub const MAX_UIAA_SESSIONS: usize = 1024;
/// How long a UIAA session lives.
const UIAA_TTL_SECS: u64 = 15 * 60;

fn new_session(server: &Server, user_id: Option<String>) -> String {
    let session = random_string(24);
    let mut map = server.uiaa.lock();
    if map.len() >= MAX_UIAA_SESSIONS {
        // Sweep the expired; if none were, drop the oldest. Amortised: a sweep frees
        // room for many inserts unless every session is fresh.
        map.retain(|_, s| s.created.elapsed().as_secs() < UIAA_TTL_SECS);
        if map.len() >= MAX_UIAA_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    map.insert(
        session.clone(),
        UiaaSession {
            completed: Vec::new(),
            user_id,
            created: Instant::now(),
        },
    );
    session
}

fn registration_flows(server: &Server) -> Vec<Value> {
    let mut flows = Vec::new();
    if server.config.registration_open() {
        flows.push(json!({"stages": ["m.login.dummy"]}));
    }
    if !server.config.registration_tokens.is_empty() {
        flows.push(json!({"stages": ["m.login.registration_token"]}));
    }
    flows
}

pub use crate::account::valid_localpart;

#[derive(Deserialize)]
pub(super) struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    auth: Option<Value>,
    #[serde(default)]
    inhibit_login: bool,
    /// The client can refresh: its access token expires (spec v1.3).
    #[serde(default)]
    refresh_token: bool,
    /// `m.login.application_service` for an appservice registering one of its users.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The login type of application services.
const APPSERVICE_LOGIN: &str = "m.login.application_service";

#[derive(Deserialize)]
pub(super) struct KindQuery {
    kind: Option<String>,
}

/// `POST /register`.
pub(super) async fn register(
    State(server): State<Arc<Server>>,
    ClientIp(ip): ClientIp,
    AppserviceToken(appservice): AppserviceToken,
    Q(q): Q<KindQuery>,
    Body(mut body): Body<RegisterBody>,
) -> JsonResult {
    let as_login = body.kind.as_deref() == Some(APPSERVICE_LOGIN)
        || body
            .auth
            .as_ref()
            .is_some_and(|a| a["type"] == APPSERVICE_LOGIN);
    if as_login || appservice.is_some() {
        return register_appservice_user(&server, appservice, as_login, body).await;
    }
    if q.kind.as_deref() == Some("guest") {
        return Err(Error::Forbidden(
            "guest access is not enabled on this node".into(),
        ));
    }
    let flows = registration_flows(&server);
    if flows.is_empty() {
        return Err(Error::RegistrationDisabled);
    }
    let localpart = match &body.username {
        Some(u) => u.to_lowercase(),
        None => random_string(12).to_lowercase(),
    };
    if !valid_localpart(&localpart) {
        return Err(Error::InvalidUsername(
            "user names may contain only a-z, 0-9 and ._=-/+".into(),
        ));
    }
    let user_id = server.user_id(&localpart);
    if user_id.len() > 255 {
        return Err(Error::InvalidUsername("user id is too long".into()));
    }
    check_not_exclusive(&server, &user_id)?;
    if server.db.read(|c| storage::user_exists(c, &user_id))? {
        return Err(Error::UserInUse);
    }
    // User-interactive auth: one dummy stage when open, or a registration token.
    let Some(auth) = body.auth.take() else {
        let session = new_session(&server, None);
        return Err(Error::Uiaa(
            json!({"flows": flows, "params": {}, "session": session}),
        ));
    };
    match auth["type"].as_str() {
        Some("m.login.dummy") if server.config.registration_open() => {}
        Some("m.login.registration_token") => {
            let token = auth["token"].as_str().unwrap_or_default();
            if !server.config.registration_tokens.iter().any(|t| t == token) {
                return Err(Error::Uiaa(json!({
                    "flows": flows, "params": {}, "session": auth["session"],
                    "errcode": "M_FORBIDDEN", "error": "invalid registration token"
                })));
            }
            crate::account::use_registration_token(&server, token)?;
        }
        _ => {
            let session = auth["session"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| new_session(&server, None));
            return Err(Error::Uiaa(json!({
                "flows": flows, "params": {}, "session": session,
                "errcode": "M_FORBIDDEN", "error": "unsupported or disallowed authentication stage"
            })));
        }
    }
    // Counted when an account is about to be made (after UIAA), before the hash.
    server.rate_limit(Action::Registration, &ip)?;
    if let Some(session) = auth["session"].as_str() {
        server.uiaa.lock().remove(session);
    }
    let hash = match body.password.clone() {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    create_account(&server, &user_id, &localpart, hash.as_deref(), body)
}

/// An ordinary registration may not take a user id an appservice holds exclusively.
fn check_not_exclusive(server: &Server, user_id: &str) -> Result<(), Error> {
    match server.appservices.exclusive_user_owner(user_id) {
        Some(_) => Err(Error::Exclusive(format!(
            "{user_id} is reserved by an application service"
        ))),
        None => Ok(()),
    }
}

/// `POST /register` with `m.login.application_service`: an appservice creates one of
/// its users, with no password and no user-interactive auth, exempt from the
/// registration rate limit.
async fn register_appservice_user(
    server: &Server,
    appservice: Option<Arc<crate::appservice::Registered>>,
    as_login: bool,
    body: RegisterBody,
) -> JsonResult {
    let Some(a) = appservice else {
        return Err(Error::MissingToken);
    };
    if !as_login {
        return Err(Error::InvalidParam(format!(
            "an application service registers users with type {APPSERVICE_LOGIN}"
        )));
    }
    let localpart = body
        .username
        .as_deref()
        .map(str::to_lowercase)
        .ok_or_else(|| Error::MissingParam("username is required".into()))?;
    if !valid_localpart(&localpart) {
        return Err(Error::InvalidUsername(
            "user names may contain only a-z, 0-9 and ._=-/+".into(),
        ));
    }
    let user_id = server.user_id(&localpart);
    if !a.is_user_in_namespace(&user_id) {
        return Err(Error::Exclusive(format!(
            "{user_id} is not in the application service's namespaces"
        )));
    }
    if let Some(owner) = server.appservices.exclusive_user_owner(&user_id)
        && owner.id != a.id
    {
        return Err(Error::Exclusive(format!(
            "{user_id} is reserved by another application service"
        )));
    }
    create_account(server, &user_id, &localpart, None, body)
}

/// Create the account and, unless `inhibit_login`, its first device and token.
fn create_account(
    server: &Server,
    user_id: &str,
    localpart: &str,
    hash: Option<&str>,
    body: RegisterBody,
) -> JsonResult {
    let session = Session::new(server, user_id, body.device_id, body.refresh_token);
    let display_name = body.initial_device_display_name.as_deref();
    let first_session = (!body.inhibit_login).then_some((&session, display_name));
    crate::account::register(server, user_id, localpart, hash, false, first_session)?;
    if body.inhibit_login {
        return Ok(Json(
            json!({"user_id": user_id, "home_server": server.server_name()}),
        ));
    }
    Ok(Json(session_answer(server, session)))
}

/// The answer to a login or registration that started `session`.
fn session_answer(server: &Server, session: Session) -> Value {
    let mut answer = json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": server.server_name(),
    });
    if let Some(r) = session.refresh {
        refresh_answer(server, r, &mut answer);
    }
    answer
}

/// `refresh_token` and `expires_in_ms` in a login, registration or refresh answer.
fn refresh_answer(server: &Server, refresh: RefreshToken, answer: &mut Value) {
    let ms = server.config.refreshable_access_token_lifetime.as_millis();
    answer["refresh_token"] = json!(refresh.token);
    answer["expires_in_ms"] = json!(u64::try_from(ms).unwrap_or(u64::MAX));
}

#[derive(Deserialize)]
pub(super) struct RefreshBody {
    refresh_token: String,
}

/// `POST /refresh`: a new access token and refresh token for the device of a refresh
/// token. The old refresh token keeps working until the new pair is first used (the
/// spec's "the old refresh token remains valid until the new access token or refresh
/// token is used"); the device, and so its transaction ids, stay the same.
pub(super) async fn refresh(
    State(server): State<Arc<Server>>,
    Body(body): Body<RefreshBody>,
) -> JsonResult {
    let (access, refresh) = crate::account::refresh(&server, &body.refresh_token)?;
    let mut answer = json!({"access_token": access});
    refresh_answer(&server, refresh, &mut answer);
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct AvailableQuery {
    username: String,
}

/// `GET /register/available`.
pub(super) async fn available(
    State(server): State<Arc<Server>>,
    Q(q): Q<AvailableQuery>,
) -> JsonResult {
    let local = q.username.to_lowercase();
    if !valid_localpart(&local) {
        return Err(Error::InvalidUsername(
            "user names may contain only a-z, 0-9 and ._=-/+".into(),
        ));
    }
    let user_id = server.user_id(&local);
    check_not_exclusive(&server, &user_id)?;
    if server.db.read(|c| storage::user_exists(c, &user_id))? {
        return Err(Error::UserInUse);
    }
    Ok(Json(json!({"available": true})))
}

#[derive(Deserialize)]
pub(super) struct TokenValidityQuery {
    token: String,
}

/// `GET /register/m.login.registration_token/validity`.
pub(super) async fn token_validity(
    State(server): State<Arc<Server>>,
    Q(q): Q<TokenValidityQuery>,
) -> JsonResult {
    Ok(Json(
        json!({"valid": server.config.registration_tokens.contains(&q.token)}),
    ))
}

/// `GET /login`.
pub(super) async fn login_flows() -> Json<Value> {
    Json(json!({"flows": [{"type": "m.login.password"}, {"type": APPSERVICE_LOGIN}]}))
}

#[derive(Deserialize)]
pub(super) struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Value>,
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// The client can refresh: its access token expires (spec v1.3).
    #[serde(default)]
    refresh_token: bool,
}

fn user_from_identifier(
    server: &Server,
    identifier: Option<&Value>,
    user: Option<&str>,
) -> Result<String, Error> {
    let raw = match identifier {
        Some(id) if id["type"] == "m.id.user" => id["user"].as_str(),
        Some(_) => {
            return Err(Error::Unrecognized(
                http::StatusCode::BAD_REQUEST,
                "unsupported identifier type".into(),
            ));
        }
        None => user,
    }
    .ok_or_else(|| Error::MissingParam("no user given".into()))?;
    let raw = raw.to_lowercase();
    Ok(if raw.starts_with('@') {
        raw
    } else {
        server.user_id(&raw)
    })
}

async fn check_password(server: &Server, user_id: &str, password: &str) -> Result<(), Error> {
    let stored = server.db.read(|c| storage::user_password(c, user_id))?;
    match stored {
        Some((_, true)) => Err(Error::UserDeactivated),
        Some((Some(hash), false)) => {
            if verify_password(password.to_owned(), hash).await? {
                Ok(())
            } else {
                Err(Error::InvalidCredentials)
            }
        }
        _ => Err(Error::InvalidCredentials),
    }
}

/// `POST /login`.
pub(super) async fn login(
    State(server): State<Arc<Server>>,
    ClientIp(ip): ClientIp,
    AppserviceToken(appservice): AppserviceToken,
    Body(mut body): Body<LoginBody>,
) -> JsonResult {
    if body.kind == APPSERVICE_LOGIN {
        return login_appservice_user(&server, appservice, body);
    }
    if body.kind != "m.login.password" {
        return Err(Error::Unrecognized(
            http::StatusCode::BAD_REQUEST,
            format!("unsupported login type {}", body.kind),
        ));
    }
    let user_id = user_from_identifier(&server, body.identifier.as_ref(), body.user.as_deref())?;
    let password = body
        .password
        .take()
        .ok_or_else(|| Error::MissingParam("password is required".into()))?;
    // Every limit is checked before the password is hashed: a refused guess costs
    // nothing. Failed attempts are counted per account once they fail.
    server.rate_limit(Action::LoginAddress, &ip)?;
    server.rate_limit(Action::LoginAccount, &user_id)?;
    server.limiter.check(Action::LoginFailed, &user_id)?;
    match check_password(&server, &user_id, &password).await {
        Err(Error::InvalidCredentials) => {
            // Already refused; an empty bucket only shortens the next wait.
            let _ = server.limiter.take(Action::LoginFailed, &user_id, 1.0);
            return Err(Error::InvalidCredentials);
        }
        other => other?,
    }
    log_in(&server, &user_id, body)
}

/// A new device (the one asked for, or a random id) and access token for `user_id`.
fn log_in(server: &Server, user_id: &str, body: LoginBody) -> JsonResult {
    let session = crate::account::log_in(
        server,
        user_id,
        body.device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )?;
    Ok(Json(session_answer(server, session)))
}

/// `POST /login` with `m.login.application_service`: a new device and token for one of
/// the appservice's users, with no password.
fn login_appservice_user(
    server: &Server,
    appservice: Option<Arc<crate::appservice::Registered>>,
    body: LoginBody,
) -> JsonResult {
    let Some(a) = appservice else {
        return Err(Error::MissingToken);
    };
    let user_id = user_from_identifier(server, body.identifier.as_ref(), body.user.as_deref())?;
    if !a.is_user_in_namespace(&user_id) {
        return Err(Error::Exclusive(format!(
            "{user_id} is not in the application service's namespaces"
        )));
    }
    match server.db.read(|c| storage::user_password(c, &user_id))? {
        Some((_, false)) => {}
        Some((_, true)) => return Err(Error::UserDeactivated),
        None => return Err(Error::InvalidCredentials),
    }
    log_in(server, &user_id, body)
}

/// `POST /logout`: ends the session and removes its device.
pub(super) async fn logout(State(server): State<Arc<Server>>, Auth(caller): Auth) -> JsonResult {
    crate::account::delete_device(&server, &caller.user_id, &caller.device_id)?;
    Ok(Json(json!({})))
}

/// `POST /logout/all`.
pub(super) async fn logout_all(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> JsonResult {
    crate::account::delete_all_devices(&server, &caller.user_id)?;
    Ok(Json(json!({})))
}

/// `GET /account/whoami`.
pub(super) async fn whoami(Auth(caller): Auth) -> Json<Value> {
    Json(json!({"user_id": caller.user_id, "device_id": caller.device_id, "is_guest": false}))
}

/// UIAA with `m.login.password` for sensitive operations on one's own account.
pub(super) async fn require_password_uiaa(
    server: &Server,
    caller: &Requester,
    auth: Option<&Value>,
) -> Result<(), Error> {
    let flows = json!([{"stages": ["m.login.password"]}]);
    let Some(auth) = auth.filter(|a| !a.is_null()) else {
        let session = new_session(server, Some(caller.user_id.clone()));
        return Err(Error::Uiaa(
            json!({"flows": flows, "params": {}, "session": session}),
        ));
    };
    let session = auth["session"].clone();
    let retry = |msg: &str| {
        Error::Uiaa(
            json!({"flows": flows, "params": {}, "session": session, "errcode": "M_FORBIDDEN", "error": msg}),
        )
    };
    if auth["type"] != "m.login.password" {
        return Err(retry("unsupported authentication stage"));
    }
    let user = user_from_identifier(server, auth.get("identifier"), auth["user"].as_str())
        .unwrap_or_else(|_| caller.user_id.clone());
    if user != caller.user_id {
        // Not a stage to retry: the request itself is wrong (Synapse's 403).
        return Err(Error::Forbidden(
            "you can only authenticate as yourself".into(),
        ));
    }
    let password = auth["password"].as_str().unwrap_or_default();
    check_password(server, &caller.user_id, password)
        .await
        .map_err(|_| retry("invalid password"))?;
    if let Some(s) = auth["session"].as_str() {
        server.uiaa.lock().remove(s);
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct PasswordBody {
    new_password: String,
    logout_devices: Option<bool>,
    auth: Option<Value>,
}

/// `POST /account/password`.
pub(super) async fn change_password(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<PasswordBody>,
) -> JsonResult {
    require_password_uiaa(&server, &caller, body.auth.as_ref()).await?;
    let hash = hash_password(body.new_password).await?;
    let keep_only = body
        .logout_devices
        .unwrap_or(true)
        .then_some(caller.device_id.as_str());
    crate::account::set_password(&server, &caller.user_id, &hash, keep_only)?;
    Ok(Json(json!({})))
}

fn device_json(d: &storage::DeviceRow) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_ip": d.last_seen_ip,
    })
}

/// `GET /devices`.
pub(super) async fn devices(State(server): State<Arc<Server>>, Auth(caller): Auth) -> JsonResult {
    let list = server
        .db
        .read(|c| storage::list_devices(c, &caller.user_id))?;
    Ok(Json(
        json!({"devices": list.iter().map(device_json).collect::<Vec<_>>()}),
    ))
}

/// `GET /devices/{deviceId}`.
pub(super) async fn device(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(id): P<String>,
) -> JsonResult {
    let list = server
        .db
        .read(|c| storage::list_devices(c, &caller.user_id))?;
    list.iter()
        .find(|d| d.device_id == id)
        .map(|d| Json(device_json(d)))
        .ok_or_else(|| Error::NotFound("no such device".into()))
}

#[derive(Deserialize)]
pub(super) struct RenameBody {
    display_name: Option<String>,
}

/// `PUT /devices/{deviceId}`.
pub(super) async fn rename_device(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Body(body): Body<RenameBody>,
) -> JsonResult {
    let found =
        crate::account::rename_device(&server, &caller.user_id, &id, body.display_name.as_deref())?;
    if !found {
        return Err(Error::NotFound("no such device".into()));
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct AuthOnlyBody {
    auth: Option<Value>,
}

/// `DELETE /devices/{deviceId}` (UIAA).
pub(super) async fn delete_device(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Body(body): Body<AuthOnlyBody>,
) -> JsonResult {
    require_password_uiaa(&server, &caller, body.auth.as_ref()).await?;
    if !crate::account::delete_device(&server, &caller.user_id, &id)? {
        return Err(Error::NotFound("no such device".into()));
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct DeleteDevicesBody {
    devices: Vec<String>,
    auth: Option<Value>,
}

/// `POST /delete_devices` (UIAA).
pub(super) async fn delete_devices(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<DeleteDevicesBody>,
) -> JsonResult {
    require_password_uiaa(&server, &caller, body.auth.as_ref()).await?;
    crate::account::delete_devices(&server, &caller.user_id, &body.devices)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct DeactivateBody {
    auth: Option<Value>,
    #[serde(default)]
    erase: bool,
}

/// `POST /account/deactivate` (UIAA with the password): the account is deactivated,
/// logged out everywhere and leaves its rooms (see [`crate::account::deactivate`]).
/// No identity server was ever bound, hence `no-support`.
pub(super) async fn deactivate(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<DeactivateBody>,
) -> JsonResult {
    require_password_uiaa(&server, &caller, body.auth.as_ref()).await?;
    crate::account::deactivate(&server, &caller.user_id, body.erase).await?;
    Ok(Json(json!({"id_server_unbind_result": "no-support"})))
}

// Third-party identifiers. This server keeps none (no e-mail or SMS sending, no identity
// server; `m.3pid_changes` is off in `/capabilities`): the list is empty and the calls
// that would add, bind or validate one answer with the spec's 3PID errors.

/// `GET /account/3pid`.
pub(super) async fn threepids(Auth(_caller): Auth) -> Json<Value> {
    Json(json!({"threepids": []}))
}

#[derive(Deserialize)]
pub(super) struct ThreepidSessionBody {
    client_secret: Option<String>,
    sid: Option<String>,
}

/// `POST /account/3pid/add`, `/account/3pid/bind` and the deprecated `POST /account/3pid`:
/// there can be no validated session to add from.
pub(super) async fn threepid_add(
    Auth(_caller): Auth,
    Body(body): Body<ThreepidSessionBody>,
) -> JsonResult {
    if body.client_secret.is_none() || body.sid.is_none() {
        return Err(Error::MissingParam(
            "client_secret and sid are required".into(),
        ));
    }
    Err(Error::ThreepidAuthFailed(
        "no validated third-party identifier session: this server does not validate 3PIDs".into(),
    ))
}

#[derive(Deserialize)]
pub(super) struct ThreepidBody {
    medium: String,
    address: String,
}

/// `POST /account/3pid/delete` and `/account/3pid/unbind`: the account has none.
pub(super) async fn threepid_delete(
    Auth(_caller): Auth,
    Body(body): Body<ThreepidBody>,
) -> JsonResult {
    Err(Error::ThreepidNotFound(format!(
        "no {} {} on this account",
        body.medium, body.address
    )))
}

/// `POST …/{email,msisdn}/requestToken` (account, registration, password reset).
pub(super) async fn request_token(Body(_body): Body<Value>) -> JsonResult {
    Err(Error::ThreepidMediumNotSupported(
        "this server does not send validation tokens for third-party identifiers".into(),
    ))
}
