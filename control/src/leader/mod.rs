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
//! machine), and are killed as soon as it is no longer leader (2); every
//! write an actor proposes carries the tree's term and is refused by the
//! state machine in an entry of any other term; every command to an agent
//! carries the term and is sent only after a leader barrier in that term
//! (3). An actor never dies of an expected error (lost quorum, a refused
//! compare-and-set, NotFound): it retries with backoff.

pub mod directory;
pub mod node_actor;
mod probe;
pub mod reconcile;
pub mod sandbox_actor;
pub mod supervisor;
mod telemetry;
pub mod update_step;
mod watcher;

use std::sync::Arc;

use berth_raft::{Command, CommandResponse, NodeError, Proposal, RaftNode};

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

impl LeaderCtx {
    /// Commits `command` on behalf of this term's actor tree: the state
    /// machine refuses it unless it lands in an entry of this very term, so
    /// nothing a deposed tree proposes is ever applied (invariant 3).
    pub async fn write(&self, command: Command) -> Result<CommandResponse, NodeError> {
        self.node
            .propose(Proposal::in_term(command, self.term))
            .await
    }

    /// Before a command goes to an agent: this node still leads in this
    /// term (confirmed by a quorum) and has applied everything committed.
    pub async fn barrier(&self) -> Result<(), NodeError> {
        self.node.leader_barrier(self.term).await
    }
}
