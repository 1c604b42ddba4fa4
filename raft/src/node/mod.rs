//! [`RaftNode`]: one control node's Raft instance, its storage, and the
//! operations the control plane performs through it. Any node accepts any
//! operation; writes and membership changes run on the leader (forwarded
//! when needed) and reads are linearizable through a read index.
//!
//! Invariant kept here: every operation is bounded by the node's request
//! timeout and fails `Unavailable` rather than hang (invariant 8).

mod batch;
mod compaction;
mod leader;
mod read_index;
#[cfg(test)]
mod test_node;
mod threads;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::raft_v1::raft_service_client::RaftServiceClient;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, RaftMetrics, SnapshotPolicy};
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub use leader::{LeaderOp, LeaderReply};

use crate::network::client::NetworkFactory;
use crate::store::{self, SharedState};
use crate::{Command, CommandResponse, NodeError, NodeId, Proposal, Raft};

/// How a node is set up.
#[derive(Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// `host:port` other nodes and clients reach this node at.
    pub addr: String,
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// Build a snapshot once at least this many writes were applied since
    /// the last one, and at least as many as there are records (see
    /// `compaction`).
    pub snapshot_every: u64,
    /// Log entries to keep behind a snapshot before purging.
    pub logs_to_keep: u64,
    /// Bound on every client-facing operation.
    pub request_timeout: Duration,
    /// The disk to keep Raft state on instead of RocksDB in `data_dir`
    /// (the simulator's in-memory disk with crash semantics).
    pub disk: Option<store::disk::SharedDisk>,
    /// As leader, pack concurrent writes into one log entry
    /// (`Command::Batch`). Off while a cluster is being upgraded from a
    /// release that cannot read such entries.
    pub group_commit: bool,
    /// Run Raft's tasks on threads of their own, so that a busy control
    /// plane does not delay heartbeats (see `threads`). Off only in the
    /// deterministic simulator.
    pub own_runtime: bool,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("snapshot_every", &self.snapshot_every)
            .field("logs_to_keep", &self.logs_to_keep)
            .field("request_timeout", &self.request_timeout)
            .field("disk", &self.disk.as_ref().map_or("rocksdb", |_| "given"))
            .field("group_commit", &self.group_commit)
            .field("own_runtime", &self.own_runtime)
            .finish()
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, addr: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            addr: addr.into(),
            data_dir: data_dir.into(),
            snapshot_every: 1000,
            logs_to_keep: 1000,
            request_timeout: Duration::from_secs(5),
            disk: None,
            group_commit: true,
            own_runtime: true,
        }
    }

    fn raft_config(&self) -> Result<Config, NodeError> {
        // Failover time after a leader dies is openraft's leader lease
        // (election_timeout_max: a follower that heard from a leader that
        // recently refuses to vote, so a live leader is never deposed by a
        // node that merely missed heartbeats) plus the node's random
        // election timeout: 300 + 200..300 ms. That is safe with 10,000
        // sandboxes only because Raft runs on threads of its own
        // (`threads`): a new leader starting its actors no longer delays
        // its heartbeats past the lease (measured, docs/performance.md).
        //
        // openraft 0.9 also uses the heartbeat interval as the timeout of
        // every AppendEntries. A new leader probes each follower's log
        // with up to `max_payload_entries` entries; with group commit an
        // entry can hold 256 creates, and 300 such entries did not fit in
        // 50 ms, so the probe timed out again and again and the first
        // commit of the term waited for seconds. 32 entries fit.
        let config = Config {
            cluster_name: "berth".to_string(),
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 300,
            install_snapshot_timeout: 2_000,
            // `compaction` decides, by writes and the size of the state.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            snapshot_max_chunk_size: 256 * 1024,
            max_payload_entries: 32,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::InvalidArgument(format!("raft config: {e}")))
    }
}

/// A running control node.
pub struct RaftNode {
    id: NodeId,
    addr: String,
    raft: Raft,
    state: SharedState,
    request_timeout: Duration,
    leader_clients: Mutex<HashMap<String, RaftServiceClient<Channel>>>,
    /// Group commit for the writes this node proposes as leader.
    writes: batch::Batcher,
    /// Read indexes, one quorum round for every caller queued before it.
    reads: read_index::ReadIndexes,
    /// Raft's own runtime, if it has one; last, so it is dropped last.
    _threads: threads::RaftThreads,
}

impl RaftNode {
    /// Opens the node's storage and starts its Raft instance. The node
    /// resumes from its data dir; a fresh one waits to be initialized or
    /// added to a cluster.
    pub async fn start(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        let opened = match &config.disk {
            Some(disk) => store::open_on(disk.clone()),
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    NodeError::Internal(format!("create {}: {e}", config.data_dir.display()))
                })?;
                store::open(&config.data_dir.join("raft"))
            }
        };
        let (log_store, state_machine) = opened.map_err(|e| NodeError::Internal(e.to_string()))?;
        let state = state_machine.shared();
        let raft_config = Arc::new(config.raft_config()?);
        let most = if config.group_commit {
            batch::MAX_BATCH
        } else {
            1
        };
        let threads = threads::RaftThreads::start(config.own_runtime, config.id)?;
        // The core, its replication and storage tasks and the write batcher
        // are spawned on Raft's threads.
        let id = config.id;
        let (compaction_state, snapshot_every) = (state.clone(), config.snapshot_every);
        let (raft, writes, reads) = threads
            .run(async move {
                let raft = Raft::new(id, raft_config, NetworkFactory, log_store, state_machine)
                    .await
                    .map_err(|e| NodeError::Internal(format!("start raft: {e}")))?;
                let writes = batch::Batcher::start(raft.clone(), leader::write_error, most);
                let reads = read_index::ReadIndexes::start(raft.clone());
                tokio::spawn(compaction::run(
                    raft.clone(),
                    compaction_state,
                    snapshot_every,
                ));
                Ok::<_, NodeError>((raft, writes, reads))
            })
            .await??;
        tokio::spawn(export_metrics(raft.metrics(), config.id));
        Ok(Arc::new(Self {
            id: config.id,
            addr: config.addr,
            raft,
            state,
            request_timeout: config.request_timeout,
            leader_clients: Mutex::new(HashMap::new()),
            writes,
            reads,
            _threads: threads,
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Raft instance, for the transport server.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The applied state; see [`RaftNode::read_barrier`] for fresh reads.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub async fn is_initialized(&self) -> Result<bool, NodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))
    }

    /// Initializes a new cluster with these voters. Safe to call on every
    /// initial member with the same set; a node that is already part of a
    /// cluster ignores it.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), NodeError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::InvalidArgument(format!(
                "initialize cluster: {e}"
            ))),
        }
    }

    /// Proposes a command and returns what applying it produced. A command
    /// the state machine refused comes back as the matching error.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, NodeError> {
        self.propose(Proposal::new(command)).await
    }

    /// Proposes a command with its term and request id (see [`Proposal`]).
    /// A proposal with a request id is retried until the deadline whatever
    /// went wrong (the state machine answers a repeat with the first
    /// response); one without is retried only when it surely did not run.
    pub async fn propose(&self, proposal: Proposal) -> Result<CommandResponse, NodeError> {
        match self.on_leader(LeaderOp::Write(proposal)).await? {
            LeaderReply::Written(response) => match *response {
                CommandResponse::Rejected { rejection } => Err(rejection.into()),
                response => Ok(response),
            },
            other => Err(NodeError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// For the leader's actors of `term`: confirms with a quorum that this
    /// node still leads in `term`, then waits until it has applied every
    /// entry committed so far. An actor calls it before it sends a command
    /// to an agent, so it never acts on state older than its own term's
    /// commit index, and a deposed or partitioned leader never acts.
    pub async fn leader_barrier(&self, term: u64) -> Result<(), NodeError> {
        let leading = |m: &RaftMetrics<NodeId, BasicNode>| {
            m.current_term == term && m.current_leader == Some(self.id)
        };
        if !leading(&self.metrics()) {
            return Err(NodeError::StaleTerm(format!(
                "node {} no longer leads in term {term}",
                self.id
            )));
        }
        let index = tokio::time::timeout(self.request_timeout, self.reads.get())
            .await
            .map_err(|_| NodeError::Unavailable("no quorum confirmed leadership".to_string()))?
            .ok_or_else(|| NodeError::Unavailable("the node is shutting down".to_string()))?
            .map_err(|e| NodeError::Unavailable(format!("leadership not confirmed: {e}")))?
            .map(|id| id.index)
            .unwrap_or(0);
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "leader barrier")
            .await
            .map_err(|e| NodeError::Unavailable(format!("not caught up: {e}")))?;
        if !leading(&self.metrics()) {
            return Err(NodeError::StaleTerm(format!(
                "node {} no longer leads in term {term}",
                self.id
            )));
        }
        Ok(())
    }

    /// Waits until this node's state machine reflects every write committed
    /// before the call (a linearizable read point confirmed by a quorum).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let started = tokio::time::Instant::now();
        let index = match self.on_leader(LeaderOp::ReadIndex).await? {
            LeaderReply::ReadIndex(index) => index,
            other => return Err(NodeError::Internal(format!("unexpected reply {other:?}"))),
        };
        let remaining = self.request_timeout.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(remaining.max(Duration::from_millis(10))))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Unavailable(format!("this node did not catch up in time: {e}")))
    }

    /// Adds a control node: as learner, then, once caught up, as voter.
    /// Returns once this node's own view includes the change.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), NodeError> {
        self.on_leader(LeaderOp::AddNode { id, addr }).await?;
        self.catch_up_after_membership_change().await;
        Ok(())
    }

    /// Removes a control node from voters and learners. Returns once this
    /// node's own view includes the change, so a status read right after
    /// (even through a follower) shows it.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), NodeError> {
        self.on_leader(LeaderOp::RemoveNode { id }).await?;
        self.catch_up_after_membership_change().await;
        Ok(())
    }

    /// The change is committed either way; waiting is only so this node's
    /// answer shows it. A node that removed itself may never see the final
    /// entry, so a failure here is logged, not returned.
    async fn catch_up_after_membership_change(&self) {
        if let Err(e) = self.read_barrier().await {
            tracing::warn!(error = %e, "membership changed; this node's view may lag");
        }
    }

    /// Stops Raft; storage is closed when the last handle drops.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Keep the Raft gauges (term, leader, log and applied index, apply lag)
/// current from openraft's metrics until the node stops.
async fn export_metrics(
    mut rx: tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    id: NodeId,
) {
    let m = berth_telemetry::metrics::get();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    loop {
        {
            let r = rx.borrow_and_update();
            let last = r.last_log_index.unwrap_or(0);
            let applied = r.last_applied.map_or(0, |l| l.index);
            m.raft_term.set(gauge(r.current_term));
            m.raft_is_leader
                .set(i64::from(r.current_leader == Some(id)));
            m.raft_last_log_index.set(gauge(last));
            m.raft_applied_index.set(gauge(applied));
            m.raft_apply_lag.set(gauge(last.saturating_sub(applied)));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
