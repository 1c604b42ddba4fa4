//! The leader's actor tree, running only on the current Raft leader:
//!
//! ```text
//!  Leadership (task) ── watches Raft metrics
//!     └─ Supervisor            one per leadership term
//!          ├─ SandboxActor × N  one per sandbox: decides (reconcile.rs), commits, commands
//!          └─ NodeActor × M     one per connected agent session
//! ```
//!
//! Invariants kept here: actors start only after this leader has applied
//! everything committed before its term (so decisions use the whole state
//! machine), and stop as soon as it is no longer leader (2); every command
//! to an agent carries the term the tree was started for (3).

pub mod directory;
pub mod node_actor;
mod probe;
pub mod reconcile;
pub mod sandbox_actor;
pub mod supervisor;
pub mod update_step;
mod watcher;

use std::sync::Arc;

use berth_raft::RaftNode;

pub use directory::Directory;
pub use watcher::Leadership;

/// What every actor of one leadership term shares.
pub struct LeaderCtx {
    pub node: Arc<RaftNode>,
    pub directory: Directory,
    /// The Raft term this tree acts for; sent with every agent command.
    pub term: u64,
    /// How many sandbox actors run (reported by `ClusterService.GetStatus`).
    pub actors: Arc<std::sync::atomic::AtomicUsize>,
}
