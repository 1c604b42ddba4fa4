//! The bootstrap token: the one platform-admin token a new cluster makes,
//! written to a leader's data dir (`bootstrap-token`, mode 0600) so the
//! operator who started the cluster can act. `berth up` reads it.
//!
//! The file is written (and synced) before its hash is proposed, so the
//! token is never in the state without its secret on disk. Exactly one
//! bootstrap token can be committed; a node whose file lost that race (or
//! whose proposal never committed) removes it once it sees the winner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_raft::model::{Role, DEFAULT_TENANT};
use berth_raft::{Command, NodeError, Proposal, RaftNode};
use openraft::ServerState;

use super::token;
use crate::clock::now_ms;

pub const FILE: &str = "bootstrap-token";

/// Keeps the bootstrap token in place until the cluster has one; returns
/// once this node's file, if any, agrees with the state.
pub async fn run(node: Arc<RaftNode>, data_dir: PathBuf) {
    let path = data_dir.join(FILE);
    loop {
        match step(&node, &path).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "bootstrap token not settled yet"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One look: true when nothing is left to do.
async fn step(node: &RaftNode, path: &Path) -> anyhow::Result<bool> {
    let ours = read(path)?;
    let winner = node
        .state()
        .read()
        .table
        .tokens()
        .find(|t| t.bootstrap)
        .map(|t| t.id.clone());
    if let Some(winner) = winner {
        if let Some((id, _)) = ours.as_deref().and_then(token::parse) {
            if id != winner {
                std::fs::remove_file(path)?;
                tracing::info!("another node's bootstrap token won; removed this node's file");
            }
        }
        return Ok(true);
    }
    let leading = node.metrics().state == ServerState::Leader;
    if !leading {
        return Ok(false);
    }
    let text = match ours {
        Some(text) if token::parse(&text).is_some() => text,
        _ => {
            let (text, _) = token::mint(DEFAULT_TENANT, Role::PlatformAdmin, "", 0, None);
            write(path, &text)?;
            text
        }
    };
    let (id, secret) = token::parse(&text).ok_or_else(|| anyhow::anyhow!("unreadable token"))?;
    let (_, mut record) = token::mint(
        DEFAULT_TENANT,
        Role::PlatformAdmin,
        "bootstrap",
        now_ms(),
        None,
    );
    record.id = id.to_string();
    record.secret_sha256 = token::digest(secret);
    record.bootstrap = true;
    match node
        .propose(Proposal::new(Command::CreateToken { record }))
        .await
    {
        Ok(_) => {
            tracing::info!(file = %path.display(), "bootstrap platform-admin token created");
            Ok(false)
        }
        Err(NodeError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the token with mode 0600 (atomically, synced).
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(berth_tls::write_file(
        path,
        format!("{text}\n").as_bytes(),
        0o600,
    )?)
}
