//! The accounts service: sessions (a device and its tokens, for `/login`, `/register`,
//! `/refresh` and the mobile API), devices (rename, delete, log out), passwords and
//! deactivation (`POST /account/deactivate` and the admin API).
//!
//! Handlers parse, authorise (UIAA, rate limits on guesses) and answer; what is written,
//! and what a write must also record (a device-list change when a device goes), is
//! decided here once for every entry point.

mod deactivate;
mod devices;
mod register;
mod sessions;

pub use deactivate::deactivate;
pub use devices::{
    delete_all_devices, delete_device, delete_device_in, delete_devices, rename_device,
    set_password,
};
pub use register::{register, use_registration_token};
pub use sessions::{RefreshToken, Session, first_use_after_refresh, log_in, refresh};

/// Whether `l` is a valid user-id localpart (the historical lower-case set).
pub fn valid_localpart(l: &str) -> bool {
    !l.is_empty()
        && l.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        )
}
