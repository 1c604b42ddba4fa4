//! Test helpers for the node's own tests: a one-voter Raft node on the
//! simulator's in-memory disk, and a create command to write through it.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::BasicNode;

use crate::model::SandboxSpec;
use crate::store::disk::MemDisk;
use crate::{Command, NodeConfig, RaftNode};

/// Creates sandbox `s{i}` (uid `u{i}`).
pub(super) fn create(i: usize) -> Command {
    Command::CreateSandbox {
        name: format!("s{i}"),
        uid: format!("u{i}"),
        spec: SandboxSpec {
            image: "busybox".into(),
            policy: None,
            env: Default::default(),
            secret_env: Default::default(),
        },
        created_at_ms: 1,
        adopt_volume: None,
    }
}

/// A one-voter cluster, leading, with its term's first entry applied: no
/// entry but the writes' own is appended from here on.
pub(super) async fn one_voter(group_commit: bool) -> Arc<RaftNode> {
    let mut config = NodeConfig::new(1, "127.0.0.1:1", "/nonexistent");
    config.disk = Some(Arc::new(MemDisk::default()));
    config.group_commit = group_commit;
    let node = RaftNode::start(config).await.unwrap();
    node.bootstrap(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
        .await
        .unwrap();
    node.read_barrier().await.unwrap();
    node
}
