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
//!                PullFailed          StopFailed/Abort       StartFailed/Abort     Unhealthy/Deadline/Abort
//!                 / Abort                 │                        │                      │
//!                     ▼                   └───────────┬────────────┴──────────────────────┘
//!                  Aborted                            ▼ (auto-rollback; else Failed)
//!            (old never stopped)                 RollingBack ─RolledBack─▶ RolledBack
//!                                                     │
//!                                              RollbackFailed ─▶ Failed (the sandbox keeps retrying
//!                                                                the old revision with backoff)
//! ```
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

/// How an update is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// The new revision must become healthy within this long of starting.
    pub health_timeout_ms: u64,
    /// ... and keep running this long.
    pub min_healthy_ms: u64,
    /// Restore the previous revision when the new one fails.
    pub auto_rollback: bool,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            health_timeout_ms: 60_000,
            min_healthy_ms: 5_000,
            auto_rollback: true,
        }
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
        (P::Pending, E::Begin) => (P::Pulling, vec![Effect::PullNew]),
        (P::Pending | P::Pulling, E::Abort) => (P::Aborted, vec![]),
        (P::Pulling, E::Pulled) => (P::StoppingOld, vec![Effect::StopOld]),
        (P::Pulling, E::PullFailed(_)) => (P::Aborted, vec![]),
        (P::StoppingOld, E::OldStopped) => (P::StartingNew, vec![Effect::RunNew]),
        (P::StoppingOld, E::StopFailed(_)) => (P::RollingBack, vec![Effect::RunOld]),
        (P::StartingNew, E::Started) => (P::Verifying, vec![]),
        (P::StartingNew, E::StartFailed(_) | E::Deadline) => fail_forward(),
        (P::Verifying, E::Healthy) => (P::Succeeded, vec![Effect::MarkStable]),
        (P::Verifying, E::Unhealthy(_) | E::Deadline) => fail_forward(),
        (P::StoppingOld | P::StartingNew | P::Verifying, E::Abort) => {
            (P::RollingBack, vec![Effect::RunOld])
        }
        (P::RollingBack, E::RolledBack) => (P::RolledBack, vec![]),
        (P::RollingBack, E::RollbackFailed(_)) => (P::Failed, vec![]),
        // Anything else does not apply in this phase.
        (p, _) => (p, vec![]),
    }
}

#[cfg(test)]
mod tests;
