//! `GET /_matrix/federation/v1/query/directory?room_alias=`: a local alias's room and
//! the servers that can help join it (this one first, then those of joined members).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::FedQuery;
use crate::error::Error;
use crate::server::Server;
use crate::storage;

#[derive(Deserialize)]
pub(super) struct DirectoryQuery {
    room_alias: Option<String>,
}

pub(super) async fn query_directory(
    State(server): State<Arc<Server>>,
    FedQuery(q): FedQuery<DirectoryQuery>,
) -> Result<Json<Value>, Error> {
    let alias = q
        .room_alias
        .ok_or_else(|| Error::MissingParam("room_alias is required".into()))?;
    let parsed = ruma::RoomAliasId::parse(&alias)
        .map_err(|e| Error::InvalidParam(format!("invalid room alias {alias:?}: {e}")))?;
    if parsed.server_name().as_str() != server.server_name() {
        return Err(Error::NotFound(format!(
            "room alias {alias} does not belong to this server"
        )));
    }
    let (room_id, servers) = server.db.read_tx(|c| {
        let room_id = storage::alias_room(c, &alias)?
            .ok_or_else(|| Error::NotFound(format!("room alias {alias} not found")))?;
        Ok((
            room_id.clone(),
            resident_servers(server.server_name(), c, &room_id)?,
        ))
    })?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// This server first, then the other servers with joined members, sorted.
fn resident_servers(
    own: &str,
    c: &rusqlite::Connection,
    room_id: &str,
) -> Result<Vec<String>, Error> {
    let others: BTreeSet<String> = storage::room_members(c, room_id, "join")?
        .iter()
        .filter_map(|u| u.rsplit_once(':').map(|(_, s)| s.to_owned()))
        .filter(|s| s != own)
        .collect();
    Ok(std::iter::once(own.to_owned()).chain(others).collect())
}
