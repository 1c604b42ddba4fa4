//! The recorded history: every client operation with its invocation and
//! completion times (since the run began) and its outcome. Unknown
//! outcomes (a timeout, a lost answer) are kept as such: the checker must
//! allow them to have happened, or not.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OpKind {
    Create,
    Delete,
    /// Update to this image (good, crashing or missing).
    Update {
        image: String,
    },
    Rollback,
    Stop,
    Start,
    /// Write marker `n` into the workspace.
    Marker {
        n: u64,
    },
    Get,
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Delete => "delete",
            OpKind::Update { .. } => "update",
            OpKind::Rollback => "rollback",
            OpKind::Stop => "stop",
            OpKind::Start => "start",
            OpKind::Marker { .. } => "marker",
            OpKind::Get => "get",
        }
    }
}

/// What a successful call returned (what the checker needs of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Value {
    None,
    /// Create: the new sandbox's uid.
    Uid(String),
    /// Update: the revision it creates.
    Revision(u64),
    /// Get: the sandbox's uid and whether it is being deleted.
    Sandbox {
        uid: String,
        deleting: bool,
    },
    /// Marker: the workspace's identity file.
    Workspace(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok(Value),
    /// A definite refusal: the gRPC code and message.
    Failed {
        code: String,
        message: String,
    },
    /// The call may or may not have taken effect.
    Unknown(String),
}

/// One client operation.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    pub sandbox: String,
    pub kind: OpKind,
    /// Milliseconds since the run began.
    pub invoke_ms: u64,
    /// None when the outcome is unknown (it may take effect until the end).
    pub complete_ms: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    pub fn code(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Failed { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The shared history of a run.
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
