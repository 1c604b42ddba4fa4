//! berth-agent: runs sandboxes on one machine for the berth control plane.
//!
//! ```text
//!  control leader ──Session(stream)──▶ session ──▶ Driver ──▶ engine
//!  (commands fenced by term)            │ fence      (container | memory)
//!  control plane ──AgentData──▶ data_server ──▶ Driver::exec / logs
//! ```
//!
//! The agent holds no sandbox state of its own: the inventory is rebuilt
//! from the engine (labels), and only the node name and the highest leader
//! term are persisted in the data dir.

pub mod commands;
pub mod data_server;
pub mod driver;
pub mod fence;
mod fsutil;
pub mod identity;
pub mod session;
