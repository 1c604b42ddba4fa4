//! Applying update, rollback and phase-change commands.
//!
//! Invariants kept here: one operation at a time per sandbox; an update
//! identical to the current revision, or a stale compare-and-swap, is
//! refused and changes nothing; phase changes are compare-and-set, so a
//! stale actor cannot move an operation twice; revisions are never deleted
//! and the volume is never touched (4).

use super::{not_found, put, Applied, State};
use crate::model::command::RejectionKind::{FailedPrecondition, NotFound};
use crate::model::update::{transition, Effect, Event};
use crate::model::{
    Command, CommandResponse, Desired, Operation, OperationKind, Revision, SandboxRecord,
};

/// Drops the oldest revisions that are neither stable, current, nor part
/// of the operation, so at most `keep` unstable ones remain (0: keep all):
/// a record does not grow without end, and every revision one can roll
/// back to (the stable ones) stays.
fn prune_revisions(record: &mut SandboxRecord, keep: u32) {
    if keep == 0 {
        return;
    }
    let pinned: Vec<u64> = [
        Some(record.revision),
        record.operation.as_ref().map(|o| o.from_revision),
        record.operation.as_ref().map(|o| o.to_revision),
    ]
    .into_iter()
    .flatten()
    .collect();
    let unstable = record.revisions.iter().filter(|r| !r.stable).count();
    let mut excess = unstable.saturating_sub(keep as usize);
    record.revisions.retain(|r| {
        let drop = excess > 0 && !r.stable && !pinned.contains(&r.number);
        if drop {
            excess -= 1;
        }
        !drop
    });
}

fn refuse(message: String) -> Applied {
    (
        CommandResponse::rejected(FailedPrecondition, message),
        vec![],
    )
}

impl State {
    pub(super) fn decide_operation(&self, command: &Command) -> Applied {
        match command {
            Command::UpdateSandbox {
                name,
                operation_id,
                spec,
                expected_revision,
                policy,
                at_ms,
                keep_revisions,
            } => {
                let Some(record) = self.sandbox(name) else {
                    return not_found(name);
                };
                if let Some(expected) = expected_revision {
                    if *expected != record.revision {
                        return refuse(format!(
                            "sandbox {name:?} is at revision {}, not the expected {expected}",
                            record.revision
                        ));
                    }
                }
                if let Some(op) = record.active_operation() {
                    return refuse(format!("{}; wait for it or roll back", op.describe()));
                }
                if record.desired != Desired::Running || record.node.is_none() {
                    return refuse(format!(
                        "only a placed, running sandbox can be updated ({name:?} is {})",
                        record.phase.as_str()
                    ));
                }
                if *spec == record.spec {
                    return refuse(format!(
                        "the update is identical to the current revision {}",
                        record.revision
                    ));
                }
                if let Some(refused) = self.over_quota(name, Some(&record.spec), spec) {
                    return refused;
                }
                let mut record = record.clone();
                let number = record.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
                record.revisions.push(Revision {
                    number,
                    spec: spec.clone(),
                    created_at_ms: *at_ms,
                    stable: false,
                });
                record.operation = Some(Operation::new(
                    operation_id,
                    OperationKind::Update,
                    record.revision,
                    number,
                    *policy,
                    *at_ms,
                ));
                prune_revisions(&mut record, *keep_revisions);
                put(record)
            }
            Command::RollbackSandbox {
                name,
                operation_id,
                to_revision,
                policy,
                at_ms,
            } => {
                let Some(record) = self.sandbox(name) else {
                    return not_found(name);
                };
                if matches!(record.desired, Desired::Deleted { .. }) {
                    return refuse(format!("sandbox {name:?} is being deleted"));
                }
                if let Some(op) = record.active_operation() {
                    if to_revision.is_some_and(|n| n != op.from_revision) {
                        return refuse(format!(
                            "{}; it can only be rolled back to revision {}",
                            op.describe(),
                            op.from_revision
                        ));
                    }
                    let (phase, effects) = transition(op.phase, &Event::Abort, &op.policy);
                    if phase == op.phase {
                        return refuse(format!("{}; it is already going back", op.describe()));
                    }
                    let mut record = record.clone();
                    let from = op.from_revision;
                    if let Some(op) = record.operation.as_mut() {
                        op.phase = phase;
                        op.attempts += 1;
                        op.updated_at_ms = *at_ms;
                        op.phase_started_at_ms = *at_ms;
                        op.reason = "rollback requested by an operator".to_string();
                    }
                    if effects.contains(&Effect::RunOld) {
                        record.switch_to(from);
                    }
                    return put(record);
                }
                // As for an update: a new rollback needs a running, placed
                // sandbox to verify. A stopped one would wait out the whole
                // health timeout for a container nobody starts, then roll
                // back again (found by the simulator, seed 28).
                if record.desired != Desired::Running || record.node.is_none() {
                    return refuse(format!(
                        "only a placed, running sandbox can be rolled back ({name:?} is {}); start it first",
                        record.phase.as_str()
                    ));
                }
                let target = match to_revision {
                    Some(n) => *n,
                    None => match record
                        .revisions
                        .iter()
                        .rev()
                        .find(|r| r.stable && r.number != record.revision)
                    {
                        Some(r) => r.number,
                        None => {
                            return refuse(format!(
                                "sandbox {name:?} has no stable revision other than the current one ({}); name one with --to-revision",
                                record.revision
                            ))
                        }
                    },
                };
                let Some(target_rev) = record.revision(target) else {
                    let msg = format!("sandbox {name:?} has no revision {target}");
                    return (CommandResponse::rejected(NotFound, msg), vec![]);
                };
                if target_rev.spec == record.spec {
                    return refuse(format!(
                        "revision {target} has the same spec as the current revision {}; nothing to roll back",
                        record.revision
                    ));
                }
                let mut record = record.clone();
                record.operation = Some(Operation::new(
                    operation_id,
                    OperationKind::Rollback,
                    record.revision,
                    target,
                    *policy,
                    *at_ms,
                ));
                put(record)
            }
            Command::AdvanceOperation {
                name,
                uid,
                operation_id,
                from,
                to,
                reason,
                switch_to,
                mark_stable,
                at_ms,
            } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                let current = record.operation.as_ref().filter(|o| &o.id == operation_id);
                match current {
                    // `skip-cas` (test-only, `BERTH_CHAOS_BREAK`): a phase
                    // change applies whatever phase the operation is in.
                    Some(op) if op.phase == *from || berth_proto::chaos::broken("skip-cas") => {}
                    Some(op) => {
                        return refuse(format!(
                            "stale phase change: {} (expected {})",
                            op.describe(),
                            from.as_str()
                        ))
                    }
                    None => {
                        return refuse(format!(
                            "operation {operation_id} is not the sandbox's operation"
                        ))
                    }
                }
                let mut record = record.clone();
                if let Some(op) = record.operation.as_mut() {
                    op.phase = *to;
                    op.attempts += 1;
                    op.updated_at_ms = *at_ms;
                    op.phase_started_at_ms = *at_ms;
                    op.progress.clear();
                    if !reason.is_empty() {
                        op.reason = reason.clone();
                    }
                }
                if let Some(n) = switch_to {
                    record.switch_to(*n);
                }
                if let Some(n) = mark_stable {
                    record.mark_stable(*n);
                }
                put(record)
            }
            Command::SetOperationProgress {
                name,
                uid,
                operation_id,
                progress,
            } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                let pulling = record.operation.as_ref().is_some_and(|o| {
                    &o.id == operation_id && o.phase == crate::model::update::UpdatePhase::Pulling
                });
                if !pulling {
                    return refuse(format!(
                        "operation {operation_id} of {name:?} is not pulling"
                    ));
                }
                let mut record = record.clone();
                if let Some(op) = record.operation.as_mut() {
                    op.progress = progress.chars().take(200).collect();
                }
                put(record)
            }
            _ => (
                CommandResponse::rejected(FailedPrecondition, "not an operation command"),
                vec![],
            ),
        }
    }
}
