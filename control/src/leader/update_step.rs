//! Turning what a sandbox actor observes during an update into events of
//! the update state machine (`berth_raft::model::update`), and events into
//! the Raft command that commits the next phase. Pure: the actor supplies
//! the observations and the clock.
//!
//! Invariant kept here: each phase's exit condition is checked against
//! observations (level-triggered), so a new leader resumes any committed
//! phase by simply observing again (2, 6).

use berth_proto::agent_v1::{ContainerState, Observed};
use berth_raft::model::update::{transition, Effect, Event, UpdatePhase};
use berth_raft::model::Operation;
use berth_raft::{Command, SandboxRecord};

/// What the actor learned about the current operation beyond the record.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The operation these notes are about.
    pub op_id: String,
    /// Result of the Pull command, once answered.
    pub pull: Option<Result<(), String>>,
    /// Last readiness probe result.
    pub probe: Option<Result<(), String>>,
    /// Why the last container command failed in this phase.
    pub command_error: Option<String>,
}

/// Observations for one step.
pub struct Observations<'a> {
    pub record: &'a SandboxRecord,
    pub op: &'a Operation,
    /// What the node reports for this sandbox (None: nothing, or unknown node).
    pub observed: Option<&'a Observed>,
    /// The node has reported (we can trust `observed`).
    pub node_known: bool,
    pub progress: &'a Progress,
    /// The target revision's policy defines a readiness probe.
    pub readiness_required: bool,
    pub now_ms: i64,
}

fn running_at(observed: Option<&Observed>, revision: u64) -> bool {
    observed.is_some_and(|o| o.state() == ContainerState::Running && o.revision == revision)
}

/// The event the observations imply, if any. Every non-terminal phase ends
/// by `Deadline` once it is overdue, whatever is (or is not) observed: a
/// lost node or a stuck engine cannot hold an operation (invariant 6).
pub fn observe(o: &Observations<'_>) -> Option<Event> {
    let op = o.op;
    let elapsed = u64::try_from(o.now_ms - op.phase_started_at_ms).unwrap_or(0);
    let observed = o.observed.filter(|obs| obs.uid == o.record.uid);
    let overdue = op.policy.overdue(op.phase, elapsed);
    let event = match op.phase {
        UpdatePhase::Pending => Some(Event::Begin),
        UpdatePhase::Pulling => match &o.progress.pull {
            Some(Ok(())) => Some(Event::Pulled),
            Some(Err(e)) => Some(Event::PullFailed(e.clone())),
            None => None,
        },
        UpdatePhase::StoppingOld => {
            if let Some(e) = &o.progress.command_error {
                return Some(Event::StopFailed(e.clone()));
            }
            let stopped =
                o.node_known && observed.is_none_or(|obs| obs.state() != ContainerState::Running);
            stopped.then_some(Event::OldStopped)
        }
        UpdatePhase::StartingNew => {
            if running_at(observed, op.to_revision) {
                Some(Event::Started)
            } else {
                o.progress.command_error.clone().map(Event::StartFailed)
            }
        }
        UpdatePhase::Verifying => {
            if o.node_known && !running_at(observed, op.to_revision) {
                let why = match observed {
                    Some(obs) if obs.state() == ContainerState::Exited => {
                        format!("its container exited with code {}", obs.exit_code)
                    }
                    _ => "its container is not running".to_string(),
                };
                return Some(Event::Unhealthy(why));
            }
            let probe_ok = !o.readiness_required || matches!(o.progress.probe, Some(Ok(())));
            if elapsed >= op.policy.min_healthy_ms && probe_ok && o.node_known {
                Some(Event::Healthy)
            } else if overdue {
                match &o.progress.probe {
                    Some(Err(e)) => {
                        Some(Event::Unhealthy(format!("its readiness probe failed: {e}")))
                    }
                    _ => None,
                }
            } else {
                None
            }
        }
        UpdatePhase::RollingBack => {
            if running_at(observed, op.from_revision) {
                Some(Event::RolledBack)
            } else {
                o.progress.command_error.clone().map(Event::RollbackFailed)
            }
        }
        UpdatePhase::Succeeded
        | UpdatePhase::Aborted
        | UpdatePhase::RolledBack
        | UpdatePhase::Failed => None,
    };
    event.or_else(|| overdue.then_some(Event::Deadline))
}

/// Why the operation ended up where `event` takes it, for operators.
fn reason(record: &SandboxRecord, op: &Operation, event: &Event, auto_rollback: bool) -> String {
    let name = &record.name;
    let (from, to) = (op.from_revision, op.to_revision);
    let next = if auto_rollback {
        format!("rolling back to revision {from}")
    } else {
        format!(
            "auto-rollback is off: run `berth sandbox rollback {name}` to restore revision {from}"
        )
    };
    match event {
        Event::PullFailed(e) => {
            let image = record.revision(to).map(|r| r.spec.image.as_str()).unwrap_or("the image");
            format!("pulling {image} failed: {e}; revision {from} was never stopped")
        }
        Event::StopFailed(e) => format!("stopping revision {from} failed: {e}; restoring it"),
        Event::StartFailed(e) => format!("revision {to} did not start: {e}; {next}"),
        Event::Unhealthy(e) => format!("revision {to} was unhealthy: {e}; {next}"),
        Event::Deadline => {
            let secs = op.policy.deadline_ms(op.phase).unwrap_or(0) / 1000;
            match op.phase {
                UpdatePhase::Pending | UpdatePhase::Pulling => format!(
                    "the new image was not ready on the node within {secs} s (is the node reachable?); revision {from} was never stopped"
                ),
                UpdatePhase::StoppingOld => format!(
                    "revision {from} did not stop within {secs} s (is the node reachable?); restoring it"
                ),
                UpdatePhase::RollingBack => format!(
                    "revision {from} was not running again within {secs} s (is the node reachable?); berth keeps retrying it with backoff; fix the cause, or roll back to another revision with `berth sandbox rollback {name} --to-revision N`"
                ),
                _ => format!("revision {to} was not healthy within {secs} s; {next}"),
            }
        }
        Event::RollbackFailed(e) => format!(
            "rolling back to revision {from} failed: {e}; berth keeps retrying it with backoff; fix the cause, or roll back to another revision with `berth sandbox rollback {name} --to-revision N`"
        ),
        Event::Begin | Event::Pulled | Event::OldStopped | Event::Started | Event::Healthy | Event::RolledBack | Event::Abort | Event::Deleted => {
            String::new()
        }
    }
}

/// The command committing `event`'s transition, or None if it changes nothing.
pub fn commit(
    record: &SandboxRecord,
    op: &Operation,
    event: &Event,
    now_ms: i64,
) -> Option<Command> {
    let (to, effects) = transition(op.phase, event, &op.policy);
    if to == op.phase {
        return None;
    }
    let switch_to = if effects.contains(&Effect::RunNew) {
        Some(op.to_revision)
    } else if effects.contains(&Effect::RunOld) {
        Some(op.from_revision)
    } else {
        None
    };
    let mark_stable = effects
        .contains(&Effect::MarkStable)
        .then_some(op.to_revision);
    Some(Command::AdvanceOperation {
        name: record.name.clone(),
        uid: record.uid.clone(),
        operation_id: op.id.clone(),
        from: op.phase,
        to,
        reason: reason(record, op, event, op.policy.auto_rollback),
        switch_to,
        mark_stable,
        at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests;
