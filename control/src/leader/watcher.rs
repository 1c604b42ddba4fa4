//! `Leadership`: starts the actor tree when this node becomes leader and
//! stops it when it is not any more (or a new term begins).
//!
//! Invariant kept here: the tree for term T starts only after this node has
//! applied every entry committed before it (a read barrier), so actors see
//! the whole state machine; and a node that is not the leader runs no actor
//! and accepts no agent session (2, 3).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_raft::RaftNode;
use openraft::ServerState;
use ractor::{Actor, ActorCell, ActorRef};

use super::supervisor::{Supervisor, SupervisorMsg};
use super::{Directory, LeaderCtx};

/// The term a supervisor runs for, and the supervisor.
type Running = Option<(u64, ActorRef<SupervisorMsg>)>;

#[derive(Clone, Default)]
pub struct Leadership {
    current: Arc<Mutex<Running>>,
    actors: Arc<AtomicUsize>,
}

impl Leadership {
    /// The running supervisor, if this node leads and has caught up.
    pub fn supervisor(&self) -> Option<ActorRef<SupervisorMsg>> {
        self.lock().as_ref().map(|(_, a)| a.clone())
    }

    /// Sandbox actors running now (0 when not leading).
    pub fn sandbox_actors(&self) -> usize {
        if self.lock().is_some() {
            self.actors.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `node`'s Raft state for the life of the process.
    pub fn watch(node: Arc<RaftNode>) -> Self {
        let leadership = Self::default();
        let this = leadership.clone();
        tokio::spawn(async move { this.run(node).await });
        leadership
    }

    /// Kills the tree at once (ractor kills every descendant of a killed
    /// actor): its actors are interrupted mid-step, and
    /// anything one of them still proposes carries the old term and is
    /// refused by the state machine (invariant 3).
    async fn stop_current(&self) {
        let current = self.lock().take();
        if let Some((term, supervisor)) = current {
            tracing::info!(term, "leadership ended; killing the sandbox actors");
            kill_in_spawn_order(&supervisor.get_cell());
            let _ = supervisor
                .kill_and_wait(Some(Duration::from_secs(10)))
                .await;
        }
    }

    async fn run(self, node: Arc<RaftNode>) {
        let mut metrics = node.raft().metrics();
        loop {
            let (leading, term) = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader, m.current_term)
            };
            let running_term = self.lock().as_ref().map(|(t, _)| *t);
            if running_term.is_some() && (!leading || running_term != Some(term)) {
                self.stop_current().await;
            }
            if leading && self.lock().is_none() {
                match node.read_barrier().await {
                    Ok(()) => {
                        let still = {
                            let m = node.metrics();
                            m.state == ServerState::Leader && m.current_term == term
                        };
                        if still {
                            let ctx = Arc::new(LeaderCtx {
                                node: node.clone(),
                                directory: Directory::default(),
                                term,
                                actors: self.actors.clone(),
                            });
                            match Actor::spawn(None, Supervisor, ctx).await {
                                Ok((supervisor, _)) => {
                                    tracing::info!(
                                        term,
                                        "leader caught up; sandbox actors started"
                                    );
                                    *self.lock() = Some((term, supervisor));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot start the supervisor")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "leader not caught up yet"),
                }
                if self.lock().is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            if metrics.changed().await.is_err() {
                self.stop_current().await;
                return;
            }
        }
    }
}

/// Sends a kill to `cell` and then to each of its descendants, children in
/// the order they were spawned (actor ids grow). ractor's own kill walks
/// the children in hash-map order, which differs between processes, and
/// the order actors die in decides the order agent sessions close: the
/// simulator must see one order for a seed.
fn kill_in_spawn_order(cell: &ActorCell) {
    cell.kill();
    let mut children = cell.get_children();
    children.sort_by_key(ActorCell::get_id);
    for child in &children {
        kill_in_spawn_order(child);
    }
}
