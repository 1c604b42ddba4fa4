//! `NodeActor`: one per agent session with this leader. Sends commands
//! (stamped with the leader's term) down the agent's stream, routes results
//! back to the sandbox actors that asked, and turns heartbeats into the
//! directory's inventory.
//!
//! Invariant kept here: a node's record is registered and marked Ready only
//! through Raft; liveness loss is decided by the supervisor, never by
//! deleting anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_proto::agent_v1::{
    agent_message, command, control_message, AgentMessage, Command as AgentCommand, CommandResult,
    ControlMessage, Refused, Register, Registered,
};
use berth_raft::{Command, NodeError};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::sandbox_actor::SandboxMsg;
use super::supervisor::SupervisorMsg;
use super::LeaderCtx;
use crate::clock::now_ms;

pub type Outbound = mpsc::Sender<Result<ControlMessage, Status>>;

pub enum NodeMsg {
    /// A message from the agent.
    Inbound(AgentMessage),
    /// The agent's stream ended.
    Disconnected(String),
    /// Send `op` to the agent; the result goes to `reply_to`. `trace` is
    /// the sender's W3C traceparent (may be empty).
    Send {
        op: command::Op,
        reply_to: ReplyTo,
        trace: String,
    },
}

/// Who gets a command's result.
#[derive(Clone)]
pub enum ReplyTo {
    /// The sandbox actor that sent it.
    Sandbox(ActorRef<SandboxMsg>),
    /// The supervisor, about removing this kept volume.
    Volume(ActorRef<SupervisorMsg>, String),
}

impl From<ActorRef<SandboxMsg>> for ReplyTo {
    fn from(actor: ActorRef<SandboxMsg>) -> Self {
        ReplyTo::Sandbox(actor)
    }
}

impl ReplyTo {
    fn deliver(&self, result: CommandResult) {
        // The asker may be gone (stopped meanwhile); nothing to do then.
        match self {
            ReplyTo::Sandbox(actor) => {
                let _ = actor.send_message(SandboxMsg::CommandDone(Box::new(result)));
            }
            ReplyTo::Volume(actor, volume) => {
                let _ = actor.send_message(SupervisorMsg::VolumeRemoved {
                    volume: volume.clone(),
                    result: Box::new(result),
                });
            }
        }
    }
}

pub struct NodeActor;

pub struct NodeArgs {
    pub ctx: Arc<LeaderCtx>,
    pub session: u64,
    pub register: Register,
    pub outbound: Outbound,
    pub inbound: Streaming<AgentMessage>,
}

pub struct NodeState {
    ctx: Arc<LeaderCtx>,
    name: String,
    session: u64,
    outbound: Outbound,
    /// Commands in flight: who asked, and the uid of the sandbox it is for.
    pending: BTreeMap<u64, (ReplyTo, String)>,
    next_id: u64,
}

fn failed(command_id: u64, error: String) -> CommandResult {
    CommandResult {
        command_id,
        ok: false,
        refused: false,
        error,
        observed: None,
    }
}

impl NodeState {
    fn nudge(&self, sandboxes: &[String]) {
        for name in sandboxes {
            let actor_name = sandbox_actor_name(self.ctx.node.id(), self.ctx.term, name);
            if let Some(actor) = ractor::registry::where_is(actor_name) {
                let _ = actor.send_message(SandboxMsg::Nudge);
            }
        }
    }

    async fn on_inventory(&self, inventory: Vec<berth_proto::agent_v1::Observed>, seq: u64) {
        let changed = self
            .ctx
            .directory
            .set_inventory(&self.name, self.session, inventory, seq);
        self.nudge(&changed);
        self.mark_ready().await;
    }

    /// A delta heartbeat: only what changed since the session's previous
    /// listing (see `Directory::apply_delta`).
    async fn on_delta(
        &self,
        changed: Vec<berth_proto::agent_v1::Observed>,
        gone: Vec<String>,
        seq: u64,
    ) {
        let applied = self
            .ctx
            .directory
            .apply_delta(&self.name, self.session, changed, gone, seq);
        if let Some(changed) = applied {
            self.nudge(&changed);
            self.mark_ready().await;
        }
    }

    /// A heartbeat that says nothing changed: the agent is alive and its
    /// inventory is the one the directory has.
    async fn on_unchanged(&self) {
        if self.ctx.directory.heard(&self.name, self.session) {
            self.mark_ready().await;
        }
    }

    /// Marks the node Ready through Raft if its record says it is not.
    async fn mark_ready(&self) {
        let ready = self
            .ctx
            .node
            .state()
            .read()
            .table
            .node(&self.name)
            .map(|n| n.ready);
        if ready == Some(false) {
            let command = Command::SetNodeReady {
                name: self.name.clone(),
                ready: true,
                message: "heartbeating".to_string(),
                at_ms: now_ms(),
            };
            if let Err(e) = self.ctx.write(command).await {
                tracing::warn!(node = %self.name, error = %e, "cannot mark node ready");
            }
        }
    }
}

/// A session heard from this recently is live.
const LIVE_SESSION: std::time::Duration = std::time::Duration::from_secs(3);

/// Tells a refused agent why, and gives the error that ends its actor.
async fn refuse(
    outbound: &Outbound,
    node: &str,
    instance: &str,
    reason: String,
) -> ActorProcessingErr {
    tracing::warn!(%node, %instance, %reason, "agent session refused");
    let refused = ControlMessage {
        msg: Some(control_message::Msg::Refused(Refused {
            reason: reason.clone(),
        })),
    };
    let _ = outbound.send(Ok(refused)).await;
    ActorProcessingErr::from(reason)
}

/// Registry name of a sandbox's actor: unique per sandbox name within one
/// leadership term of one node, so a tree that is still winding down (or
/// whose runtime died with it, as a crashed node in the simulator) never
/// holds the name the next tree needs.
pub fn sandbox_actor_name(node: u64, term: u64, sandbox: &str) -> String {
    format!("sandbox/{sandbox}@{node}/{term}")
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let NodeArgs {
            ctx,
            session,
            register,
            outbound,
            mut inbound,
        } = args;
        let name = register.node_name.clone();
        // A session that still heartbeats is never replaced: a second agent
        // under the same name (even with a cloned instance id) is refused.
        if let Some(silent) = ctx
            .directory
            .silent_for(&name)
            .filter(|s| *s < LIVE_SESSION)
        {
            let reason = format!(
                "node {name:?} already has a live agent session (last heard {} ms ago); two agents cannot share a node name (a cloned data dir, or the same --node-name on two hosts): give each machine its own data dir and node name",
                silent.as_millis()
            );
            return Err(refuse(&outbound, &name, &register.instance_id, reason).await);
        }
        let registration = ctx
            .write(Command::RegisterNode {
                name: name.clone(),
                driver: register.driver.clone(),
                data_addr: register.data_addr.clone(),
                cpus: register.cpus,
                memory_bytes: register.memory_bytes,
                at_ms: now_ms(),
                instance_id: register.instance_id.clone(),
            })
            .await;
        match registration {
            // Another instance under a known name: tell the agent why.
            Err(NodeError::FailedPrecondition(reason)) => {
                return Err(refuse(&outbound, &name, &register.instance_id, reason).await)
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let registered = ControlMessage {
            msg: Some(control_message::Msg::Registered(Registered {
                leader_id: ctx.node.id(),
                term: ctx.term,
                accepts_unchanged: true,
                accepts_delta: true,
            })),
        };
        outbound.send(Ok(registered)).await?;
        if let Some(old) = ctx.directory.connect(&name, session, myself.clone()) {
            old.stop(Some("replaced by a newer session".to_string()));
        }
        let reader = myself.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.next().await {
                    Some(Ok(msg)) => {
                        if reader.send_message(NodeMsg::Inbound(msg)).is_err() {
                            break "node actor stopped".to_string();
                        }
                    }
                    Some(Err(status)) => break format!("stream error: {}", status.message()),
                    None => break "stream closed".to_string(),
                }
            };
            let _ = reader.send_message(NodeMsg::Disconnected(reason));
        });
        tracing::info!(node = %name, session, term = ctx.term, "agent connected");
        let state = NodeState {
            ctx,
            name,
            session,
            outbound,
            pending: BTreeMap::new(),
            next_id: 1,
        };
        state
            .on_inventory(register.inventory, register.inventory_seq)
            .await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Inbound(AgentMessage { msg: Some(msg) }) => match msg {
                agent_message::Msg::Heartbeat(hb) if hb.delta => {
                    state.on_delta(hb.inventory, hb.gone, hb.seq).await
                }
                agent_message::Msg::Heartbeat(hb) if hb.unchanged => state.on_unchanged().await,
                agent_message::Msg::Heartbeat(hb) => state.on_inventory(hb.inventory, hb.seq).await,
                agent_message::Msg::Result(result) => {
                    if result.refused {
                        tracing::warn!(node = %state.name, error = %result.error, "agent refused a command");
                    }
                    if let Some((reply_to, uid)) = state.pending.remove(&result.command_id) {
                        if let Some(observed) = result.observed.clone() {
                            state
                                .ctx
                                .directory
                                .update_observed(&state.name, &uid, observed);
                        }
                        reply_to.deliver(result);
                    }
                }
                agent_message::Msg::Register(_) => {
                    tracing::warn!(node = %state.name, "duplicate Register ignored");
                }
            },
            NodeMsg::Inbound(AgentMessage { msg: None }) => {}
            NodeMsg::Disconnected(reason) => {
                tracing::info!(node = %state.name, %reason, "agent disconnected");
                myself.stop(Some(reason));
            }
            NodeMsg::Send {
                op,
                reply_to,
                trace,
            } => {
                let uid = match &op {
                    command::Op::Ensure(e) => e.uid.clone(),
                    command::Op::Stop(s) => s.uid.clone(),
                    command::Op::Remove(r) => r.uid.clone(),
                    command::Op::Pull(_) => String::new(),
                };
                let command_id = state.next_id;
                state.next_id += 1;
                let message = ControlMessage {
                    msg: Some(control_message::Msg::Command(AgentCommand {
                        command_id,
                        term: if crate::chaos::broken("stale-stamp") {
                            state.ctx.term.saturating_sub(1)
                        } else {
                            state.ctx.term
                        },
                        op: Some(op),
                        traceparent: trace,
                    })),
                };
                berth_proto::chaos::failpoint("leader-before-send");
                match state.outbound.try_send(Ok(message)) {
                    Ok(()) => {
                        state.pending.insert(command_id, (reply_to, uid));
                    }
                    Err(e) => {
                        reply_to.deliver(failed(
                            command_id,
                            format!("cannot reach node {}: {e}", state.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.directory.disconnect(&state.name, state.session);
        for (id, (reply_to, _)) in std::mem::take(&mut state.pending) {
            reply_to.deliver(failed(id, format!("node {} disconnected", state.name)));
        }
        Ok(())
    }
}
