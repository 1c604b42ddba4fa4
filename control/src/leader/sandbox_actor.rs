//! `SandboxActor`: one per sandbox, on the leader only. On every tick or
//! nudge it reads the sandbox's record from the state machine and its node's
//! report from the directory, asks `reconcile::decide` what to do, and
//! carries the plan out: status and placement are committed to Raft before
//! any command is sent (invariant 2); commands are idempotent, so a new
//! leader may safely repeat the last one.
//!
//! The actor's own memory holds only what may be lost: the command in
//! flight and the retry backoff.
//!
//! An actor never dies of an expected error: a write refused for lack of a
//! quorum, a compare-and-set that lost a race with an operator, a NotFound
//! racing a delete. It backs off (1 s doubling to 30 s, skipping ticks
//! meanwhile) and reconciles again from the replicated state, so no
//! sandbox is ever abandoned by its leader. Before it sends a command to an
//! agent it passes a leader barrier in its term and re-reads the record:
//! it acts only on state at least as new as its term's commit index.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent_v1::{command, CommandResult, Ensure, Pull, Remove, Stop};
use berth_proto::policy::Policy;
use berth_raft::model::update::UpdatePhase;
use berth_raft::model::Operation;
use berth_raft::{Command, Desired, NodeError, SandboxRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::directory::Link;
use super::node_actor::NodeMsg;
use super::reconcile::{decide, Action, AgentOp, Inputs, NodeLink};
use super::update_step::{self, Observations, Progress};
use super::LeaderCtx;
use crate::clock::now_ms;
use crate::secrets::SecretError;

const TICK: Duration = Duration::from_secs(1);
/// A command unanswered this long is considered lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A container running this long after a start resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);

pub enum SandboxMsg {
    /// Time passed: re-check deadlines and backoffs (only sent to an actor
    /// that is waiting on time; see [`SandboxState::settled`]).
    Tick,
    /// Something relevant changed; reconcile now.
    Nudge,
    CommandDone(Box<CommandResult>),
}

pub struct SandboxActor;

/// Why a reconcile step stopped short. All expected: retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot commit: {0}")]
    Write(#[from] NodeError),
    #[error("cannot reach the node's session: {0}")]
    Session(String),
}

impl<T> From<ractor::MessagingErr<T>> for StepError {
    fn from(e: ractor::MessagingErr<T>) -> Self {
        StepError::Session(e.to_string())
    }
}

pub struct SandboxArgs {
    pub ctx: Arc<LeaderCtx>,
    pub name: String,
    pub uid: String,
}

/// The kind of command in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inflight {
    Container(AgentOp),
    Pull,
}

pub struct SandboxState {
    ctx: Arc<LeaderCtx>,
    name: String,
    uid: String,
    inflight: Option<(Inflight, Instant)>,
    /// What the current update or rollback has shown so far.
    progress: Progress,
    failures: u32,
    /// When the last successful start happened (for the backoff reset).
    running_since: Option<Instant>,
    next_attempt: Instant,
    last_error: Option<String>,
    /// The node answered a Remove of this sandbox with success.
    removed: bool,
    /// Failed reconcile steps in a row (writes that did not commit).
    step_failures: u32,
    /// No reconcile before this (backoff after a failed step).
    step_retry_at: Instant,
    /// The last reconcile found nothing to do and nothing to report.
    quiet: bool,
    /// A Tick is on its way.
    tick_armed: bool,
}

fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(5);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// The command for the sandbox's agent. An Ensure carries the secret env,
/// opened here and only here (the agent gets it over mutual TLS).
fn op_for(op: AgentOp, r: &SandboxRecord) -> Result<command::Op, SecretError> {
    Ok(match op {
        AgentOp::Ensure => command::Op::Ensure(Ensure {
            name: r.name.clone(),
            uid: r.uid.clone(),
            revision: r.revision,
            image: r.spec.image.clone(),
            env: {
                let mut env: std::collections::HashMap<String, String> =
                    r.spec.env.clone().into_iter().collect();
                for (name, sealed) in &r.spec.secret_env {
                    env.insert(name.clone(), crate::secrets::open(&r.uid, name, sealed)?);
                }
                env
            },
            secret_keys: r.spec.secret_env.keys().cloned().collect(),
            policy: r.spec.policy.clone(),
            volume: r.volume.clone(),
            volume_uid: r.volume_owner().to_string(),
            // Ran once (or had a container made): its volume exists.
            volume_expected: r.volume_seeded || !r.container_id.is_empty(),
        }),
        AgentOp::Stop => command::Op::Stop(Stop {
            name: r.name.clone(),
            uid: r.uid.clone(),
        }),
        AgentOp::Remove { keep_volume } => command::Op::Remove(Remove {
            name: r.name.clone(),
            uid: r.uid.clone(),
            volume: r.volume.clone(),
            keep_volume,
            volume_uid: r.volume_owner().to_string(),
        }),
    })
}

impl SandboxState {
    /// Ready nodes and how many sandboxes each holds.
    fn ready_nodes(&self) -> Vec<(String, usize)> {
        let connected = self.ctx.directory.connected();
        let state = self.ctx.node.state().read();
        connected
            .into_iter()
            .filter(|n| state.table.node(n).is_some_and(|r| r.ready))
            .map(|n| {
                let count = state.table.sandboxes_on(&n);
                (n, count)
            })
            .collect()
    }

    /// The record, if it is still this sandbox's (same uid).
    fn record(&self) -> Option<SandboxRecord> {
        let state = self.ctx.node.state().read();
        state
            .table
            .get(&self.name)
            .filter(|r| r.uid == self.uid)
            .cloned()
    }

    /// Passes a leader barrier, then checks the record is still `decided_on`:
    /// a command goes out only if it follows from state at least as new as
    /// this term's commit index. False: re-decide (nudged).
    async fn fresh(
        &self,
        myself: &ActorRef<SandboxMsg>,
        decided_on: &SandboxRecord,
    ) -> Result<bool, StepError> {
        self.ctx.barrier().await?;
        let unchanged = self.record().is_some_and(|now| {
            now.revision == decided_on.revision
                && now.desired == decided_on.desired
                && now.operation == decided_on.operation
                && now.node == decided_on.node
        });
        if !unchanged {
            let _ = myself.send_message(SandboxMsg::Nudge);
        }
        Ok(unchanged)
    }

    /// Nothing here waits on time: no command in flight, no operation, no
    /// backoff or stable-run check pending, and the last reconcile had
    /// nothing to do. A settled actor gets no Tick; it is woken by what
    /// can change its decision: its record (the state machine's feed),
    /// its container (the agent's reports), node readiness or agents
    /// coming and going (the supervisor nudges it).
    fn settled(&self) -> bool {
        let now = Instant::now();
        self.quiet
            && self.inflight.is_none()
            && self.running_since.is_none()
            && now >= self.next_attempt
            && now >= self.step_retry_at
    }

    /// One reconcile step. Returns false when the actor should stop.
    async fn reconcile(&mut self, myself: &ActorRef<SandboxMsg>) -> Result<bool, StepError> {
        self.quiet = false;
        // The record and its node's replicated liveness, read together.
        let (record, node_ready) = {
            let state = self.ctx.node.state().read();
            let record = state
                .table
                .get(&self.name)
                .filter(|r| r.uid == self.uid)
                .cloned();
            let ready = record
                .as_ref()
                .and_then(|r| r.node.as_deref())
                .and_then(|n| state.table.node(n))
                .is_some_and(|n| n.ready);
            (record, ready)
        };
        let Some(record) = record else {
            return Ok(false);
        };
        if self
            .inflight
            .is_some_and(|(_, sent)| sent.elapsed() > COMMAND_TIMEOUT)
        {
            self.inflight = None;
            self.last_error = Some("the node did not answer a command in time".to_string());
        }
        let link = match &record.node {
            Some(node) => self.ctx.directory.link(node, &record.uid),
            None => Link::Disconnected,
        };
        if self
            .running_since
            .is_some_and(|t| t.elapsed() >= STABLE_RUN)
        {
            let still_running = matches!(&link, Link::Connected(Some(o))
                if o.state() == berth_proto::agent_v1::ContainerState::Running);
            if still_running {
                self.failures = 0;
            }
            self.running_since = None;
        }
        if let Some(op) = record.active_operation().cloned() {
            if self.step_operation(myself, &record, &op, &link).await? {
                return Ok(true);
            }
        }
        // While the old revision is being stopped, the container's desired
        // state is Stopped; everything else follows the record.
        let decided_on = record.clone();
        let mut record = record;
        if record
            .active_operation()
            .is_some_and(|op| op.phase == UpdatePhase::StoppingOld)
        {
            record.desired = Desired::Stopped;
        }
        let ready = if record.node.is_none() {
            self.ready_nodes()
        } else {
            vec![]
        };
        let plan = decide(Inputs {
            record: &record,
            link: match &link {
                Link::Disconnected => NodeLink::Disconnected { ready: node_ready },
                Link::Connected(o) => NodeLink::Connected(o.as_ref()),
            },
            ready_nodes: &ready,
            inflight: self.inflight.is_some(),
            may_act: Instant::now() >= self.next_attempt,
            last_error: self.last_error.as_deref(),
            removed: self.removed || crate::chaos::broken("forget-early"),
        });
        let mut reported = false;
        if let Some(status) = plan.status {
            let changed = status.phase != record.phase
                || status.message != record.message
                || status.container_id != record.container_id;
            if changed {
                reported = true;
                super::telemetry::status_changed(&record, status.phase, &status.container_id);
                self.ctx
                    .write(Command::SetSandboxStatus {
                        name: record.name.clone(),
                        uid: record.uid.clone(),
                        phase: status.phase,
                        message: status.message,
                        container_id: status.container_id,
                        at_ms: now_ms(),
                    })
                    .await?;
            }
        }
        match plan.action {
            Action::None => {
                self.quiet = !reported && record.active_operation().is_none();
            }
            Action::Schedule(node) => {
                tracing::info!(sandbox = %record.name, %node, "placing sandbox");
                self.ctx
                    .write(Command::ScheduleSandbox {
                        name: record.name.clone(),
                        uid: record.uid.clone(),
                        node,
                        at_ms: now_ms(),
                    })
                    .await?;
                let _ = myself.send_message(SandboxMsg::Nudge);
            }
            Action::Send(op) => {
                let Some(node) = record.node.as_deref() else {
                    return Ok(true);
                };
                let Some(node_actor) = self.ctx.directory.actor(node) else {
                    return Ok(true);
                };
                if !self.fresh(myself, &decided_on).await? {
                    return Ok(true);
                }
                if op == AgentOp::Ensure && self.last_error.is_none() {
                    // A restart after an exit waits its backoff too.
                    if let Link::Connected(Some(o)) = &link {
                        if o.state() == berth_proto::agent_v1::ContainerState::Exited {
                            self.failures += 1;
                            self.next_attempt = Instant::now() + backoff(self.failures);
                        }
                    }
                }
                tracing::debug!(sandbox = %record.name, ?op, "sending command");
                let op_name = match op {
                    AgentOp::Ensure => "Ensure",
                    AgentOp::Stop => "Stop",
                    AgentOp::Remove { .. } => "Remove",
                };
                let trace = super::telemetry::command_trace(&record, op_name, self.ctx.term);
                let command = match op_for(op, &record) {
                    Ok(command) => command,
                    Err(e) => {
                        tracing::warn!(sandbox = %record.name, error = %e, "cannot build the command");
                        self.last_error = Some(e.to_string());
                        self.next_attempt = Instant::now() + MAX_BACKOFF;
                        return Ok(true);
                    }
                };
                node_actor.send_message(NodeMsg::Send {
                    op: command,
                    reply_to: myself.clone().into(),
                    trace,
                })?;
                self.inflight = Some((Inflight::Container(op), Instant::now()));
            }
            Action::Forget => {
                tracing::info!(sandbox = %record.name, "sandbox removed from its node; forgetting it");
                self.ctx
                    .write(Command::RemoveSandbox {
                        name: record.name.clone(),
                        uid: record.uid.clone(),
                        at_ms: now_ms(),
                    })
                    .await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Moves the record's active operation on, if what is observed now
    /// implies a phase change; sends the Pull of the Pulling phase. Returns
    /// true when it acted (the next reconcile sees the new state).
    async fn step_operation(
        &mut self,
        myself: &ActorRef<SandboxMsg>,
        record: &SandboxRecord,
        op: &Operation,
        link: &Link,
    ) -> Result<bool, StepError> {
        if self.progress.op_id != op.id {
            self.progress = Progress {
                op_id: op.id.clone(),
                ..Progress::default()
            };
        }
        let (observed, node_known) = match link {
            Link::Connected(o) => (o.clone(), true),
            Link::Disconnected => (None, false),
        };
        let readiness = record
            .revision(op.to_revision)
            .and_then(|r| r.spec.policy.as_deref())
            .and_then(|p| Policy::parse(p).ok())
            .and_then(|p| p.readiness)
            .map(|r| r.command);
        let now = now_ms();
        let elapsed = u64::try_from(now - op.phase_started_at_ms).unwrap_or(0);
        if op.phase == UpdatePhase::Verifying && elapsed >= op.policy.min_healthy_ms {
            let node = record.node.as_deref().unwrap_or_default();
            if let (Some(command), Some(addr)) = (readiness.clone(), self.data_addr(record)) {
                self.progress.probe =
                    Some(super::probe::run(node, &addr, &record.name, &record.uid, command).await);
            }
        }
        let event = update_step::observe(&Observations {
            record,
            op,
            observed: observed.as_ref(),
            node_known,
            progress: &self.progress,
            readiness_required: readiness.is_some(),
            now_ms: now,
        });
        if let Some(command) = event.and_then(|e| update_step::commit(record, op, &e, now)) {
            if let Command::AdvanceOperation { to, reason, .. } = &command {
                // One span per phase transition, in the operation's trace.
                let span = tracing::info_span!(
                    "update.phase",
                    otel.name = %format!("{} {} -> {}", op.kind.as_str(), op.phase.as_str(), to.as_str()),
                    sandbox = %record.name,
                    operation = %op.id,
                    revision = op.to_revision,
                    phase.from = op.phase.as_str(),
                    phase.to = to.as_str(),
                    phase.duration_ms = elapsed,
                );
                berth_telemetry::propagate::continue_from(&span, &op.trace);
                span.in_scope(|| {
                    tracing::info!(sandbox = %record.name, operation = %op.id, from = op.phase.as_str(), to = to.as_str(), %reason, "operation phase");
                });
                super::telemetry::phase_ended(op, *to, elapsed);
            }
            let to = match &command {
                Command::AdvanceOperation { to, .. } => Some(*to),
                _ => None,
            };
            self.ctx.write(command).await?;
            if let Some(to) = to {
                crate::chaos::after_phase_committed(to.as_str());
            }
            self.progress.command_error = None;
            self.last_error = None;
            self.failures = 0;
            self.next_attempt = Instant::now();
            let _ = myself.send_message(SandboxMsg::Nudge);
            return Ok(true);
        }
        // The node's pull progress, for `update --wait`.
        let pulled = observed
            .as_ref()
            .filter(|o| o.uid == record.uid)
            .map(|o| o.pull_progress.as_str())
            .filter(|p| !p.is_empty() && *p != op.progress);
        if let (UpdatePhase::Pulling, Some(progress)) = (op.phase, pulled) {
            self.ctx
                .write(Command::SetOperationProgress {
                    name: record.name.clone(),
                    uid: record.uid.clone(),
                    operation_id: op.id.clone(),
                    progress: progress.to_string(),
                })
                .await?;
        }
        if op.phase == UpdatePhase::Pulling
            && self.inflight.is_none()
            && self.progress.pull.is_none()
        {
            let (Some(node), Some(rev)) = (record.node.as_deref(), record.revision(op.to_revision))
            else {
                return Ok(true);
            };
            let Some(node_actor) = self.ctx.directory.actor(node) else {
                return Ok(true);
            };
            if !self.fresh(myself, record).await? {
                return Ok(true);
            }
            node_actor.send_message(NodeMsg::Send {
                op: command::Op::Pull(Pull {
                    name: record.name.clone(),
                    image: rev.spec.image.clone(),
                    uid: record.uid.clone(),
                }),
                reply_to: myself.clone().into(),
                trace: super::telemetry::command_trace(record, "Pull", self.ctx.term),
            })?;
            self.inflight = Some((Inflight::Pull, Instant::now()));
            return Ok(true);
        }
        Ok(false)
    }

    /// The data-plane address of the sandbox's node.
    fn data_addr(&self, record: &SandboxRecord) -> Option<String> {
        let node = record.node.as_deref()?;
        let state = self.ctx.node.state().read();
        state.table.node(node).map(|n| n.data_addr.clone())
    }

    fn on_result(&mut self, result: CommandResult) {
        let kind = self.inflight.take().map(|(k, _)| k);
        if kind == Some(Inflight::Pull) {
            self.progress.pull = Some(if result.ok { Ok(()) } else { Err(result.error) });
            return;
        }
        if !result.ok && !result.refused && !self.progress.op_id.is_empty() {
            self.progress.command_error = Some(result.error.clone());
        }
        if result.ok && matches!(kind, Some(Inflight::Container(AgentOp::Remove { .. }))) {
            self.removed = true;
        }
        if result.ok {
            self.last_error = None;
            let running = result
                .observed
                .as_ref()
                .is_some_and(|o| o.state() == berth_proto::agent_v1::ContainerState::Running);
            if !running {
                return;
            }
            // The restart backoff resets once the start has lasted.
            self.running_since = Some(Instant::now());
        } else if result.refused {
            self.last_error = None;
        } else {
            self.failures += 1;
            self.next_attempt = Instant::now() + backoff(self.failures);
            tracing::warn!(sandbox = %self.name, error = %result.error, retry_in = ?backoff(self.failures), "command failed");
            self.last_error = Some(result.error);
        }
    }
}

impl Actor for SandboxActor {
    type Msg = SandboxMsg;
    type State = SandboxState;
    type Arguments = SandboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SandboxMsg>,
        args: SandboxArgs,
    ) -> Result<SandboxState, ActorProcessingErr> {
        myself.send_message(SandboxMsg::Nudge)?;
        Ok(SandboxState {
            ctx: args.ctx,
            name: args.name,
            uid: args.uid,
            inflight: None,
            progress: Progress::default(),
            failures: 0,
            running_since: None,
            next_attempt: Instant::now(),
            last_error: None,
            removed: false,
            step_failures: 0,
            step_retry_at: Instant::now(),
            quiet: false,
            tick_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SandboxMsg>,
        msg: SandboxMsg,
        state: &mut SandboxState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SandboxMsg::CommandDone(result) => state.on_result(*result),
            SandboxMsg::Tick => state.tick_armed = false,
            SandboxMsg::Nudge => {}
        }
        // Backing off after a failed step: only time ends that.
        if Instant::now() >= state.step_retry_at {
            // Boxed: ractor keeps each actor's handler future inline in its
            // task, so an unboxed reconcile would make every idle actor
            // hold the largest reconcile state (issue 13, RSS per sandbox).
            match Box::pin(state.reconcile(&myself)).await {
                Ok(true) => state.step_failures = 0,
                Ok(false) => {
                    myself.stop(None);
                    return Ok(());
                }
                Err(e) => {
                    state.step_failures = state.step_failures.saturating_add(1);
                    let delay = backoff(state.step_failures - 1);
                    state.step_retry_at = Instant::now() + delay;
                    state.quiet = false;
                    tracing::warn!(sandbox = %state.name, error = %e, retry_in = ?delay, "reconcile step failed; retrying");
                }
            }
        }
        if !state.settled() && !state.tick_armed {
            state.tick_armed = true;
            myself.send_after(TICK, || SandboxMsg::Tick);
        }
        Ok(())
    }
}
