//! Conversions between replicated records and `berth.v1` messages.

use std::collections::BTreeMap;

use berth_proto::v1;
use berth_raft::model::auth::split_key;
use berth_raft::model::update::UpdatePhase;
use berth_raft::model::{Operation, Revision};
use berth_raft::{Desired, Phase, SandboxRecord, SandboxSpec};

pub fn phase_to_proto(phase: Phase) -> v1::Phase {
    match phase {
        Phase::Pending => v1::Phase::Pending,
        Phase::Starting => v1::Phase::Starting,
        Phase::Running => v1::Phase::Running,
        Phase::Stopped => v1::Phase::Stopped,
        Phase::Failed => v1::Phase::Failed,
        Phase::Deleting => v1::Phase::Deleting,
    }
}

/// The spec as answers show it: secret values redacted.
pub fn spec_to_proto(spec: &SandboxSpec) -> v1::SandboxSpec {
    v1::SandboxSpec {
        image: spec.image.clone(),
        policy: spec.policy.clone(),
        env: spec.env.clone().into_iter().collect(),
        secret_env: spec
            .secret_env
            .keys()
            .map(|k| (k.clone(), crate::secrets::REDACTED.to_string()))
            .collect(),
    }
}

/// The spec of a request, and its secret env (plaintext, to be sealed).
pub fn spec_from_proto(spec: v1::SandboxSpec) -> (SandboxSpec, BTreeMap<String, String>) {
    let spec_out = SandboxSpec {
        image: spec.image,
        policy: spec.policy,
        env: spec.env.into_iter().collect(),
        secret_env: BTreeMap::new(),
    };
    (spec_out, spec.secret_env.into_iter().collect())
}

/// The record as its tenant sees it: the key split into tenant and name.
pub fn sandbox_to_proto(record: &SandboxRecord) -> v1::Sandbox {
    let (tenant, name) = split_key(&record.name);
    v1::Sandbox {
        name: name.to_string(),
        tenant: tenant.to_string(),
        uid: record.uid.clone(),
        spec: Some(spec_to_proto(&record.spec)),
        revision: record.revision,
        created_at_unix_ms: record.created_at_ms,
        phase: phase_to_proto(record.phase) as i32,
        message: record.message.clone(),
        node: record.node.clone().unwrap_or_default(),
        container_id: record.container_id.clone(),
        volume: record.volume.clone(),
        desired: match record.desired {
            Desired::Running => v1::DesiredState::Running,
            Desired::Stopped => v1::DesiredState::Stopped,
            Desired::Deleted { .. } => v1::DesiredState::Deleted,
        } as i32,
        stable_revision: record.stable_revision,
        operation: record
            .operation
            .as_ref()
            .map(|op| operation_to_proto(name, op)),
    }
}

pub fn operation_phase_to_proto(phase: UpdatePhase) -> v1::OperationPhase {
    match phase {
        UpdatePhase::Pending => v1::OperationPhase::Pending,
        UpdatePhase::Pulling => v1::OperationPhase::Pulling,
        UpdatePhase::StoppingOld => v1::OperationPhase::StoppingOld,
        UpdatePhase::StartingNew => v1::OperationPhase::StartingNew,
        UpdatePhase::Verifying => v1::OperationPhase::Verifying,
        UpdatePhase::Succeeded => v1::OperationPhase::Succeeded,
        UpdatePhase::Aborted => v1::OperationPhase::Aborted,
        UpdatePhase::RollingBack => v1::OperationPhase::RollingBack,
        UpdatePhase::RolledBack => v1::OperationPhase::RolledBack,
        UpdatePhase::Failed => v1::OperationPhase::Failed,
    }
}

pub fn operation_to_proto(sandbox: &str, op: &Operation) -> v1::Operation {
    v1::Operation {
        id: op.id.clone(),
        kind: op.kind.as_str().to_string(),
        sandbox: sandbox.to_string(),
        from_revision: op.from_revision,
        to_revision: op.to_revision,
        phase: operation_phase_to_proto(op.phase) as i32,
        attempts: op.attempts,
        started_at_unix_ms: op.started_at_ms,
        updated_at_unix_ms: op.updated_at_ms,
        reason: op.reason.clone(),
        terminal: op.phase.is_terminal(),
        progress: op.progress.clone(),
        deadline_unix_ms: op.policy.deadline_ms(op.phase).map_or(0, |d| {
            op.phase_started_at_ms + i64::try_from(d).unwrap_or(i64::MAX / 2)
        }),
    }
}

pub fn revision_to_proto(rev: &Revision, current: u64) -> v1::Revision {
    v1::Revision {
        number: rev.number,
        spec: Some(spec_to_proto(&rev.spec)),
        created_at_unix_ms: rev.created_at_ms,
        stable: rev.stable,
        current: rev.number == current,
    }
}
