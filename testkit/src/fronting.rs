//! Fronting: something the harness puts in front of every listener of a
//! test cluster (the chaos suite's partitioning proxy). Each component
//! advertises the front's address instead of its own, and its outgoing
//! connections leave from its own loopback address, so the front sees which
//! component dials which.

use std::net::IpAddr;

/// A component of a test cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Node(u64),
    Agent(String),
}

/// What stands in front of a cluster's listeners.
pub trait Fronting: Send {
    /// The address others dial to reach `peer`, which listens at `real`.
    fn front(&mut self, peer: &Peer, real: &str) -> anyhow::Result<String>;
    /// The local address `peer`'s outgoing connections leave from.
    fn source_ip(&self, peer: &Peer) -> Option<IpAddr>;
}
