//! The integration tests: one binary, a module per area (each extra test binary links
//! matrix-sdk again, which was most of CI's time on two cores). Helpers shared by the
//! modules live in the `warren-tests` library (`tests/src/lib.rs`).

mod appservice;
mod bad_input;
mod client_api;
mod client_flow;
mod conformance;
mod delayed_events;
mod directory_search;
mod e2ee;
mod federation;
mod federation_clients;
mod federation_e2ee;
mod federation_join;
mod federation_mesh;
mod federation_read;
mod federation_receive;
mod federation_sender;
mod history_visibility;
mod in_process;
mod initial_sync_cache;
mod mailbox;
mod media;
mod membership;
mod metrics;
mod presence;
mod push_gateway;
mod push_rules;
mod relations;
mod restricted_joins;
mod room_lifecycle;
mod room_versions;
mod simulation;
mod sliding_sync;
mod url_preview;
mod voip;
