//! `NodeActor`: one per agent session with this leader. Sends commands
//! (stamped with the leader's term) down the agent's stream, routes results
//! back to the sandbox actors that asked, and turns heartbeats into the
//! directory's inventory.
//!
//! Invariant kept here: a node's record is registered and marked Ready only
//! through Raft; liveness loss is decided by the supervisor, never by
//! deleting anything.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::agent_v1::{
    agent_message, command, control_message, AgentMessage, Command as AgentCommand, CommandResult,
    ControlMessage, Register, Registered,
};
use berth_raft::Command;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::sandbox_actor::SandboxMsg;
use super::LeaderCtx;
use crate::clock::now_ms;

pub type Outbound = mpsc::Sender<Result<ControlMessage, Status>>;

pub enum NodeMsg {
    /// A message from the agent.
    Inbound(AgentMessage),
    /// The agent's stream ended.
    Disconnected(String),
    /// Send `op` to the agent; the result goes to `reply_to`.
    Send {
        op: command::Op,
        reply_to: ActorRef<SandboxMsg>,
    },
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
    pending: HashMap<u64, ActorRef<SandboxMsg>>,
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
            if let Some(actor) = ractor::registry::where_is(sandbox_actor_name(name)) {
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
            if let Err(e) = self.ctx.node.write(command).await {
                tracing::warn!(node = %self.name, error = %e, "cannot mark node ready");
            }
        }
    }
}

/// Registry name of a sandbox's actor (unique per sandbox name).
pub fn sandbox_actor_name(sandbox: &str) -> String {
    format!("sandbox/{sandbox}")
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
        ctx.node
            .write(Command::RegisterNode {
                name: name.clone(),
                driver: register.driver.clone(),
                data_addr: register.data_addr.clone(),
                cpus: register.cpus,
                memory_bytes: register.memory_bytes,
                at_ms: now_ms(),
            })
            .await?;
        let registered = ControlMessage {
            msg: Some(control_message::Msg::Registered(Registered {
                leader_id: ctx.node.id(),
                term: ctx.term,
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
            pending: HashMap::new(),
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
                agent_message::Msg::Heartbeat(hb) => state.on_inventory(hb.inventory, hb.seq).await,
                agent_message::Msg::Result(result) => {
                    if let Some(observed) = result.observed.clone() {
                        state.ctx.directory.update_observed(&state.name, observed);
                    }
                    if result.refused {
                        tracing::warn!(node = %state.name, error = %result.error, "agent refused a command");
                    }
                    if let Some(reply_to) = state.pending.remove(&result.command_id) {
                        let _ = reply_to.send_message(SandboxMsg::CommandDone(Box::new(result)));
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
            NodeMsg::Send { op, reply_to } => {
                let command_id = state.next_id;
                state.next_id += 1;
                let message = ControlMessage {
                    msg: Some(control_message::Msg::Command(AgentCommand {
                        command_id,
                        term: state.ctx.term,
                        op: Some(op),
                    })),
                };
                match state.outbound.try_send(Ok(message)) {
                    Ok(()) => {
                        state.pending.insert(command_id, reply_to);
                    }
                    Err(e) => {
                        let _ = reply_to.send_message(SandboxMsg::CommandDone(Box::new(failed(
                            command_id,
                            format!("cannot reach node {}: {e}", state.name),
                        ))));
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
        for (id, reply_to) in state.pending.drain() {
            let _ = reply_to.send_message(SandboxMsg::CommandDone(Box::new(failed(
                id,
                format!("node {} disconnected", state.name),
            ))));
        }
        Ok(())
    }
}
