//! Test harness for berth's multi-process tests: real `berthd` processes on
//! loopback ports, each in its own data dir under a temp dir.
//!
//! Every process a test starts is killed when its [`TestCluster`] drops,
//! also when the test fails (the node logs are then printed for diagnosis).

pub mod api;
mod cluster;
mod fronting;
pub mod podman;
mod process;

pub use cluster::TestCluster;
pub use fronting::{Fronting, Peer};
pub use process::{bin_path, free_port, NodeProcess};
