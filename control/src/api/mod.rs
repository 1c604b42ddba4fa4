//! gRPC services of a control node: `berth.v1.SandboxService` and
//! `berth.v1.ClusterService`. Handlers validate, then go through
//! [`berth_raft::RaftNode`]; they hold no state of their own.

mod cluster;
mod convert;
mod sandbox;

pub use cluster::ClusterApi;
pub use sandbox::SandboxApi;
