//! Commands: the only way to change the state machine. The enum is the
//! replicated API; new variants may be added, existing ones never change
//! meaning.

use serde::{Deserialize, Serialize};

use super::{SandboxRecord, SandboxSpec};

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
    /// Delete a sandbox record.
    DeleteSandbox { name: String },
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
