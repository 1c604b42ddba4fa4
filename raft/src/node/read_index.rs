//! Read indexes shared by concurrent callers on the leader. A read index
//! (openraft's `ensure_linearizable`) costs a round of heartbeats to the
//! followers; every sandbox actor passes one before it sends a command, and
//! every linearizable read needs one, so a burst of N callers used to cost
//! N rounds. Now callers queue; one round at a time runs for everyone who
//! queued before it began, and those who arrive while it runs wait for the
//! next. A quiet node still answers one caller with one round, at once.
//!
//! Invariant kept here (linearizability): every answer comes from a quorum
//! check that began after its caller asked, exactly as a round of the
//! caller's own would have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, LogId};
use tokio::sync::{mpsc, oneshot};

use crate::{NodeId, Raft};

/// What `ensure_linearizable` answers: the log id to read at.
pub(super) type Answer =
    Result<Option<LogId<NodeId>>, RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>>;

/// The queue of callers waiting for a read index; cheap to share.
pub(super) struct ReadIndexes {
    tx: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
    /// Rounds run so far (what the tests check).
    #[cfg(test)]
    rounds: Arc<AtomicU64>,
}

impl ReadIndexes {
    /// Starts the task that runs the rounds for `raft`; it ends when this
    /// queue drops.
    pub(super) fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rounds = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(raft, rx, rounds.clone()));
        Self {
            tx,
            #[cfg(test)]
            rounds,
        }
    }

    /// Quorum rounds run so far.
    #[cfg(test)]
    pub(super) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// A read index from a round that began after this call; None if the
    /// task has stopped (the node is shutting down).
    pub(super) async fn get(&self) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(reply).ok()?;
        answer.await.ok()
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
    rounds: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now asked before the round below begins.
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        rounds.fetch_add(1, Ordering::Relaxed);
        let answer = raft.ensure_linearizable().await;
        for caller in waiting {
            // A caller that gave up (timed out) is gone; nothing to do.
            let _ = caller.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_node::{create, one_voter};

    /// 200 concurrent callers, each after a write of its own: every one
    /// reads its write after the barrier (linearizable), and they shared
    /// far fewer quorum rounds than there were callers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_barriers_share_rounds_and_each_sees_its_write() {
        let node = one_voter(true).await;
        let term = node.metrics().current_term;
        let before = node.reads.rounds();
        let callers = (0..200).map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                node.write(create(i)).await.unwrap();
                if i % 2 == 0 {
                    node.leader_barrier(term).await.unwrap();
                } else {
                    node.read_barrier().await.unwrap();
                }
                assert!(node.state().read().table.get(&format!("s{i}")).is_some());
            })
        });
        for caller in callers.collect::<Vec<_>>() {
            caller.await.unwrap();
        }
        let rounds = node.reads.rounds() - before;
        assert!(
            (1..200).contains(&rounds),
            "{rounds} rounds for 200 callers"
        );
    }
}
