//! The replicated state (sandboxes and nodes) and the pure function that
//! applies a command to it. `apply` returns the response and the exact
//! changes to persist, so storage writes them in the same batch as the
//! last-applied log id.
//!
//! Invariants kept here: a sandbox's node, once set, never changes, and its
//! volume is fixed at creation (4); commands about a sandbox carry its uid,
//! so a stale actor cannot touch a re-created sandbox of the same name.

use std::collections::BTreeMap;

use super::command::RejectionKind::{AlreadyExists, FailedPrecondition, NotFound};
use super::{
    volume_name, Command, CommandResponse, Desired, NodeRecord, Phase, Revision, SandboxRecord,
};

/// Message of a sandbox that no node agent can take.
pub const NO_NODE_MESSAGE: &str = "no node available";
/// Message of a sandbox just created.
pub const UNSCHEDULED_MESSAGE: &str = "waiting to be scheduled";

/// A change to persist after applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PutSandbox(SandboxRecord),
    DeleteSandbox(String),
    PutNode(NodeRecord),
}

/// All sandboxes and nodes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    sandboxes: BTreeMap<String, SandboxRecord>,
    nodes: BTreeMap<String, NodeRecord>,
}

type Applied = (CommandResponse, Vec<Change>);

pub(super) fn not_found(name: &str) -> Applied {
    (
        CommandResponse::rejected(NotFound, format!("sandbox {name:?} not found")),
        vec![],
    )
}

pub(super) fn put(record: SandboxRecord) -> Applied {
    (
        CommandResponse::Sandbox {
            record: record.clone(),
        },
        vec![Change::PutSandbox(record)],
    )
}

impl State {
    pub fn get(&self, name: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(name)
    }

    /// All sandbox records, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &SandboxRecord> {
        self.sandboxes.values()
    }

    pub fn len(&self) -> usize {
        self.sandboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty()
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    /// How many sandboxes are placed on `node`.
    pub fn sandboxes_on(&self, node: &str) -> usize {
        self.sandboxes
            .values()
            .filter(|r| r.node.as_deref() == Some(node))
            .count()
    }

    /// All node records, ordered by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Inserts a sandbox record as loaded from storage or a snapshot.
    pub fn insert(&mut self, record: SandboxRecord) {
        self.sandboxes.insert(record.name.clone(), record);
    }

    /// Inserts a node record as loaded from storage or a snapshot.
    pub fn insert_node(&mut self, record: NodeRecord) {
        self.nodes.insert(record.name.clone(), record);
    }

    /// The sandbox `name` if its uid is `uid`.
    pub(super) fn current(&self, name: &str, uid: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(name).filter(|r| r.uid == uid)
    }

    /// Applies one command. Deterministic: the same state and command give
    /// the same result on every node.
    pub fn apply(&mut self, command: &Command) -> Applied {
        let (response, changes) = self.decide(command);
        for change in &changes {
            match change {
                Change::PutSandbox(r) => self.insert(r.clone()),
                Change::DeleteSandbox(name) => {
                    self.sandboxes.remove(name);
                }
                Change::PutNode(n) => self.insert_node(n.clone()),
            }
        }
        (response, changes)
    }

    pub(super) fn sandbox(&self, name: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(name)
    }

    fn decide(&self, command: &Command) -> Applied {
        match command {
            Command::CreateSandbox {
                name,
                uid,
                spec,
                created_at_ms,
            } => {
                if self.sandboxes.contains_key(name) {
                    let msg = format!("sandbox {name:?} already exists");
                    return (CommandResponse::rejected(AlreadyExists, msg), vec![]);
                }
                put(SandboxRecord {
                    name: name.clone(),
                    uid: uid.clone(),
                    spec: spec.clone(),
                    revision: 1,
                    created_at_ms: *created_at_ms,
                    phase: Phase::Pending,
                    message: UNSCHEDULED_MESSAGE.to_string(),
                    desired: Desired::Running,
                    node: None,
                    container_id: String::new(),
                    volume: volume_name(name, uid),
                    revisions: vec![Revision {
                        number: 1,
                        spec: spec.clone(),
                        created_at_ms: *created_at_ms,
                        stable: false,
                    }],
                    stable_revision: 0,
                    operation: None,
                })
            }
            Command::DeleteSandbox { name, keep_volume } => {
                let Some(record) = self.sandboxes.get(name) else {
                    return not_found(name);
                };
                match &record.node {
                    None => (
                        CommandResponse::Deleted { name: name.clone() },
                        vec![Change::DeleteSandbox(name.clone())],
                    ),
                    Some(node) => {
                        let mut record = record.clone();
                        record.desired = Desired::Deleted {
                            keep_volume: *keep_volume,
                        };
                        record.phase = Phase::Deleting;
                        record.message = format!("deleting on node {node}");
                        put(record)
                    }
                }
            }
            Command::SetDesired { name, desired } => {
                let Some(record) = self.sandboxes.get(name) else {
                    return not_found(name);
                };
                if matches!(record.desired, Desired::Deleted { .. }) {
                    let msg = format!("sandbox {name:?} is being deleted");
                    return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
                }
                if matches!(desired, Desired::Deleted { .. }) {
                    let msg = "use DeleteSandbox to delete a sandbox";
                    return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
                }
                let mut record = record.clone();
                record.desired = *desired;
                put(record)
            }
            Command::ScheduleSandbox { name, uid, node } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                if !self.nodes.contains_key(node) {
                    let msg = format!("node {node:?} is not registered");
                    return (CommandResponse::rejected(NotFound, msg), vec![]);
                }
                match &record.node {
                    Some(current) if current != node => {
                        let msg =
                            format!("sandbox {name:?} lives on node {current}; it cannot move");
                        (CommandResponse::rejected(FailedPrecondition, msg), vec![])
                    }
                    _ => {
                        let mut record = record.clone();
                        record.node = Some(node.clone());
                        if record.phase == Phase::Pending {
                            record.phase = Phase::Starting;
                        }
                        record.message = format!("scheduled on node {node}");
                        put(record)
                    }
                }
            }
            Command::SetSandboxStatus {
                name,
                uid,
                phase,
                message,
                container_id,
            } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                let mut record = record.clone();
                record.phase = *phase;
                record.message = message.clone();
                record.container_id = container_id.clone();
                // Running outside an operation verifies the current revision.
                let verified = *phase == Phase::Running
                    && record.active_operation().is_none()
                    && record.revision(record.revision).is_some_and(|r| !r.stable);
                if verified {
                    let current = record.revision;
                    record.mark_stable(current);
                }
                put(record)
            }
            Command::RemoveSandbox { name, uid } => {
                if self.current(name, uid).is_none() {
                    return not_found(name);
                }
                (
                    CommandResponse::Deleted { name: name.clone() },
                    vec![Change::DeleteSandbox(name.clone())],
                )
            }
            Command::UpdateSandbox { .. }
            | Command::RollbackSandbox { .. }
            | Command::AdvanceOperation { .. } => self.decide_operation(command),
            Command::RegisterNode {
                name,
                driver,
                data_addr,
                cpus,
                memory_bytes,
                at_ms,
            } => {
                let registered_at_ms = self.nodes.get(name).map_or(*at_ms, |n| n.registered_at_ms);
                let record = NodeRecord {
                    name: name.clone(),
                    driver: driver.clone(),
                    data_addr: data_addr.clone(),
                    cpus: *cpus,
                    memory_bytes: *memory_bytes,
                    ready: true,
                    message: "registered".to_string(),
                    registered_at_ms,
                    changed_at_ms: *at_ms,
                };
                (
                    CommandResponse::Node {
                        record: record.clone(),
                    },
                    vec![Change::PutNode(record)],
                )
            }
            Command::SetNodeReady {
                name,
                ready,
                message,
                at_ms,
            } => {
                let Some(node) = self.nodes.get(name) else {
                    let msg = format!("node {name:?} is not registered");
                    return (CommandResponse::rejected(NotFound, msg), vec![]);
                };
                let mut record = node.clone();
                record.ready = *ready;
                record.message = message.clone();
                record.changed_at_ms = *at_ms;
                (
                    CommandResponse::Node {
                        record: record.clone(),
                    },
                    vec![Change::PutNode(record)],
                )
            }
        }
    }
}

mod operations;

#[cfg(test)]
mod tests;
