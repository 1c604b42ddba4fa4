//! berth's replicated core: the openraft type configuration, the RocksDB log
//! store and state machine, the gRPC Raft transport, and [`RaftNode`], the
//! facade the control plane writes and reads through.
//!
//! Invariant kept here: a write acknowledged to a client is durable on a
//! majority (log appends are synced before openraft is told they are flushed)
//! and the state machine is the single source of truth (invariants 1 and 2).

// openraft's StorageError is large by design; boxing it at every call would
// only add noise.
#![allow(clippy::result_large_err)]
// Records travel by value through apply and snapshots, one at a time;
// boxing every variant would add noise without saving memory.
#![allow(clippy::large_enum_variant)]

pub mod codec;
pub mod error;
pub mod model;
pub mod network;
pub mod node;
pub mod runtime;
pub mod store;

pub use error::NodeError;
pub use model::{
    Command, CommandResponse, Desired, NodeRecord, Phase, Proposal, Rejection, RejectionKind,
    SandboxRecord, SandboxSpec, State,
};
pub use node::{NodeConfig, RaftNode};

/// A control node's id. Ids are configured, never derived (invariant 7).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft types for berth: proposals (commands with their term and
    /// request id) in, command responses out.
    pub TypeConfig:
        D = Proposal,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = store::SnapshotData,
        AsyncRuntime = runtime::BerthRuntime,
);

/// The Raft instance berth runs.
pub type Raft = openraft::Raft<TypeConfig>;
