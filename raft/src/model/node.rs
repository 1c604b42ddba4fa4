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
    /// The agent instance accepted under this name (empty: none yet). A
    /// different instance is refused unless an operator allowed it.
    #[serde(default)]
    pub instance_id: String,
    /// `berth node replace`: the next instance to register is accepted.
    #[serde(default)]
    pub replace_allowed: bool,
}

/// A workspace volume kept when its sandbox was deleted with
/// `keep_volume`: listed, adoptable by a new sandbox, deletable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptVolume {
    pub volume: String,
    /// The node that holds it.
    pub node: String,
    /// The sandbox it belonged to, and that sandbox's uid (its labels).
    pub sandbox: String,
    pub uid: String,
    pub kept_at_ms: i64,
    /// An operator asked for it to be deleted; its node removes it.
    #[serde(default)]
    pub deleting: bool,
}
