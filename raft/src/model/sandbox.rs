//! A sandbox record as the state machine stores it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Operation, Revision};

/// What the user asked for; each change makes a new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// OCI image reference.
    pub image: String,
    /// Optional policy document (YAML).
    #[serde(default)]
    pub policy: Option<String>,
    /// Environment for the sandbox process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment, each value sealed by the API node with the
    /// cluster data key (never plaintext here, nor in the log).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Stopped,
    Failed,
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Stopped => "Stopped",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

/// What the user asked the sandbox to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Desired {
    #[default]
    Running,
    Stopped,
    Deleted {
        keep_volume: bool,
    },
}

/// The name of a sandbox's one workspace volume (invariant 4). Derived from
/// the name and uid, so a re-created sandbox of the same name never reuses
/// an old volume by accident.
pub fn volume_name(name: &str, uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("berth-{name}-{short}")
}

/// One sandbox, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub name: String,
    pub uid: String,
    pub spec: SandboxSpec,
    /// Current revision of the spec, starting at 1.
    pub revision: u64,
    /// Unix milliseconds, assigned by the node that accepted the create.
    pub created_at_ms: i64,
    pub phase: Phase,
    /// Why the sandbox is in its phase, in one line.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub desired: Desired,
    /// The node holding the sandbox's volume; once set, it never changes.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub container_id: String,
    /// The workspace volume, fixed at creation.
    #[serde(default)]
    pub volume: String,
    /// The uid the volume's labels carry: the sandbox's own, or, for an
    /// adopted volume, the uid of the sandbox it was kept from. Empty in
    /// records written before adoption existed: the sandbox's own.
    #[serde(default)]
    pub volume_uid: String,
    /// The sandbox has run on its volume (or adopted one): from now on a
    /// missing volume is lost data, never to be recreated empty.
    #[serde(default)]
    pub volume_seeded: bool,
    /// Every revision of the spec, oldest first; `spec` is `revision`'s.
    #[serde(default)]
    pub revisions: Vec<Revision>,
    /// The revision most recently verified healthy (0: none yet).
    #[serde(default)]
    pub stable_revision: u64,
    /// The current update or rollback, or the last one.
    #[serde(default)]
    pub operation: Option<Operation>,
    /// W3C `traceparent` of the request that created the sandbox: its
    /// first start is part of that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
    /// The last lifecycle events, oldest first (see [`super::events`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<super::events::LifecycleEvent>,
}

impl SandboxRecord {
    /// The uid the workspace volume is labelled with.
    pub fn volume_owner(&self) -> &str {
        if self.volume_uid.is_empty() {
            &self.uid
        } else {
            &self.volume_uid
        }
    }

    pub fn revision(&self, number: u64) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == number)
    }

    /// The operation in progress, if any.
    pub fn active_operation(&self) -> Option<&Operation> {
        self.operation.as_ref().filter(|o| o.is_active())
    }

    /// Makes `number` the current revision (its spec becomes `spec`).
    pub(crate) fn switch_to(&mut self, number: u64) {
        if let Some(rev) = self.revision(number).cloned() {
            self.revision = number;
            self.spec = rev.spec;
        }
    }

    pub(crate) fn mark_stable(&mut self, number: u64) {
        if let Some(rev) = self.revisions.iter_mut().find(|r| r.number == number) {
            rev.stable = true;
            self.stable_revision = number;
        }
    }
}
