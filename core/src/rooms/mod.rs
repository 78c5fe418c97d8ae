//! The room DAG engine: building and authorising events, state, extremities, redaction.
//!
//! Every local write to a room runs inside the single database writer, which serialises
//! writes to a room (and the stream positions they take).

mod append;
mod auth;
mod create;
mod power;
mod redact;

pub use append::{Appended, append_event, load_pdu, random_string};
pub use create::{CreateRoom, create_room};
pub use power::{PowerLevels, power_levels};
pub use redact::check_redaction_allowed;
