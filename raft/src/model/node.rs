//! A node agent as the state machine knows it.

use serde::{Deserialize, Serialize};

/// A machine running `berth-agent`. The name is the agent's deterministic
/// identity (invariant 7); records are never removed by liveness changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// "container" or "kube".
    pub driver: String,
    /// host:port of the agent's data-plane service (exec, logs).
    pub data_addr: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Heartbeating to the current leader.
    pub ready: bool,
    #[serde(default)]
    pub message: String,
    pub registered_at_ms: i64,
    pub changed_at_ms: i64,
}
