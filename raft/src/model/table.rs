//! The sandbox table and the pure function that applies a command to it.
//! `apply` returns the response and the exact changes to persist, so storage
//! writes them in the same batch as the last-applied log id.

use std::collections::BTreeMap;

use super::{Command, CommandResponse, Phase, RejectionKind, SandboxRecord};

/// Message of a sandbox that no node agent has picked up yet.
pub const NO_NODE_MESSAGE: &str = "no node available";

/// A change to persist after applying a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(SandboxRecord),
    Delete(String),
}

/// All sandboxes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxTable {
    sandboxes: BTreeMap<String, SandboxRecord>,
}

impl SandboxTable {
    pub fn get(&self, name: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(name)
    }

    /// All records, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &SandboxRecord> {
        self.sandboxes.values()
    }

    pub fn len(&self) -> usize {
        self.sandboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty()
    }

    /// Inserts a record as loaded from storage or a snapshot.
    pub fn insert(&mut self, record: SandboxRecord) {
        self.sandboxes.insert(record.name.clone(), record);
    }

    /// Applies one command. Deterministic: the same table and command give
    /// the same result on every node.
    pub fn apply(&mut self, command: &Command) -> (CommandResponse, Vec<Change>) {
        match command {
            Command::CreateSandbox {
                name,
                uid,
                spec,
                created_at_ms,
            } => {
                if self.sandboxes.contains_key(name) {
                    return (
                        CommandResponse::rejected(
                            RejectionKind::AlreadyExists,
                            format!("sandbox {name:?} already exists"),
                        ),
                        vec![],
                    );
                }
                let record = SandboxRecord {
                    name: name.clone(),
                    uid: uid.clone(),
                    spec: spec.clone(),
                    revision: 1,
                    created_at_ms: *created_at_ms,
                    phase: Phase::Pending,
                    message: NO_NODE_MESSAGE.to_string(),
                };
                self.insert(record.clone());
                (
                    CommandResponse::Sandbox {
                        record: record.clone(),
                    },
                    vec![Change::Put(record)],
                )
            }
            Command::DeleteSandbox { name } => match self.sandboxes.remove(name) {
                Some(_) => (
                    CommandResponse::Deleted { name: name.clone() },
                    vec![Change::Delete(name.clone())],
                ),
                None => (
                    CommandResponse::rejected(
                        RejectionKind::NotFound,
                        format!("sandbox {name:?} not found"),
                    ),
                    vec![],
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SandboxSpec;

    fn create(name: &str) -> Command {
        Command::CreateSandbox {
            name: name.into(),
            uid: format!("uid-{name}"),
            spec: SandboxSpec {
                image: "busybox:1".into(),
                policy: None,
                env: Default::default(),
            },
            created_at_ms: 42,
        }
    }

    #[test]
    fn create_is_pending_with_no_node() {
        let mut table = SandboxTable::default();
        let (resp, changes) = table.apply(&create("a"));
        let CommandResponse::Sandbox { record } = resp else {
            panic!("unexpected {resp:?}")
        };
        assert_eq!(record.phase, Phase::Pending);
        assert_eq!(record.message, NO_NODE_MESSAGE);
        assert_eq!(record.revision, 1);
        assert_eq!(record.created_at_ms, 42);
        assert_eq!(changes, vec![Change::Put(record)]);
    }

    #[test]
    fn duplicate_create_is_rejected_and_changes_nothing() {
        let mut table = SandboxTable::default();
        table.apply(&create("a"));
        let before = table.clone();
        let (resp, changes) = table.apply(&create("a"));
        assert!(matches!(
            resp,
            CommandResponse::Rejected { rejection } if rejection.kind == RejectionKind::AlreadyExists
        ));
        assert!(changes.is_empty());
        assert_eq!(table, before);
    }

    #[test]
    fn delete_unknown_is_not_found_and_delete_known_removes() {
        let mut table = SandboxTable::default();
        let (resp, _) = table.apply(&Command::DeleteSandbox { name: "x".into() });
        assert!(matches!(
            resp,
            CommandResponse::Rejected { rejection } if rejection.kind == RejectionKind::NotFound
        ));
        table.apply(&create("x"));
        let (resp, changes) = table.apply(&Command::DeleteSandbox { name: "x".into() });
        assert_eq!(resp, CommandResponse::Deleted { name: "x".into() });
        assert_eq!(changes, vec![Change::Delete("x".into())]);
        assert!(table.is_empty());
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            create("a"),
            create("b"),
            create("a"),
            Command::DeleteSandbox { name: "a".into() },
        ];
        let mut t1 = SandboxTable::default();
        let mut t2 = SandboxTable::default();
        for c in &cmds {
            assert_eq!(t1.apply(c), t2.apply(c));
        }
        assert_eq!(t1, t2);
    }
}
