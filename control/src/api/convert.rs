//! Conversions between replicated records and `berth.v1` messages.

use berth_proto::v1;
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

pub fn spec_to_proto(spec: &SandboxSpec) -> v1::SandboxSpec {
    v1::SandboxSpec {
        image: spec.image.clone(),
        policy: spec.policy.clone(),
        env: spec.env.clone().into_iter().collect(),
    }
}

pub fn spec_from_proto(spec: v1::SandboxSpec) -> SandboxSpec {
    SandboxSpec {
        image: spec.image,
        policy: spec.policy,
        env: spec.env.into_iter().collect(),
    }
}

pub fn sandbox_to_proto(record: &SandboxRecord) -> v1::Sandbox {
    v1::Sandbox {
        name: record.name.clone(),
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
    }
}
