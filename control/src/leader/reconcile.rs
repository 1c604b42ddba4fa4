//! What a sandbox needs next, as data: a pure function from the replicated
//! record and what its node reports to a status to record and at most one
//! action. The `SandboxActor` only carries the plan out.
//!
//! Invariants kept here: a placed sandbox is only ever acted on through its
//! own node (4, 5); deleting asks the node to remove the container (and the
//! volume unless kept) before the record is forgotten, and the record is
//! forgotten only after the node answered such a Remove: the agent runs a
//! sandbox's commands in order, so that answer comes after any command
//! still in flight (from this leader or a deposed one) that could create
//! the container or volume again; nothing is decided from a node whose
//! state is unknown.

use berth_proto::agent_v1::{ContainerState, Observed};
use berth_raft::model::NO_NODE_MESSAGE;
use berth_raft::{Desired, Phase, SandboxRecord};

/// How the sandbox's node looks from the leader.
#[derive(Debug, Clone, Copy)]
pub enum NodeLink<'a> {
    /// Not connected to this leader (or no inventory yet). `ready` is the
    /// node's replicated liveness: still Ready means a new leader is
    /// waiting for the agent to reconnect, and nothing is reported yet.
    Disconnected { ready: bool },
    /// Connected; what it reports for this sandbox (None: nothing at all).
    Connected(Option<&'a Observed>),
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub record: &'a SandboxRecord,
    pub link: NodeLink<'a>,
    /// Ready nodes with how many sandboxes each holds (for placement).
    pub ready_nodes: &'a [(String, usize)],
    /// A command for this sandbox is in flight.
    pub inflight: bool,
    /// The retry backoff has elapsed.
    pub may_act: bool,
    /// Why the last command failed, if it did.
    pub last_error: Option<&'a str>,
    /// The node has answered a Remove of this sandbox (sent by this actor)
    /// with success.
    pub removed: bool,
}

/// A command for the sandbox's node agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    Ensure,
    Stop,
    Remove { keep_volume: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Commit the placement (before anything runs there).
    Schedule(String),
    /// Send a command to the node.
    Send(AgentOp),
    /// The node has removed everything: drop the record.
    Forget,
}

/// Status to record: phase, message and container id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    pub message: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub status: Option<Status>,
    pub action: Action,
}

fn plan(status: Option<Status>, action: Action) -> Plan {
    Plan { status, action }
}

fn status(phase: Phase, message: impl Into<String>, container_id: &str) -> Option<Status> {
    Some(Status {
        phase,
        message: message.into(),
        container_id: container_id.to_string(),
    })
}

/// The least loaded ready node (ties broken by name, so the choice is
/// reproducible).
fn pick_node(ready: &[(String, usize)]) -> Option<&str> {
    ready
        .iter()
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
        .map(|(name, _)| name.as_str())
}

/// Decides the next step for one sandbox.
pub fn decide(i: Inputs<'_>) -> Plan {
    let r = i.record;
    let cid = r.container_id.as_str();
    let Some(node) = r.node.as_deref() else {
        return match r.desired {
            Desired::Deleted { .. } => plan(None, Action::Forget),
            Desired::Stopped => plan(
                status(Phase::Stopped, "stopped (never placed)", ""),
                Action::None,
            ),
            Desired::Running => match pick_node(i.ready_nodes) {
                Some(best) => plan(None, Action::Schedule(best.to_string())),
                None => plan(status(Phase::Pending, NO_NODE_MESSAGE, ""), Action::None),
            },
        };
    };
    let observed = match i.link {
        NodeLink::Disconnected { ready: true } => return plan(None, Action::None),
        NodeLink::Disconnected { ready: false } => {
            let phase = if matches!(r.desired, Desired::Deleted { .. }) {
                Phase::Deleting
            } else {
                r.phase
            };
            return plan(
                status(phase, format!("node {node} is NotReady"), cid),
                Action::None,
            );
        }
        NodeLink::Connected(o) => o.filter(|o| o.uid == r.uid),
    };
    let state = observed.map_or(ContainerState::Absent, |o| o.state());
    let running =
        state == ContainerState::Running && observed.is_some_and(|o| o.revision == r.revision);
    let observed_cid = observed.map_or("", |o| o.container_id.as_str());
    let act = |op: AgentOp| {
        if i.inflight || !i.may_act {
            Action::None
        } else {
            Action::Send(op)
        }
    };

    match r.desired {
        Desired::Deleted { keep_volume } => {
            let volume_left = observed.is_some_and(|o| o.volume_present) && !keep_volume;
            if state == ContainerState::Absent && !volume_left && i.removed {
                return plan(None, Action::Forget);
            }
            let message = match i.last_error {
                Some(e) => format!("deleting on node {node}: {e}"),
                None => format!("deleting on node {node}"),
            };
            plan(
                status(Phase::Deleting, message, observed_cid),
                act(AgentOp::Remove { keep_volume }),
            )
        }
        Desired::Running if running => plan(
            status(
                Phase::Running,
                format!("running on node {node}"),
                observed_cid,
            ),
            Action::None,
        ),
        Desired::Running => {
            let st = match (i.last_error, state) {
                (Some(e), _) => status(Phase::Failed, e, observed_cid),
                (None, ContainerState::Exited) => {
                    let code = observed.map_or(0, |o| o.exit_code);
                    status(
                        Phase::Starting,
                        format!("container exited with code {code}; restarting on node {node}"),
                        observed_cid,
                    )
                }
                (None, _) => status(
                    Phase::Starting,
                    format!("starting on node {node}"),
                    observed_cid,
                ),
            };
            plan(st, act(AgentOp::Ensure))
        }
        Desired::Stopped if state == ContainerState::Running => plan(
            status(r.phase, format!("stopping on node {node}"), observed_cid),
            act(AgentOp::Stop),
        ),
        Desired::Stopped => plan(
            status(
                Phase::Stopped,
                format!("stopped on node {node}"),
                observed_cid,
            ),
            Action::None,
        ),
    }
}

#[cfg(test)]
mod tests;
