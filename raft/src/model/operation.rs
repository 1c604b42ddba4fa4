//! Revisions and operations, as replicated. A sandbox keeps every revision
//! of its spec; an operation (update or rollback) moves it from one to
//! another through the phases of [`super::update`].

use serde::{Deserialize, Serialize};

use super::update::{UpdatePhase, UpdatePolicy};
use super::SandboxSpec;

/// One revision of a sandbox's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    pub spec: SandboxSpec,
    pub created_at_ms: i64,
    /// Verified healthy at least once.
    pub stable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationKind {
    Update,
    Rollback,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Update => "update",
            OperationKind::Rollback => "rollback",
        }
    }
}

/// An update or rollback of one sandbox: the current one, or the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub kind: OperationKind,
    pub from_revision: u64,
    pub to_revision: u64,
    pub phase: UpdatePhase,
    pub policy: UpdatePolicy,
    /// Phase changes so far.
    pub attempts: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    /// When the current phase began (deadlines count from StartingNew).
    pub phase_started_at_ms: i64,
    /// Why it failed, rolled back or was aborted; how to proceed.
    #[serde(default)]
    pub reason: String,
    /// While Pulling: the node's pull progress, one line.
    #[serde(default)]
    pub progress: String,
    /// W3C `traceparent` of the request that began the operation: every
    /// phase, on whichever leader, is part of that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
}

impl Operation {
    /// A new operation, Pending.
    pub fn new(
        id: &str,
        kind: OperationKind,
        from: u64,
        to: u64,
        policy: UpdatePolicy,
        at_ms: i64,
    ) -> Self {
        Self {
            id: id.to_string(),
            kind,
            from_revision: from,
            to_revision: to,
            phase: UpdatePhase::Pending,
            policy,
            attempts: 0,
            started_at_ms: at_ms,
            updated_at_ms: at_ms,
            phase_started_at_ms: at_ms,
            reason: String::new(),
            progress: String::new(),
            trace: String::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        !self.phase.is_terminal()
    }

    /// One line naming the operation, for errors and the CLI.
    pub fn describe(&self) -> String {
        format!(
            "{} {} (revision {} -> {}) is {}",
            self.kind.as_str(),
            self.id,
            self.from_revision,
            self.to_revision,
            self.phase.as_str()
        )
    }
}
