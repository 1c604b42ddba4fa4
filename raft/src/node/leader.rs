//! Operations that must run on the leader, and how a node gets them there:
//! run locally when this node leads, otherwise forward to the leader over
//! the internal `Forward` RPC, following leadership changes until the
//! request deadline.
//!
//! Invariant kept here: a write is never applied twice because it was
//! retried. A write with a request id may be retried whatever went wrong
//! (the state machine answers a repeated id with the first response); any
//! other operation is retried only when it surely did not run (this node or
//! the target was not the leader, or the leader could not be connected
//! to). Otherwise the caller gets `Unavailable` saying it may have run.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_proto::raft_v1::RaftPayload;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use super::RaftNode;
use crate::network::peer_client;
use crate::{codec, CommandResponse, NodeError, NodeId, Proposal};

/// An operation that runs on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Proposal),
    ReadIndex,
    AddNode { id: NodeId, addr: String },
    RemoveNode { id: NodeId },
}

/// What a leader operation returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Written(Box<CommandResponse>),
    ReadIndex(u64),
    MembershipChanged,
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Adding a learner waits for it to catch up, which can take longer.
const MEMBERSHIP_BUDGET: Duration = Duration::from_secs(30);

/// A leader that has not heard from a quorum for this long refuses writes.
const QUORUM_CONTACT_MS: u64 = 1_000;

enum Attempt {
    Done(Result<LeaderReply, NodeError>),
    Retry(NodeError),
}

impl LeaderOp {
    fn budget(&self, request_timeout: Duration) -> Duration {
        match self {
            LeaderOp::AddNode { .. } | LeaderOp::RemoveNode { .. } => {
                request_timeout.max(MEMBERSHIP_BUDGET)
            }
            LeaderOp::Write(_) | LeaderOp::ReadIndex => request_timeout,
        }
    }

    /// Safe to run again after an outcome that is not known.
    fn repeatable(&self) -> bool {
        match self {
            LeaderOp::Write(p) => p.request_id.is_some(),
            LeaderOp::ReadIndex => true,
            LeaderOp::AddNode { .. } | LeaderOp::RemoveNode { .. } => false,
        }
    }
}

fn leader_error<E: std::fmt::Display>(
    e: RaftError<NodeId, E>,
    forward: impl Fn(&E) -> Option<NodeId>,
) -> NodeError {
    match e {
        RaftError::APIError(api) => match forward(&api) {
            Some(leader) => NodeError::NotLeader {
                leader: Some(leader),
            },
            None => NodeError::FailedPrecondition(api.to_string()),
        },
        RaftError::Fatal(fatal) => {
            NodeError::Unavailable(format!("raft stopped on this node: {fatal}"))
        }
    }
}

pub(super) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> NodeError {
    leader_error(e, |api| match api {
        ClientWriteError::ForwardToLeader(f) => Some(f.leader_id.unwrap_or_default()),
        ClientWriteError::ChangeMembershipError(_) => None,
    })
}

impl RaftNode {
    /// Runs `op` on the leader, wherever it is, within the op's budget.
    pub(super) async fn on_leader(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        let budget = op.budget(self.request_timeout);
        let deadline = Instant::now() + budget;
        let mut last = NodeError::Unavailable("no leader elected".to_string());
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(NodeError::Unavailable(format!(
                    "no leader with a quorum reachable within {budget:?} ({last})"
                )));
            }
            let attempt = match self.raft.current_leader().await {
                None => Attempt::Retry(NodeError::Unavailable("no leader elected".to_string())),
                Some(leader) => {
                    let result = if leader == self.id {
                        timeout(remaining, self.execute_local(op.clone())).await
                    } else {
                        timeout(remaining, self.forward(leader, &op, remaining)).await
                    };
                    match result {
                        // Refused before anything was proposed: safe to retry.
                        Ok(Err(e @ (NodeError::NotLeader { .. } | NodeError::NotSent(_)))) => {
                            Attempt::Retry(e)
                        }
                        // The outcome is unknown: retried only when a repeat
                        // is answered, not applied, again.
                        Ok(Err(e @ NodeError::Unavailable(_))) if op.repeatable() => {
                            Attempt::Retry(e)
                        }
                        Ok(result) => Attempt::Done(result),
                        Err(_) => Attempt::Done(Err(quorum_timeout(budget))),
                    }
                }
            };
            match attempt {
                Attempt::Done(result) => return result,
                Attempt::Retry(e) => {
                    last = e;
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                }
            }
        }
    }

    /// Runs `op` here, where this node believes it leads. Used by the
    /// `Forward` RPC handler too, so forwarding never chains.
    pub async fn execute_local(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        match op {
            LeaderOp::Write(proposal) => {
                self.check_quorum_contact()?;
                let response = self.writes.write(proposal).await?;
                Ok(LeaderReply::Written(Box::new(response)))
            }
            LeaderOp::ReadIndex => {
                let answer = self.reads.get().await.ok_or_else(|| {
                    NodeError::Unavailable("the node is shutting down".to_string())
                })?;
                let read_log_id = answer.map_err(|e| match e {
                    RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => {
                        NodeError::Unavailable(format!(
                            "the leader (node {}) cannot reach a quorum to confirm a read",
                            self.id
                        ))
                    }
                    e => leader_error(e, |api| match api {
                        CheckIsLeaderError::ForwardToLeader(f) => {
                            Some(f.leader_id.unwrap_or_default())
                        }
                        CheckIsLeaderError::QuorumNotEnough(_) => None,
                    }),
                })?;
                Ok(LeaderReply::ReadIndex(
                    read_log_id.map(|id| id.index).unwrap_or(0),
                ))
            }
            LeaderOp::AddNode { id, addr } => self.add_node_local(id, addr).await,
            LeaderOp::RemoveNode { id } => self.remove_node_local(id).await,
        }
    }

    /// Refuses a write up front when this leader has not heard from a
    /// quorum lately: proposing it would only time out, and the entry could
    /// still commit later, after the client was told it failed.
    fn check_quorum_contact(&self) -> Result<(), NodeError> {
        let metrics = self.metrics();
        match metrics.millis_since_quorum_ack {
            Some(ms) if ms > QUORUM_CONTACT_MS => Err(NodeError::NotSent(format!(
                "the leader (node {}) has not heard from a quorum for {ms} ms",
                self.id
            ))),
            _ => Ok(()),
        }
    }

    async fn add_node_local(&self, id: NodeId, addr: String) -> Result<LeaderReply, NodeError> {
        let membership = self.metrics().membership_config.membership().clone();
        if membership.voter_ids().any(|v| v == id) {
            return Err(NodeError::AlreadyExists(format!(
                "node {id} is already a voter"
            )));
        }
        if let Some(existing) = membership.get_node(&id) {
            if existing.addr != addr {
                return Err(NodeError::AlreadyExists(format!(
                    "node {id} is already a learner at {}",
                    existing.addr
                )));
            }
        }
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(write_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(LeaderReply::MembershipChanged)
    }

    async fn remove_node_local(&self, id: NodeId) -> Result<LeaderReply, NodeError> {
        let membership = self.metrics().membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(NodeError::FailedPrecondition(format!(
                    "node {id} is the last voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(NodeError::NotFound(format!(
                "node {id} is not a member of the cluster"
            )));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(LeaderReply::MembershipChanged)
    }

    async fn forward(
        &self,
        leader: NodeId,
        op: &LeaderOp,
        remaining: Duration,
    ) -> Result<LeaderReply, NodeError> {
        let addr = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or(NodeError::NotLeader { leader: None })?;
        let mut client = {
            let mut clients = self.leader_clients.lock().await;
            match clients.get(&addr) {
                Some(c) => c.clone(),
                None => {
                    let c = peer_client(&addr)?;
                    clients.insert(addr.clone(), c.clone());
                    c
                }
            }
        };
        let data = codec::encode(op).map_err(|e| NodeError::Internal(e.to_string()))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(remaining);
        berth_telemetry::propagate::inject_metadata(request.metadata_mut());
        let reply = client.forward(request).await.map_err(|status| {
            if connection_refused(&status) {
                // Refused at TCP connect: nothing was sent.
                NodeError::NotSent(format!(
                    "leader {leader} at {addr} unreachable: {}",
                    status.message()
                ))
            } else {
                NodeError::Unavailable(format!(
                    "leader {leader} at {addr} did not answer ({}); the operation may or may not have been applied",
                    status.message()
                ))
            }
        })?;
        codec::decode::<Result<LeaderReply, NodeError>>(&reply.into_inner().data)
            .map_err(|e| NodeError::Internal(format!("bad reply from leader {leader}: {e}")))?
    }
}

/// The call failed because the TCP connection was refused, so the request
/// never left this node.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn quorum_timeout(budget: Duration) -> NodeError {
    NodeError::Unavailable(format!(
        "timed out after {budget:?} waiting for a quorum; the operation may or may not have been applied"
    ))
}
