//! Errors of a control node's replicated operations. Serializable, because a
//! follower forwarding an operation to the leader gets the leader's error
//! back verbatim. The control plane maps these to gRPC codes in one place.

use serde::{Deserialize, Serialize};

use crate::model::{Rejection, RejectionKind};
use crate::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    /// This node is not the leader; retried internally, surfaces only as
    /// `Unavailable` once the deadline passes.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// No leader, no quorum, or the leader is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// Refused before it was proposed or sent (the leader could not be
    /// connected to, or has not heard from a quorum): surely did not run,
    /// so it is retried; surfaces as `Unavailable` once the deadline passes.
    #[error("{0}")]
    NotSent(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Over a tenant's quota; the message has the figures.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A command proposed for a leadership term that is not the term of
    /// the log entry carrying it: a deposed leader's actor. Never applied.
    #[error("stale leadership term: {0}")]
    StaleTerm(String),
    /// Storage or Raft failure on this node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Rejection> for NodeError {
    fn from(r: Rejection) -> Self {
        match r.kind {
            RejectionKind::AlreadyExists => NodeError::AlreadyExists(r.message),
            RejectionKind::NotFound => NodeError::NotFound(r.message),
            RejectionKind::FailedPrecondition => NodeError::FailedPrecondition(r.message),
            RejectionKind::InvalidArgument => NodeError::InvalidArgument(r.message),
            RejectionKind::StaleTerm => NodeError::StaleTerm(r.message),
            RejectionKind::ResourceExhausted => NodeError::ResourceExhausted(r.message),
        }
    }
}
