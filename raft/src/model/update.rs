//! The update state machine: how an image/policy update (or a manual
//! rollback) moves a sandbox from one revision to another, as data plus a
//! pure transition function. The sandbox actor only observes, turns what it
//! sees into an [`Event`], commits the resulting phase to Raft, and then
//! carries out the [`Effect`]s (invariant 2). Every path ends in a terminal
//! phase (invariant 6):
//!
//! ```text
//!  Pending ─Begin─▶ Pulling ─Pulled─▶ StoppingOld ─OldStopped─▶ StartingNew ─Started─▶ Verifying ─Healthy─▶ Succeeded
//!                     │                   │                        │                      │
//!                PullFailed       StopFailed/Abort/    StartFailed/Abort/    Unhealthy/Deadline/Abort
//!              / Abort/Deadline        Deadline                Deadline                   │
//!                     ▼                   └───────────┬────────────┴──────────────────────┘
//!                  Aborted                            ▼ (auto-rollback; else Failed)
//!   (old never stopped; also                     RollingBack ─RolledBack─▶ RolledBack
//!    any phase + Deleted)                             │
//!                                              RollbackFailed ─▶ Failed (the sandbox keeps retrying
//!                                              / Deadline         the old revision with backoff)
//! ```
//!
//! Every non-terminal phase has a deadline ([`UpdatePolicy::deadline_ms`]):
//! Pending and Pulling overdue → Aborted; StoppingOld overdue → RollingBack;
//! StartingNew and Verifying overdue → RollingBack (or Failed without
//! auto-rollback); RollingBack overdue → Failed. A lost node simply stops
//! producing events, so its operation ends by deadline. Phases only move
//! forward along the diagram (no cycles), so every operation is terminal
//! within [`UpdatePolicy::total_budget_ms`] of starting.
//!
//! Operator commands during an operation are decided by [`on_operator`]:
//! `stop`, `start` and a new `update` are refused naming the operation;
//! `rollback` aborts it (before the old container was stopped: Aborted;
//! after: RollingBack); `delete` aborts it (Aborted) and deletes.
//!
//! Terminal phases (Succeeded, Aborted, RolledBack, Failed) absorb every
//! event.

use serde::{Deserialize, Serialize};

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdatePhase {
    Pending,
    Pulling,
    StoppingOld,
    StartingNew,
    Verifying,
    Succeeded,
    Aborted,
    RollingBack,
    RolledBack,
    Failed,
}

impl UpdatePhase {
    pub const ALL: [UpdatePhase; 10] = [
        UpdatePhase::Pending,
        UpdatePhase::Pulling,
        UpdatePhase::StoppingOld,
        UpdatePhase::StartingNew,
        UpdatePhase::Verifying,
        UpdatePhase::Succeeded,
        UpdatePhase::Aborted,
        UpdatePhase::RollingBack,
        UpdatePhase::RolledBack,
        UpdatePhase::Failed,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            UpdatePhase::Succeeded
                | UpdatePhase::Aborted
                | UpdatePhase::RolledBack
                | UpdatePhase::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePhase::Pending => "Pending",
            UpdatePhase::Pulling => "Pulling",
            UpdatePhase::StoppingOld => "StoppingOld",
            UpdatePhase::StartingNew => "StartingNew",
            UpdatePhase::Verifying => "Verifying",
            UpdatePhase::Succeeded => "Succeeded",
            UpdatePhase::Aborted => "Aborted",
            UpdatePhase::RollingBack => "RollingBack",
            UpdatePhase::RolledBack => "RolledBack",
            UpdatePhase::Failed => "Failed",
        }
    }
}

/// Deadline of Pending: the leader begins at once; this only bounds a
/// leader that never gets to it.
pub const PENDING_TIMEOUT_MS: u64 = 60_000;
/// Default deadline of Pulling: longer than the agent's default pull
/// timeout (10 minutes), so the agent's own answer normally comes first.
pub const DEFAULT_PULL_TIMEOUT_MS: u64 = 11 * 60_000;
/// Default deadline of StoppingOld (the engine stops with a 10 s grace).
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 60_000;
/// Default deadline of RollingBack (the API gives it the update's health
/// timeout: the old revision gets as long to come back as the new one had).
pub const DEFAULT_ROLLBACK_TIMEOUT_MS: u64 = 60_000;

fn default_pull_timeout() -> u64 {
    DEFAULT_PULL_TIMEOUT_MS
}
fn default_stop_timeout() -> u64 {
    DEFAULT_STOP_TIMEOUT_MS
}
fn default_rollback_timeout() -> u64 {
    DEFAULT_ROLLBACK_TIMEOUT_MS
}

/// How an update is gated, and how long each phase may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// The new revision must start, and then become healthy, within this
    /// long (each of StartingNew and Verifying).
    pub health_timeout_ms: u64,
    /// ... and keep running this long.
    pub min_healthy_ms: u64,
    /// Restore the previous revision when the new one fails.
    pub auto_rollback: bool,
    /// Deadline of Pulling.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_ms: u64,
    /// Deadline of StoppingOld.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    /// Deadline of RollingBack.
    #[serde(default = "default_rollback_timeout")]
    pub rollback_timeout_ms: u64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            health_timeout_ms: 60_000,
            min_healthy_ms: 5_000,
            auto_rollback: true,
            pull_timeout_ms: DEFAULT_PULL_TIMEOUT_MS,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
            rollback_timeout_ms: DEFAULT_ROLLBACK_TIMEOUT_MS,
        }
    }
}

impl UpdatePolicy {
    /// How long `phase` may last before it is overdue (None: terminal).
    pub fn deadline_ms(&self, phase: UpdatePhase) -> Option<u64> {
        match phase {
            UpdatePhase::Pending => Some(PENDING_TIMEOUT_MS),
            UpdatePhase::Pulling => Some(self.pull_timeout_ms),
            UpdatePhase::StoppingOld => Some(self.stop_timeout_ms),
            UpdatePhase::StartingNew | UpdatePhase::Verifying => Some(self.health_timeout_ms),
            UpdatePhase::RollingBack => Some(self.rollback_timeout_ms),
            UpdatePhase::Succeeded
            | UpdatePhase::Aborted
            | UpdatePhase::RolledBack
            | UpdatePhase::Failed => None,
        }
    }

    /// Whether `phase`, begun `elapsed_ms` ago, has passed its deadline.
    pub fn overdue(&self, phase: UpdatePhase, elapsed_ms: u64) -> bool {
        self.deadline_ms(phase).is_some_and(|d| elapsed_ms > d)
    }

    /// An upper bound on how long any operation under this policy lasts:
    /// the sum of the deadlines of every phase on its longest path.
    pub fn total_budget_ms(&self) -> u64 {
        [
            UpdatePhase::Pending,
            UpdatePhase::Pulling,
            UpdatePhase::StoppingOld,
            UpdatePhase::StartingNew,
            UpdatePhase::Verifying,
            UpdatePhase::RollingBack,
        ]
        .iter()
        .filter_map(|p| self.deadline_ms(*p))
        .sum()
    }
}

/// Something the actor observed (or was asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Begin,
    Pulled,
    PullFailed(String),
    OldStopped,
    StopFailed(String),
    Started,
    StartFailed(String),
    Healthy,
    Unhealthy(String),
    Deadline,
    RolledBack,
    RollbackFailed(String),
    /// An operator's rollback request arrived during the update.
    Abort,
    /// An operator deleted the sandbox during the update.
    Deleted,
}

/// What the actor must do after committing the new phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Fetch the new image while the old container keeps running.
    PullNew,
    /// Stop the old container (never its volume).
    StopOld,
    /// Make the target revision current and run it (same volume).
    RunNew,
    /// Make the previous revision current again and run it (same volume).
    RunOld,
    /// Record the target revision as verified healthy.
    MarkStable,
}

/// The next phase and the effects of `event` in `phase`, with a reason for
/// failures. Pure: the same inputs always give the same outputs.
pub fn transition(
    phase: UpdatePhase,
    event: &Event,
    policy: &UpdatePolicy,
) -> (UpdatePhase, Vec<Effect>) {
    use Event as E;
    use UpdatePhase as P;
    let fail_forward = || {
        if policy.auto_rollback {
            (P::RollingBack, vec![Effect::RunOld])
        } else {
            (P::Failed, vec![])
        }
    };
    match (phase, event) {
        (p, _) if p.is_terminal() => (p, vec![]),
        (_, E::Deleted) => (P::Aborted, vec![]),
        (P::Pending, E::Begin) => (P::Pulling, vec![Effect::PullNew]),
        (P::Pending | P::Pulling, E::Abort | E::Deadline) => (P::Aborted, vec![]),
        (P::Pulling, E::Pulled) => (P::StoppingOld, vec![Effect::StopOld]),
        (P::Pulling, E::PullFailed(_)) => (P::Aborted, vec![]),
        (P::StoppingOld, E::OldStopped) => (P::StartingNew, vec![Effect::RunNew]),
        (P::StoppingOld, E::StopFailed(_) | E::Deadline) => (P::RollingBack, vec![Effect::RunOld]),
        (P::StartingNew, E::Started) => (P::Verifying, vec![]),
        (P::StartingNew, E::StartFailed(_) | E::Deadline) => fail_forward(),
        (P::Verifying, E::Healthy) => (P::Succeeded, vec![Effect::MarkStable]),
        (P::Verifying, E::Unhealthy(_) | E::Deadline) => fail_forward(),
        (P::StoppingOld | P::StartingNew | P::Verifying, E::Abort) => {
            (P::RollingBack, vec![Effect::RunOld])
        }
        (P::RollingBack, E::RolledBack) => (P::RolledBack, vec![]),
        (P::RollingBack, E::RollbackFailed(_) | E::Deadline) => (P::Failed, vec![]),
        // Anything else does not apply in this phase.
        (p, _) => (p, vec![]),
    }
}

/// An operator's command about a sandbox that may have an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorCommand {
    Stop,
    Start,
    Update,
    Rollback,
    Delete,
}

/// What an operator command does to the operation in `phase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// No operation runs: the command proceeds and the operation is untouched.
    Proceed,
    /// Refused (FailedPrecondition, naming the operation); nothing changes.
    Refuse,
    /// The operation moves to this phase with these effects, and the
    /// command proceeds.
    Abort(UpdatePhase, Vec<Effect>),
}

/// How `command` interacts with an operation in `phase`. Total: every
/// command is defined in every phase.
pub fn on_operator(
    phase: UpdatePhase,
    command: OperatorCommand,
    policy: &UpdatePolicy,
) -> Admission {
    if phase.is_terminal() {
        return Admission::Proceed;
    }
    let event = match command {
        // Stopping or starting by hand would fight the operation's own
        // steps; a second update waits for the first.
        OperatorCommand::Stop | OperatorCommand::Start | OperatorCommand::Update => {
            return Admission::Refuse
        }
        OperatorCommand::Rollback => Event::Abort,
        OperatorCommand::Delete => Event::Deleted,
    };
    match transition(phase, &event, policy) {
        (next, _) if next == phase => Admission::Refuse,
        (next, effects) => Admission::Abort(next, effects),
    }
}

#[cfg(test)]
mod tests;
