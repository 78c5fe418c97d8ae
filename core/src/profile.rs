//! Profiles: a user's display name and avatar, read here or from their server, and
//! changed by the user (`/profile/{userId}/{field}`); the member events that mirror them
//! are the membership service's ([`crate::membership::profile_changed`]).

use serde_json::Value;

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;

/// Display name and avatar URL.
pub type Profile = (Option<String>, Option<String>);

/// A local user's profile from the database (or an application service that knows the
/// user); a remote user's from their server.
pub async fn load(server: &Server, user_id: &str) -> Result<Profile, Error> {
    if !server.is_local_user(user_id) {
        return remote_profile(server, user_id).await;
    }
    crate::appservice::query::local_profile(server, user_id)
        .await?
        .ok_or_else(|| Error::NotFound("profile not found".into()))
}

async fn remote_profile(server: &Server, user_id: &str) -> Result<Profile, Error> {
    let (_, destination) = user_id
        .rsplit_once(':')
        .ok_or_else(|| Error::InvalidParam(format!("{user_id} is not a user id")))?;
    let user = crate::federation::client::parse_id(user_id)?;
    let request = ruma::api::federation::query::get_profile_information::v1::Request::new(user);
    let profile = crate::federation::client::execute(server, destination, request).await?;
    let field = |name: &str| profile.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok((field("displayname"), field("avatar_url")))
}

/// Set (or with `None` clear) the requester's own `field` (`displayname` or
/// `avatar_url`), within the limits member events can carry, then update their member
/// event in every joined room.
pub fn set_field(
    server: &Server,
    requester: &Requester,
    field: &str,
    value: Option<&str>,
) -> Result<(), Error> {
    match (field, value) {
        ("displayname", Some(d)) if d.chars().count() > crate::rooms::MAX_DISPLAYNAME_LEN => {
            return Err(Error::InvalidParam(format!(
                "displayname is too long (at most {} characters)",
                crate::rooms::MAX_DISPLAYNAME_LEN
            )));
        }
        ("avatar_url", Some(a)) if a.len() > crate::rooms::MAX_AVATAR_URL_LEN => {
            return Err(Error::InvalidParam(format!(
                "avatar_url is too long (at most {} bytes)",
                crate::rooms::MAX_AVATAR_URL_LEN
            )));
        }
        _ => {}
    }
    let user_id = requester.user_id.as_str();
    server.write(|tx| match field {
        "displayname" => crate::storage::set_displayname(tx, user_id, value),
        "avatar_url" => crate::storage::set_avatar_url(tx, user_id, value),
        _ => Err(Error::BadJson(format!("unknown profile field {field}"))),
    })?;
    crate::membership::profile_changed(server, requester)
}
