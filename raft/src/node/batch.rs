//! Group commit on the leader: proposals that arrive while earlier ones are
//! being committed ride one log entry together ([`Command::Batch`]), so a
//! burst of N writes costs one synced append and one replication round per
//! node instead of N. A proposal that finds nothing in flight goes out at
//! once, alone, so batching never adds a wait to a quiet cluster.
//!
//! Invariant kept here: batching changes cost, not meaning. Each proposal
//! in a batch is applied exactly as if it had an entry of its own, in order
//! (`State::apply_proposal`), and each caller gets its own response; a
//! batch that fails fails every proposal in it the way a single write
//! would, with the same error.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{Command, CommandResponse, NodeError, NodeId, Proposal, Raft};

/// Most proposals in one entry (bounds the entry's size and apply time).
pub(super) const MAX_BATCH: usize = 256;
/// Entries proposed and not yet committed at once: while one is being
/// synced on the followers, the leader already appends the next.
const IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<CommandResponse, NodeError>>;

/// The leader's write queue; cheap to share.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<(Proposal, Reply)>,
}

impl Batcher {
    /// Starts the batching task for `raft`, packing at most `most`
    /// proposals per entry (1: no batching). It ends when the batcher drops.
    pub(super) fn start(raft: Raft, map_error: ErrorMap, most: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, map_error, most.max(1)));
        Self { tx }
    }

    /// Proposes through the next batch and returns this proposal's response.
    pub(super) async fn write(&self, proposal: Proposal) -> Result<CommandResponse, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((proposal, reply))
            .map_err(|_| NodeError::NotSent("the write queue has stopped".to_string()))?;
        answer.await.map_err(|_| {
            NodeError::Unavailable(
                "the write queue stopped; the write may or may not have been applied".to_string(),
            )
        })?
    }
}

/// How a failed `client_write` is told to its callers.
pub(super) type ErrorMap = fn(RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> NodeError;

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<(Proposal, Reply)>,
    map_error: ErrorMap,
    most: usize,
) {
    // Without batching, every write goes out at once, as openraft takes it.
    let in_flight = if most > 1 {
        IN_FLIGHT
    } else {
        Semaphore::MAX_PERMITS
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < most {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch, map_error).await;
            drop(slot);
        });
    }
}

async fn commit(raft: &Raft, mut batch: Vec<(Proposal, Reply)>, map_error: ErrorMap) {
    if batch.len() == 1 {
        if let Some((proposal, reply)) = batch.pop() {
            let result = raft.client_write(proposal).await;
            let _ = reply.send(result.map(|r| r.data).map_err(map_error));
        }
        return;
    }
    let (proposals, replies): (Vec<Proposal>, Vec<Reply>) = batch.into_iter().unzip();
    let count = proposals.len();
    let entry = Proposal::new(Command::Batch { proposals });
    let responses = match raft.client_write(entry).await {
        Ok(written) => match written.data {
            CommandResponse::Batch { responses } if responses.len() == count => Ok(responses),
            other => Err(NodeError::Internal(format!(
                "a batch of {count} was answered with {other:?}"
            ))),
        },
        Err(e) => Err(map_error(e)),
    };
    match responses {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_node::{create, one_voter};
    use crate::{CommandResponse, RaftNode};

    /// 300 concurrent creates: each caller gets its own answer; returns
    /// how many log entries they took.
    async fn create_300(node: &Arc<RaftNode>) -> u64 {
        let before = node.metrics().last_log_index.unwrap_or(0);
        let writes = (0..300).map(|i| {
            let node = node.clone();
            tokio::spawn(async move { (i, node.write(create(i)).await) })
        });
        for write in writes.collect::<Vec<_>>() {
            let (i, answer) = write.await.unwrap();
            match answer.unwrap() {
                CommandResponse::Sandbox { record } => assert_eq!(record.name, format!("s{i}")),
                other => panic!("write {i}: {other:?}"),
            }
        }
        assert_eq!(node.state().read().table.len(), 300);
        node.metrics().last_log_index.unwrap_or(0) - before
    }

    /// Concurrent writes on a real (one-voter) Raft: each caller gets its
    /// own answer, every write is applied once, and they shared entries.
    #[tokio::test]
    async fn concurrent_writes_share_log_entries_and_each_gets_its_answer() {
        let node = one_voter(true).await;
        let entries = create_300(&node).await;
        assert!(
            entries < 300,
            "300 writes took {entries} entries: no batching"
        );
        // A repeat is refused on its own, not with its batch.
        let again = node.write(create(7)).await;
        assert!(again.is_err(), "{again:?}");
        node.shutdown().await;
    }

    /// With group commit off (a cluster being upgraded from a release that
    /// cannot read `Command::Batch`), every write has an entry of its own.
    #[tokio::test]
    async fn without_group_commit_no_entry_carries_a_batch() {
        let node = one_voter(false).await;
        assert_eq!(create_300(&node).await, 300);
        node.shutdown().await;
    }
}
