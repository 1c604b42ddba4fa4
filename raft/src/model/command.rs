//! Commands: the only way to change the state machine. The enum is the
//! replicated API; new variants may be added, existing ones never change
//! meaning.

use serde::{Deserialize, Serialize};

use super::update::{UpdatePhase, UpdatePolicy};
use super::{Desired, NodeRecord, Phase, SandboxRecord, SandboxSpec};

/// A state-machine command, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Create a sandbox record. `uid` and `created_at_ms` are chosen by the
    /// node that accepted the request, so applying is deterministic.
    CreateSandbox {
        name: String,
        uid: String,
        spec: SandboxSpec,
        created_at_ms: i64,
    },
    /// Delete a sandbox: at once if it was never placed, else marked
    /// Deleting until its node has removed it.
    DeleteSandbox {
        name: String,
        #[serde(default)]
        keep_volume: bool,
    },
    /// Ask for the sandbox to run or be stopped.
    SetDesired { name: String, desired: Desired },
    /// Place a sandbox on a node, committed before anything runs there.
    ScheduleSandbox {
        name: String,
        uid: String,
        node: String,
    },
    /// Record what the sandbox's actor observed.
    SetSandboxStatus {
        name: String,
        uid: String,
        phase: Phase,
        message: String,
        container_id: String,
    },
    /// Forget a sandbox its node has deleted.
    RemoveSandbox { name: String, uid: String },
    /// An agent registered (or re-registered) with the leader.
    RegisterNode {
        name: String,
        driver: String,
        data_addr: String,
        cpus: u32,
        memory_bytes: u64,
        at_ms: i64,
    },
    /// Start an update to `spec` (a new revision), optionally only if the
    /// sandbox is still at `expected_revision`.
    UpdateSandbox {
        name: String,
        operation_id: String,
        spec: SandboxSpec,
        expected_revision: Option<u64>,
        policy: UpdatePolicy,
        at_ms: i64,
    },
    /// Roll back: abort the update in progress, or go back to `to_revision`
    /// (default: the last stable revision other than the current one).
    RollbackSandbox {
        name: String,
        operation_id: String,
        to_revision: Option<u64>,
        policy: UpdatePolicy,
        at_ms: i64,
    },
    /// Commit an operation's next phase (compare-and-set on `from`), with
    /// the revision switch and stability mark the transition implies.
    AdvanceOperation {
        name: String,
        uid: String,
        operation_id: String,
        from: UpdatePhase,
        to: UpdatePhase,
        reason: String,
        switch_to: Option<u64>,
        mark_stable: Option<u64>,
        at_ms: i64,
    },
    /// An agent's liveness changed.
    SetNodeReady {
        name: String,
        ready: bool,
        message: String,
        at_ms: i64,
    },
}

/// Why a command was refused by the state machine (it then changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    AlreadyExists,
    NotFound,
    FailedPrecondition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// What applying a log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CommandResponse {
    /// Blank and membership entries.
    Applied,
    /// The record after the command.
    Sandbox { record: SandboxRecord },
    /// The record was removed.
    Deleted { name: String },
    /// The node record after the command.
    Node { record: NodeRecord },
    /// The command was refused and changed nothing.
    Rejected { rejection: Rejection },
}

impl CommandResponse {
    pub(crate) fn rejected(kind: RejectionKind, message: impl Into<String>) -> Self {
        CommandResponse::Rejected {
            rejection: Rejection {
                kind,
                message: message.into(),
            },
        }
    }
}
