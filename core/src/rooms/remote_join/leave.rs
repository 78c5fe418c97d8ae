//! Leaving over federation: rejecting an invite (or withdrawing a knock) to a room this
//! node is not in.

use super::*;

/// Leave (reject an invite to) a room this server is not in, through `via`.
pub async fn leave_remote(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    via: Vec<String>,
) -> Result<String, Error> {
    let via = candidates(server, via);
    let mut last = None;
    for dest in via {
        match leave_via(server, room_id, user_id, &dest).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "remote leave failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("no server to leave {room_id} through"))))
}

async fn leave_via(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    dest: &str,
) -> Result<String, Error> {
    let (_, event_id, object) =
        make_membership(server, dest, room_id, user_id, "leave", Map::new()).await?;
    let request = create_leave_event::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&event_id)?,
        serde_json::value::to_raw_value(&object)?,
    );
    execute(server, dest, request).await?;
    let json = serde_json::to_string(&object)?;
    let pdu = Pdu::from_json(&event_id, &json)?;
    server.write(|c| {
        if storage::get_event_any(c, &event_id)?.is_none() {
            storage::insert_event(c, &outlier(&pdu, room_id, json.clone(), None, c)?)?;
        }
        let pos = next_stream_position(c)?;
        crate::rooms::set_membership(c, room_id, user_id, "leave", &event_id, pos)
    })?;
    Ok(event_id)
}
