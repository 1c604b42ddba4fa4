//! gRPC services of a control node: `berth.v1.SandboxService` and
//! `berth.v1.ClusterService`. Handlers validate, then go through
//! [`berth_raft::RaftNode`]; they hold no state of their own.

mod access;
mod agent_session;
mod cluster;
mod convert;
mod data_plane;
mod events;
mod operations;
mod page;
mod sandbox;
mod volumes;

pub use access::AccessApi;
pub use agent_session::AgentSessions;
pub use cluster::ClusterApi;
pub use sandbox::SandboxApi;
