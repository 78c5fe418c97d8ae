//! `warren id`: the node's names, without starting it.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use warren_core::Identity;

use crate::output;

pub fn id(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    // StartError's Display is already one clear line; keep just that.
    let identity = Identity::load_or_create(data_dir).map_err(|e| anyhow!("{e}"))?;
    let peer_id = warren_p2p::peer_id_from_public_key(&identity.public_key());
    let lines = if json {
        let object = serde_json::json!({
            "server_name": identity.server_name(),
            "peer_id": peer_id.to_base58(),
            "data_dir": data_dir.display().to_string(),
        });
        vec![object.to_string()]
    } else {
        vec![
            format!("server name: {}", identity.server_name()),
            format!("peer id: {peer_id}"),
            format!("data dir: {}", data_dir.display()),
        ]
    };
    output::stdout_lines(&lines).context("could not write to stdout")
}
