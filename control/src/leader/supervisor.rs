//! `Supervisor`: the root of one leadership term's actor tree. Keeps one
//! `SandboxActor` per sandbox in the state machine (spawning and stopping
//! them as records come and go), one `NodeActor` per agent session, and
//! marks nodes NotReady when they stop reporting.
//!
//! Invariants kept here: a failed child is restarted with exponential
//! backoff up to a limit, never in a hot loop; a node that stops reporting
//! is marked NotReady through Raft and nothing of it is deleted or moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent_v1::{AgentMessage, Register};
use berth_raft::Command;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tonic::Streaming;

use super::node_actor::{sandbox_actor_name, NodeActor, NodeArgs, Outbound};
use super::sandbox_actor::{SandboxActor, SandboxArgs};
use super::LeaderCtx;
use crate::clock::now_ms;

const TICK: Duration = Duration::from_millis(500);
/// A node silent this long is marked NotReady.
const NODE_GRACE: Duration = Duration::from_secs(5);
/// Restarts of one child before the supervisor gives up on it.
const MAX_RESTARTS: u32 = 10;

static SESSIONS: AtomicU64 = AtomicU64::new(1);

pub enum SupervisorMsg {
    Tick,
    AgentConnected(Box<AgentSession>),
}

/// A new agent session, handed over by the `AgentControl` service.
pub struct AgentSession {
    pub register: Register,
    pub outbound: Outbound,
    pub inbound: Streaming<AgentMessage>,
}

pub struct Supervisor;

struct Restarts {
    count: u32,
    not_before: Instant,
}

pub struct SupervisorState {
    ctx: Arc<LeaderCtx>,
    /// Sandbox name -> (uid, actor).
    sandboxes: HashMap<String, (String, ActorRef<super::sandbox_actor::SandboxMsg>)>,
    restarts: HashMap<String, Restarts>,
    started: Instant,
}

impl SupervisorState {
    async fn sync_sandboxes(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let wanted: HashMap<String, String> = {
            let state = self.ctx.node.state().read();
            state
                .table
                .iter()
                .map(|r| (r.name.clone(), r.uid.clone()))
                .collect()
        };
        self.sandboxes.retain(|name, (uid, actor)| {
            let keep = wanted.get(name) == Some(uid);
            if !keep {
                actor.stop(Some("sandbox record gone".to_string()));
            }
            keep
        });
        for (name, uid) in wanted {
            if self.sandboxes.contains_key(&name) {
                continue;
            }
            if let Some(r) = self.restarts.get(&name) {
                if r.count > MAX_RESTARTS || Instant::now() < r.not_before {
                    continue;
                }
            }
            let args = SandboxArgs {
                ctx: self.ctx.clone(),
                name: name.clone(),
                uid: uid.clone(),
            };
            match Actor::spawn_linked(
                Some(sandbox_actor_name(&name)),
                SandboxActor,
                args,
                myself.get_cell(),
            )
            .await
            {
                Ok((actor, _)) => {
                    self.sandboxes.insert(name, (uid, actor));
                }
                Err(e) => {
                    tracing::debug!(sandbox = %name, error = %e, "sandbox actor not started yet")
                }
            }
        }
    }

    /// Marks nodes NotReady that have not reported for the grace period.
    async fn check_nodes(&self) {
        if self.started.elapsed() < NODE_GRACE {
            return;
        }
        let ready: Vec<String> = {
            let state = self.ctx.node.state().read();
            state
                .table
                .nodes()
                .filter(|n| n.ready)
                .map(|n| n.name.clone())
                .collect()
        };
        for name in ready {
            let silent = self.ctx.directory.silent_for(&name);
            if silent.is_some_and(|s| s < NODE_GRACE) {
                continue;
            }
            tracing::warn!(node = %name, "node stopped reporting; marking it NotReady");
            let command = Command::SetNodeReady {
                name: name.clone(),
                ready: false,
                message: format!("no heartbeat for {}s", NODE_GRACE.as_secs()),
                at_ms: now_ms(),
            };
            if let Err(e) = self.ctx.node.write(command).await {
                tracing::warn!(node = %name, error = %e, "cannot mark node NotReady");
            }
        }
    }

    fn child_ended(&mut self, cell: &ActorCell, failed: bool) {
        let ended = self
            .sandboxes
            .iter()
            .find(|(_, (_, a))| a.get_id() == cell.get_id())
            .map(|(name, _)| name.clone());
        let Some(name) = ended else {
            return;
        };
        self.sandboxes.remove(&name);
        if failed {
            let r = self.restarts.entry(name.clone()).or_insert(Restarts {
                count: 0,
                not_before: Instant::now(),
            });
            r.count += 1;
            let delay = Duration::from_millis(200u64 << r.count.min(8));
            r.not_before = Instant::now() + delay;
            if r.count > MAX_RESTARTS {
                tracing::error!(sandbox = %name, "sandbox actor failed {MAX_RESTARTS} times; not restarting it until the next leadership term");
            } else {
                tracing::warn!(sandbox = %name, restart_in = ?delay, "sandbox actor failed; restarting");
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<LeaderCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        ctx: Arc<LeaderCtx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        myself.send_interval(TICK, || SupervisorMsg::Tick);
        myself.send_message(SupervisorMsg::Tick)?;
        Ok(SupervisorState {
            ctx,
            sandboxes: HashMap::new(),
            restarts: HashMap::new(),
            started: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Tick => {
                state.sync_sandboxes(&myself).await;
                state
                    .ctx
                    .actors
                    .store(state.sandboxes.len(), Ordering::Relaxed);
                state.check_nodes().await;
            }
            SupervisorMsg::AgentConnected(session) => {
                let AgentSession {
                    register,
                    outbound,
                    inbound,
                } = *session;
                let args = NodeArgs {
                    ctx: state.ctx.clone(),
                    session: SESSIONS.fetch_add(1, Ordering::Relaxed),
                    register,
                    outbound,
                    inbound,
                };
                if let Err(e) = Actor::spawn_linked(None, NodeActor, args, myself.get_cell()).await
                {
                    tracing::warn!(error = %e, "cannot start node actor");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => state.child_ended(&cell, false),
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::warn!(actor = ?cell.get_name(), %error, "child actor failed");
                state.child_ended(&cell, true);
            }
            _ => {}
        }
        Ok(())
    }
}
