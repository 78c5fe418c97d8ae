//! Devices and passwords: renaming and deleting devices (logging out), and changing the
//! password. A device that goes, or whose public name changes, is a device-list change
//! other users (and servers) learn of (`e2ee::device_lists::mark_changed`).

use rusqlite::Connection;

use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Remove a device of `user_id` and, with it, its tokens, keys, pushers and pending
/// to-device messages, in the write transaction `tx`; a removed device is a device-list
/// change. Whether the device existed.
pub fn delete_device_in(tx: &Connection, user_id: &str, device_id: &str) -> Result<bool, Error> {
    let removed = storage::delete_device(tx, user_id, device_id)?;
    if removed {
        crate::e2ee::device_lists::mark_changed(tx, user_id, Some(device_id))?;
    }
    Ok(removed)
}

/// Remove every device of `user_id`, in `tx`.
pub(crate) fn delete_all_devices_in(tx: &Connection, user_id: &str) -> Result<(), Error> {
    delete_other_devices_in(tx, user_id, None)
}

/// Remove every device of `user_id` but `keep` (if any), in `tx`.
fn delete_other_devices_in(
    tx: &Connection,
    user_id: &str,
    keep: Option<&str>,
) -> Result<(), Error> {
    for device_id in storage::device_ids(tx, user_id)? {
        if Some(device_id.as_str()) != keep {
            delete_device_in(tx, user_id, &device_id)?;
        }
    }
    Ok(())
}

/// Delete (log out) one device of `user_id`. Whether it existed.
pub fn delete_device(server: &Server, user_id: &str, device_id: &str) -> Result<bool, Error> {
    let removed = server.write(|tx| delete_device_in(tx, user_id, device_id))?;
    server.sync.initial.forget_device(user_id, device_id);
    Ok(removed)
}

/// Delete the devices of `user_id` named (unknown ones are skipped).
pub fn delete_devices(server: &Server, user_id: &str, device_ids: &[String]) -> Result<(), Error> {
    server.write(|tx| {
        for d in device_ids {
            delete_device_in(tx, user_id, d)?;
        }
        Ok(())
    })?;
    for d in device_ids {
        server.sync.initial.forget_device(user_id, d);
    }
    Ok(())
}

/// Delete every device of `user_id` (`/logout/all`).
pub fn delete_all_devices(server: &Server, user_id: &str) -> Result<(), Error> {
    server.write(|tx| delete_all_devices_in(tx, user_id))?;
    server.sync.initial.forget_user(user_id);
    Ok(())
}

/// Rename a device of `user_id` (`None` clears the name). Whether it exists.
pub fn rename_device(
    server: &Server,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> Result<bool, Error> {
    let found = server.write(|tx| {
        let found = storage::rename_device(tx, user_id, device_id, display_name)?;
        // The display name is public (in key queries and other servers' caches): a
        // device-list change, as Synapse makes it.
        if found && storage::device_keys(tx, user_id, device_id)?.is_some() {
            crate::e2ee::device_lists::mark_changed(tx, user_id, Some(device_id))?;
        }
        Ok(found)
    })?;
    if found {
        server.sync.initial.forget_device(user_id, device_id);
    }
    Ok(found)
}

/// Set the password hash of `user_id`; with `keep_only`, every other device is logged
/// out (a password change from a client, unless it asks otherwise).
pub fn set_password(
    server: &Server,
    user_id: &str,
    hash: &str,
    keep_only: Option<&str>,
) -> Result<(), Error> {
    server.write(|tx| {
        storage::set_password(tx, user_id, hash)?;
        if let Some(keep) = keep_only {
            delete_other_devices_in(tx, user_id, Some(keep))?;
        }
        Ok(())
    })
}
