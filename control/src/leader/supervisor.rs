//! `Supervisor`: the root of one leadership term's actor tree. Keeps one
//! `SandboxActor` per sandbox in the state machine (spawning and stopping
//! them as records come and go), one `NodeActor` per agent session, marks
//! nodes NotReady when they stop reporting, and has kept volumes that an
//! operator deleted removed by their node (then forgets them).
//!
//! Invariants kept here: a failed child (a panic: actors do not fail on
//! expected errors) is restarted with exponential backoff capped at 30 s,
//! never in a hot loop and never given up on: no sandbox is abandoned for
//! the rest of a term. A child that then runs for a while has its restart
//! count reset. A node that stops reporting is marked NotReady through Raft
//! and nothing of it is deleted or moved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent_v1::{command, AgentMessage, CommandResult, Register, Remove};
use berth_raft::model::KeptVolume;
use berth_raft::store::Touched;
use berth_raft::Command;
use futures::StreamExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tonic::Streaming;

use super::node_actor::{sandbox_actor_name, NodeActor, NodeArgs, NodeMsg, Outbound, ReplyTo};
use super::sandbox_actor::{SandboxActor, SandboxArgs, SandboxMsg};
use super::LeaderCtx;
use crate::clock::now_ms;

const TICK: Duration = Duration::from_millis(500);
/// Every this many ticks (10 s) every record is compared with the running
/// actors, as a safety net under the change feed.
const RESYNC_TICKS: u64 = 20;
/// A node silent this long is marked NotReady.
const NODE_GRACE: Duration = Duration::from_secs(5);
/// Longest pause before restarting a failed child.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A child running this long since its last restart has its count reset.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// Sandbox actors started concurrently.
const SPAWN_AT_ONCE: usize = 256;

pub enum SupervisorMsg {
    Tick,
    /// An applied batch touched these records (the state machine's feed).
    Touched(Arc<Touched>),
    AgentConnected(Box<AgentSession>),
    /// The result of removing a kept volume on its node.
    VolumeRemoved {
        volume: String,
        result: Box<CommandResult>,
    },
}

/// A volume removal unanswered this long is sent again.
const VOLUME_RETRY: Duration = Duration::from_secs(30);

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

/// The pause before the `count`-th restart: 200 ms doubling, capped.
fn restart_delay(count: u32) -> Duration {
    Duration::from_millis(200u64 << count.min(8)).min(MAX_RESTART_DELAY)
}

pub struct SupervisorState {
    ctx: Arc<LeaderCtx>,
    /// Sandbox name -> (uid, actor).
    sandboxes: BTreeMap<String, (String, ActorRef<SandboxMsg>)>,
    /// Sandboxes whose actor could not start yet (tried every tick).
    to_spawn: BTreeSet<String>,
    ticks: u64,
    /// The directory's topology when actors were last nudged for it.
    topology: u64,
    /// Sandboxes changed since the phase gauges were last counted.
    phases_dirty: bool,
    restarts: BTreeMap<String, Restarts>,
    started: Instant,
    /// Kept volumes whose removal was sent, and when.
    volumes_inflight: BTreeMap<String, Instant>,
    /// Numbers this tree's agent sessions (the directory is this tree's).
    sessions: u64,
    /// Whether this leadership's failover time was recorded (the first
    /// tick at which every sandbox had its actor).
    failover_recorded: bool,
}

impl SupervisorState {
    /// The uid of sandbox `name`'s record, if it exists.
    fn record_uid(&self, name: &str) -> Option<String> {
        let state = self.ctx.node.state().read();
        state.table.get(name).map(|r| r.uid.clone())
    }

    /// Brings sandbox `name`'s actor in line with its record (`uid`, or
    /// none): stops an actor of a record that is gone or was replaced,
    /// and nudges one that is current if `nudge`. Returns the actor to
    /// start, if one is missing and may start now (see [`Self::start`]).
    fn sync_one(&mut self, name: &str, uid: Option<&str>, nudge: bool) -> Option<(String, String)> {
        if let Some((running_uid, actor)) = self.sandboxes.get(name) {
            if Some(running_uid.as_str()) == uid {
                if nudge {
                    let _ = actor.send_message(SandboxMsg::Nudge);
                }
                return None;
            }
            actor.stop(Some("sandbox record gone".to_string()));
            self.sandboxes.remove(name);
        }
        let Some(uid) = uid else {
            self.to_spawn.remove(name);
            return None;
        };
        if self
            .restarts
            .get(name)
            .is_some_and(|r| Instant::now() < r.not_before)
        {
            self.to_spawn.insert(name.to_string());
            return None;
        }
        Some((name.to_string(), uid.to_string()))
    }

    /// Brings these sandboxes' actors in line with their records, then
    /// starts the missing ones together.
    async fn sync_named(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        names: impl IntoIterator<Item = String>,
        nudge: bool,
    ) {
        let mut due = Vec::new();
        for name in names {
            let uid = self.record_uid(&name);
            due.extend(self.sync_one(&name, uid.as_deref(), nudge));
        }
        self.start(myself, due).await;
    }

    /// Starts the actors of these `(name, uid)` sandboxes, up to
    /// [`SPAWN_AT_ONCE`] at a time: a new leader starts one per sandbox,
    /// and one after the other each start would wait behind the first
    /// steps of all the actors started before it.
    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, due: Vec<(String, String)>) {
        let spawns = due.into_iter().map(|(name, uid)| {
            let actor_name = sandbox_actor_name(self.ctx.node.id(), self.ctx.term, &name);
            let args = SandboxArgs {
                ctx: self.ctx.clone(),
                name: name.clone(),
                uid: uid.clone(),
            };
            let supervisor = myself.get_cell();
            async move {
                let spawned =
                    Actor::spawn_linked(Some(actor_name), SandboxActor, args, supervisor).await;
                (name, uid, spawned.map(|(actor, _)| actor))
            }
        });
        let mut started = futures::stream::iter(spawns).buffer_unordered(SPAWN_AT_ONCE);
        while let Some((name, uid, spawned)) = started.next().await {
            match spawned {
                Ok(actor) => {
                    self.to_spawn.remove(&name);
                    self.sandboxes.insert(name, (uid, actor));
                }
                Err(e) => {
                    // Most often the replaced actor has not quite stopped and
                    // still holds the name: the next tick tries again.
                    tracing::debug!(sandbox = %name, error = %e, "sandbox actor not started yet");
                    self.to_spawn.insert(name);
                }
            }
        }
    }

    /// Compares every record with the running actors (at the start of the
    /// term, when the change feed lagged, and as a slow safety net): one
    /// walk over both, in name order, copying only the names that differ
    /// (at 100,000 sandboxes this runs every 10 s).
    async fn sync_sandboxes(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let (gone, missing) = {
            let state = self.ctx.node.state().read();
            let mut gone = Vec::new();
            let mut missing = Vec::new();
            let mut running = self.sandboxes.iter().peekable();
            for record in state.table.iter() {
                while let Some((name, _)) = running.next_if(|(name, _)| **name < record.name) {
                    gone.push(name.clone());
                }
                let current = running
                    .next_if(|(name, _)| **name == record.name)
                    .is_some_and(|(_, (uid, _))| *uid == record.uid);
                if !current {
                    missing.push((record.name.clone(), record.uid.clone()));
                }
            }
            gone.extend(running.map(|(name, _)| name.clone()));
            (gone, missing)
        };
        for name in gone {
            self.sync_one(&name, None, false);
        }
        let due = missing
            .iter()
            .filter_map(|(name, uid)| self.sync_one(name, Some(uid), false))
            .collect();
        self.start(myself, due).await;
    }

    /// Reacts to what an applied batch touched: the actors of those
    /// sandboxes re-decide now (no actor polls for changes).
    async fn on_touched(&mut self, myself: &ActorRef<SupervisorMsg>, touched: &Touched) {
        if touched.everything || touched.nodes {
            // Readiness decides placement and what a sandbox reports.
            // Before any new actors start: a new actor reconciles anyway.
            self.nudge_all();
        }
        if touched.everything {
            self.sync_sandboxes(myself).await;
        }
        self.sync_named(myself, touched.sandboxes.iter().cloned(), true)
            .await;
        self.phases_dirty = true;
    }

    fn nudge_all(&self) {
        for (_, actor) in self.sandboxes.values() {
            let _ = actor.send_message(SandboxMsg::Nudge);
        }
    }

    /// Every tick: starts actors that could not start before, and nudges
    /// every actor when agents connected or went away.
    async fn tick_sandboxes(&mut self, myself: &ActorRef<SupervisorMsg>) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(RESYNC_TICKS) {
            self.sync_sandboxes(myself).await;
        }
        let waiting: Vec<String> = self.to_spawn.iter().cloned().collect();
        self.sync_named(myself, waiting, false).await;
        let topology = self.ctx.directory.topology();
        if topology != self.topology {
            self.topology = topology;
            self.nudge_all();
        }
        if std::mem::take(&mut self.phases_dirty) {
            let state = self.ctx.node.state().read();
            super::telemetry::count_phases(state.table.phase_counts());
        }
    }

    /// Asks the node of every kept volume marked for deletion to remove
    /// it (by the uid of the sandbox it was kept from: a new sandbox of
    /// the same name is never touched).
    async fn sync_volumes(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let deleting: Vec<KeptVolume> = {
            let state = self.ctx.node.state().read();
            state
                .table
                .volumes()
                .filter(|v| v.deleting)
                .cloned()
                .collect()
        };
        self.volumes_inflight.retain(|v, sent| {
            deleting.iter().any(|d| &d.volume == v) && sent.elapsed() < VOLUME_RETRY
        });
        let due: Vec<(KeptVolume, ActorRef<NodeMsg>)> = deleting
            .into_iter()
            .filter(|v| !self.volumes_inflight.contains_key(&v.volume))
            .filter_map(|v| self.ctx.directory.actor(&v.node).map(|a| (v, a)))
            .collect();
        if due.is_empty() {
            return;
        }
        // One barrier for the whole batch: act only on fresh state.
        if let Err(e) = self.ctx.barrier().await {
            tracing::debug!(error = %e, "not removing kept volumes now");
            return;
        }
        for (v, node_actor) in due {
            let op = command::Op::Remove(Remove {
                name: v.sandbox.clone(),
                uid: v.uid.clone(),
                volume: v.volume.clone(),
                keep_volume: false,
                volume_uid: v.uid.clone(),
            });
            let reply_to = ReplyTo::Volume(myself.clone(), v.volume.clone());
            if node_actor
                .send_message(NodeMsg::Send {
                    op,
                    reply_to,
                    trace: String::new(),
                })
                .is_ok()
            {
                tracing::info!(volume = %v.volume, node = %v.node, "removing kept volume");
                self.volumes_inflight.insert(v.volume, Instant::now());
            }
        }
    }

    async fn volume_removed(&mut self, volume: String, result: CommandResult) {
        self.volumes_inflight.remove(&volume);
        let gone = result.ok && result.observed.as_ref().is_some_and(|o| !o.volume_present);
        if !gone {
            tracing::warn!(%volume, error = %result.error, "kept volume not removed yet; retrying");
            return;
        }
        let command = Command::ForgetVolume {
            volume: volume.clone(),
        };
        match self.ctx.write(command).await {
            Ok(_) => tracing::info!(%volume, "kept volume removed"),
            Err(e) => tracing::warn!(%volume, error = %e, "cannot forget the removed volume yet"),
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
            if let Err(e) = self.ctx.write(command).await {
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
        // Started again by the next tick if its record still exists (after
        // the restart delay when it failed).
        self.to_spawn.insert(name.clone());
        if failed {
            let r = self.restarts.entry(name.clone()).or_insert(Restarts {
                count: 0,
                not_before: Instant::now(),
            });
            // A child that ran long enough since its last restart starts
            // its count afresh.
            if r.not_before.elapsed() >= RESTART_RESET {
                r.count = 0;
            }
            r.count = r.count.saturating_add(1);
            let delay = restart_delay(r.count);
            r.not_before = Instant::now() + delay;
            tracing::warn!(sandbox = %name, restarts = r.count, restart_in = ?delay, "sandbox actor failed; restarting");
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
        // Subscribed before the first full sync: nothing applied after it
        // is missed. A lagging feed means "look at everything".
        let mut feed = ctx.node.state().subscribe();
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                let touched = match feed.recv().await {
                    Ok(touched) => touched,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Arc::new(Touched {
                        everything: true,
                        ..Touched::default()
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if me.send_message(SupervisorMsg::Touched(touched)).is_err() {
                    return; // the tree stopped
                }
            }
        });
        myself.send_interval(TICK, || SupervisorMsg::Tick);
        myself.send_message(SupervisorMsg::Touched(Arc::new(Touched {
            everything: true,
            ..Touched::default()
        })))?;
        myself.send_message(SupervisorMsg::Tick)?;
        Ok(SupervisorState {
            ctx,
            sandboxes: BTreeMap::new(),
            to_spawn: BTreeSet::new(),
            ticks: 0,
            topology: 0,
            phases_dirty: true,
            restarts: BTreeMap::new(),
            started: Instant::now(),
            volumes_inflight: BTreeMap::new(),
            sessions: 0,
            failover_recorded: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Touched(touched) => state.on_touched(&myself, &touched).await,
            SupervisorMsg::Tick => {
                state.tick_sandboxes(&myself).await;
                state
                    .ctx
                    .actors
                    .store(state.sandboxes.len(), Ordering::Relaxed);
                if !state.failover_recorded {
                    let all = state.ctx.node.state().read().table.len();
                    if state.sandboxes.len() >= all {
                        state.failover_recorded = true;
                        super::telemetry::leader_ready(state.started.elapsed());
                    }
                }
                state.check_nodes().await;
                state.sync_volumes(&myself).await;
            }
            SupervisorMsg::VolumeRemoved { volume, result } => {
                state.volume_removed(volume, *result).await;
            }
            SupervisorMsg::AgentConnected(session) => {
                let AgentSession {
                    register,
                    outbound,
                    inbound,
                } = *session;
                state.sessions += 1;
                let args = NodeArgs {
                    ctx: state.ctx.clone(),
                    session: state.sessions,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_but_never_stop() {
        assert_eq!(restart_delay(1), Duration::from_millis(400));
        assert_eq!(restart_delay(3), Duration::from_millis(1_600));
        for count in [8, 9, 100, u32::MAX] {
            assert_eq!(restart_delay(count), MAX_RESTART_DELAY, "{count}");
        }
    }
}
