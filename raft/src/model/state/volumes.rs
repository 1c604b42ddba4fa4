//! Applying kept-volume and node-identity commands: adopting a kept volume
//! into a new sandbox, deleting and forgetting kept volumes, and letting a
//! new agent instance take over a node name.
//!
//! Invariants kept here: a kept volume is adopted by at most one sandbox,
//! which is placed on the volume's node (4); a volume being deleted cannot
//! be adopted; a node name is held by one agent instance unless an
//! operator hands it over (7).

use super::{put, Applied, Change, State};
use crate::model::auth::split_key;
use crate::model::command::RejectionKind::{FailedPrecondition, NotFound};
use crate::model::{
    Command, CommandResponse, Desired, Phase, Revision, SandboxRecord, SandboxSpec,
};

fn volume_not_found(volume: &str) -> Applied {
    let msg = format!("no kept volume {volume:?} (see `berth volume list`)");
    (CommandResponse::rejected(NotFound, msg), vec![])
}

impl State {
    /// A new sandbox on the kept `volume`, placed on its node.
    pub(super) fn create_adopting(
        &self,
        name: &str,
        uid: &str,
        spec: &SandboxSpec,
        created_at_ms: i64,
        volume: &str,
    ) -> Applied {
        // Another tenant's kept volume is as good as absent.
        let Some(kept) = self
            .volume(volume)
            .filter(|v| split_key(&v.sandbox).0 == split_key(name).0)
        else {
            return volume_not_found(volume);
        };
        if kept.deleting {
            let msg = format!("kept volume {volume:?} is being deleted");
            return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
        }
        let record = SandboxRecord {
            name: name.to_string(),
            uid: uid.to_string(),
            spec: spec.clone(),
            revision: 1,
            created_at_ms,
            phase: Phase::Starting,
            message: format!("adopting volume {volume} on node {}", kept.node),
            desired: Desired::Running,
            node: Some(kept.node.clone()),
            container_id: String::new(),
            volume: kept.volume.clone(),
            volume_uid: kept.uid.clone(),
            volume_seeded: true,
            revisions: vec![Revision {
                number: 1,
                spec: spec.clone(),
                created_at_ms,
                stable: false,
            }],
            stable_revision: 0,
            operation: None,
            trace: String::new(),
            events: Vec::new(),
        };
        let (response, mut changes) = put(record);
        changes.push(Change::DeleteVolume(volume.to_string()));
        (response, changes)
    }

    pub(super) fn decide_volume_or_node(&self, command: &Command) -> Applied {
        match command {
            Command::DeleteVolume { volume } => {
                let Some(kept) = self.volume(volume) else {
                    return volume_not_found(volume);
                };
                let mut kept = kept.clone();
                kept.deleting = true;
                (
                    CommandResponse::Volume {
                        volume: kept.clone(),
                    },
                    vec![Change::PutVolume(kept)],
                )
            }
            Command::ForgetVolume { volume } => {
                if self.volume(volume).is_none() {
                    return volume_not_found(volume);
                }
                (
                    CommandResponse::VolumeForgotten {
                        volume: volume.clone(),
                    },
                    vec![Change::DeleteVolume(volume.clone())],
                )
            }
            Command::ReplaceNode { name } => {
                let Some(node) = self.node(name) else {
                    let msg = format!("node {name:?} is not registered");
                    return (CommandResponse::rejected(NotFound, msg), vec![]);
                };
                if node.ready {
                    let msg = format!(
                        "node {name:?} is Ready: its agent is connected; stop it before replacing it"
                    );
                    return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
                }
                let mut node = node.clone();
                node.replace_allowed = true;
                node.message = "waiting for a replacement agent".to_string();
                (
                    CommandResponse::Node {
                        record: node.clone(),
                    },
                    vec![Change::PutNode(node)],
                )
            }
            _ => (
                CommandResponse::rejected(FailedPrecondition, "not a volume or node command"),
                vec![],
            ),
        }
    }
}
