//! Forgetting rooms (the spec's "Leaving rooms": `/forget`): a room the user left no
//! longer appears to them.

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;

/// The requester forgets `room_id`, which they must have left (or been kicked or
/// banned from).
pub fn forget(server: &Server, requester: &Requester, room_id: &str) -> Result<(), Error> {
    let user_id = requester.user_id.as_str();
    server.write(|tx| match storage::membership(tx, room_id, user_id)? {
        Some((m, _, _)) if m == "join" || m == "invite" => Err(Error::Unrecognized(
            http::StatusCode::BAD_REQUEST,
            "leave the room before forgetting it".into(),
        )),
        Some(_) => storage::forget_room(tx, room_id, user_id),
        None => Err(Error::NotFound("you were never in this room".into())),
    })
}
