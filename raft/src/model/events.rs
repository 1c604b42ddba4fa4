//! A sandbox's lifecycle events, kept in its replicated record (the last
//! [`MAX_EVENTS`]), so they survive failover like the rest of the state.
//!
//! The state machine derives them from what each command changed (placed,
//! phase changes with their message, container started or replaced,
//! operation phases, refusals of a client's request), so every replica
//! derives the same events. Times come from the commands themselves (or
//! the API node's audit stamp), never from the applying node's clock.

use serde::{Deserialize, Serialize};

use super::SandboxRecord;

/// How many events a sandbox keeps (oldest dropped first).
pub const MAX_EVENTS: usize = 100;

/// One thing that happened to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Order within this sandbox (1, 2, ...; never reused).
    pub seq: u64,
    /// When, in Unix ms (0 when the command carried no time).
    pub at_ms: i64,
    /// Created, Scheduled, Running, Failed, Stopped, Started, Restarted,
    /// Update, Rollback, Refused, ...
    pub kind: String,
    pub message: String,
    /// The sandbox's revision then.
    pub revision: u64,
}

/// Append an event, dropping the oldest beyond [`MAX_EVENTS`].
pub fn push(record: &mut SandboxRecord, at_ms: i64, kind: &str, message: String) {
    let seq = record.events.last().map_or(1, |e| e.seq + 1);
    record.events.push(LifecycleEvent {
        seq,
        at_ms,
        kind: kind.to_string(),
        message,
        revision: record.revision,
    });
    let excess = record.events.len().saturating_sub(MAX_EVENTS);
    record.events.drain(..excess);
}

fn short(id: &str) -> &str {
    let id = id.rsplit("://").next().unwrap_or(id);
    &id[..id.len().min(12)]
}

/// The events a change from `old` (None: just created) to `new` implies.
pub fn derive(old: Option<&SandboxRecord>, new: &SandboxRecord) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let Some(old) = old else {
        let how = if new.node.is_some() {
            " on its kept volume"
        } else {
            ""
        };
        out.push(("Created", format!("image {}{how}", new.spec.image)));
        return out;
    };
    if old.node.is_none() {
        if let Some(node) = &new.node {
            out.push(("Scheduled", format!("placed on node {node}")));
        }
    }
    if !new.container_id.is_empty() && new.container_id != old.container_id {
        if old.container_id.is_empty() {
            let id = short(&new.container_id);
            out.push(("Started", format!("container {id}")));
        } else {
            let (from, to) = (short(&old.container_id), short(&new.container_id));
            out.push(("Restarted", format!("container {from} replaced by {to}")));
        }
    }
    if new.phase != old.phase {
        out.push((new.phase.as_str(), new.message.clone()));
    } else if new.message != old.message && new.phase != super::Phase::Running {
        // A new reason while still failing or starting (a retry, a backoff).
        out.push((new.phase.as_str(), new.message.clone()));
    }
    if new.desired != old.desired {
        out.push(("Requested", format!("desired {:?}", new.desired)));
    }
    let op_phase = |r: &SandboxRecord| r.operation.as_ref().map(|o| (o.id.clone(), o.phase));
    if let Some(op) = &new.operation {
        if op_phase(old) != op_phase(new) {
            let kind = match op.kind {
                super::OperationKind::Update => "Update",
                super::OperationKind::Rollback => "Rollback",
            };
            let started = old.operation.as_ref().is_none_or(|o| o.id != op.id);
            let message = if started {
                format!("{} to revision {} began", op.kind.as_str(), op.to_revision)
            } else if op.reason.is_empty() {
                format!("now {}", op.phase.as_str())
            } else {
                format!("now {}: {}", op.phase.as_str(), op.reason)
            };
            out.push((kind, message));
        }
    }
    out
}
