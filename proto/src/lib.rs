//! Generated gRPC types: the public `berth.v1` API, the internal
//! `berth.raft.v1` transport between control nodes and the
//! `berth.agent.v1` agent protocol; plus [`policy`], the sandbox policy
//! document that the control plane validates and agents apply.

pub mod chaos;
pub mod clock;
pub mod dial;
pub mod entropy;
pub mod inventory;
pub mod net;
pub mod policy;
pub mod probe;

/// Public API: sandboxes and cluster membership.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.v1");
}

/// Internal Raft transport between control nodes.
pub mod raft_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.raft.v1");
}

/// Control plane <-> node agent protocol.
pub mod agent_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.agent.v1");
}

/// Encoded file descriptor set for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_descriptor");
