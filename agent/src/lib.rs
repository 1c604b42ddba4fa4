//! berth-agent: runs sandboxes on one machine for the berth control plane.
//!
//! ```text
//!  control leader ──Session(stream)──▶ session ──▶ Driver ──▶ engine
//!  (commands fenced by term)            │ fence      (container | memory)
//!  control plane ──AgentData──▶ data_server ──▶ Driver::exec / logs
//! ```
//!
//! The agent holds no sandbox state of its own: the inventory is rebuilt
//! from the engine (labels). The data dir holds only the node name, the
//! highest leader term, and the container driver's copies of sandbox policy
//! documents (`policies/<sandbox>-r<revision>.yaml`, bind-mounted read-only
//! at `/etc/berth/policy.yaml`; rewritten from `Ensure` whenever needed).

mod chaos;
pub mod commands;
pub mod data_server;
pub mod driver;
pub mod fence;
mod fsutil;
mod heartbeat;
pub mod identity;
pub mod session;
