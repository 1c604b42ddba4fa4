//! berthd as a library: the pieces `main.rs` wires into one control node,
//! public so that the deterministic simulator (`berth-chaos sim`) runs the
//! very same node, several to a process, over its simulated network.
//!
//! ```text
//!  server ── api (berth.v1, agent sessions) ── RaftNode (berth_raft)
//!             auth layer                      └ leader: one actor per sandbox
//! ```

mod agent_client;
mod api;
pub mod auth;
pub mod bootstrap;
mod chaos;
mod clock;
mod error;
pub mod leader;
pub mod secrets;
pub mod server;
mod validate;
