//! The replicated state (sandboxes and nodes) and the pure function that
//! applies a command to it. `apply` returns the response and the exact
//! changes to persist, so storage writes them in the same batch as the
//! last-applied log id.
//!
//! Invariants kept here: a sandbox's node, once set, never changes, and its
//! volume is fixed at creation (4); commands about a sandbox carry its uid,
//! so a stale actor cannot touch a re-created sandbox of the same name.

use std::collections::BTreeMap;

use super::auth::Usage;
use super::command::RejectionKind::{
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, StaleTerm,
};
use super::update::{on_operator, Admission, OperatorCommand};
use super::{
    volume_name, AuditEvent, Command, CommandResponse, Desired, KeptVolume, NodeRecord, Phase,
    Proposal, RequestRecord, Revision, SandboxRecord, TenantRecord, TokenRecord, REQUEST_WINDOW,
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
    PutRequest(RequestRecord),
    DeleteRequest(String),
    PutVolume(KeptVolume),
    DeleteVolume(String),
    PutToken(TokenRecord),
    PutTenant(TenantRecord),
    PutAudit(AuditEvent),
    DeleteAudit(LogPos),
}

/// Where a proposal sits in the log: the index of the entry that carried it
/// and its place in that entry's batch (0 for an entry of one proposal).
/// Orders remembered requests and audit events for eviction.
pub type LogPos = (u64, u32);

/// All sandboxes and nodes, by name, and the recent client request ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    sandboxes: BTreeMap<String, SandboxRecord>,
    /// How many sandboxes each node holds (derived from `sandboxes`, kept
    /// in step by `insert` and `remove_sandbox`, so placement and listing
    /// never scan every sandbox).
    placed: BTreeMap<String, usize>,
    /// What each tenant's sandboxes hold (derived from `sandboxes` in the
    /// same way, so a quota check never scans every sandbox either).
    usage: BTreeMap<String, Usage>,
    /// How many sandboxes are in each phase (derived in the same way, so
    /// the phase gauges never scan every sandbox).
    phases: BTreeMap<&'static str, usize>,
    nodes: BTreeMap<String, NodeRecord>,
    requests: BTreeMap<String, RequestRecord>,
    /// Request ids by the log position that first carried them, for eviction.
    request_order: BTreeMap<LogPos, String>,
    /// Kept workspace volumes, by volume name.
    volumes: BTreeMap<String, KeptVolume>,
    /// API tokens (hashes only), by id; revoked ones are kept.
    tokens: BTreeMap<String, TokenRecord>,
    /// Tenants with a quota, by name.
    tenants: BTreeMap<String, TenantRecord>,
    /// The audit trail of client calls, by log position (bounded).
    audit: BTreeMap<LogPos, AuditEvent>,
}

type Applied = (CommandResponse, Vec<Change>);

/// One less under `key`; a count that reaches 0 is removed (so derived
/// counts compare equal however the state was built).
fn decrement<K: Ord + std::borrow::Borrow<str>>(counts: &mut BTreeMap<K, usize>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

pub(super) fn not_found(name: &str) -> Applied {
    (
        CommandResponse::rejected(NotFound, format!("sandbox {name:?} not found")),
        vec![],
    )
}

impl State {
    /// Append the lifecycle events each changed sandbox implies. A rejected
    /// request changes nothing, so it leaves no event (its caller got the
    /// reason); refusals by a node show as the sandbox's Failed message.
    fn record_events(&self, command: &Command, changes: &mut [Change], stamp_ms: Option<i64>) {
        let at_ms = command_time(command).or(stamp_ms).unwrap_or(0);
        for change in changes.iter_mut() {
            let Change::PutSandbox(record) = change else {
                continue;
            };
            let old = self
                .sandboxes
                .get(&record.name)
                .filter(|o| o.uid == record.uid);
            for (kind, message) in crate::model::events::derive(old, record) {
                crate::model::events::push(record, at_ms, kind, message);
            }
        }
    }
}

/// The time a command carries, if any.
fn command_time(command: &Command) -> Option<i64> {
    let ms = match command {
        Command::CreateSandbox { created_at_ms, .. } => *created_at_ms,
        Command::UpdateSandbox { at_ms, .. }
        | Command::RollbackSandbox { at_ms, .. }
        | Command::AdvanceOperation { at_ms, .. }
        | Command::ScheduleSandbox { at_ms, .. }
        | Command::SetSandboxStatus { at_ms, .. } => *at_ms,
        _ => 0,
    };
    (ms > 0).then_some(ms)
}

/// Keep the request's trace on what the command started.
fn stamp_trace(command: &Command, trace: &str, changes: &mut [Change]) {
    let creates = matches!(command, Command::CreateSandbox { .. });
    let starts = matches!(
        command,
        Command::UpdateSandbox { .. } | Command::RollbackSandbox { .. }
    );
    let Some(name) = command.sandbox() else {
        return;
    };
    for change in changes.iter_mut() {
        let Change::PutSandbox(record) = change else {
            continue;
        };
        if record.name != name {
            continue;
        }
        if creates {
            record.trace = trace.to_string();
        }
        if let Some(op) = record
            .operation
            .as_mut()
            .filter(|op| starts && op.is_active())
        {
            if op.trace.is_empty() {
                op.trace = trace.to_string();
            }
        }
    }
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

    /// Sandboxes whose name sorts after `name` (all if None), in order.
    pub fn iter_after(&self, name: Option<&str>) -> impl Iterator<Item = &SandboxRecord> {
        use std::ops::Bound;
        let start = name.map_or(Bound::Unbounded, Bound::Excluded);
        self.sandboxes
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, r)| r)
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
        self.placed.get(node).copied().unwrap_or(0)
    }

    /// How many sandboxes are in each phase (by `Phase::as_str`; a phase
    /// no sandbox was ever in may be missing).
    pub fn phase_counts(&self) -> &BTreeMap<&'static str, usize> {
        &self.phases
    }

    /// All node records, ordered by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Inserts a sandbox record as loaded from storage or a snapshot.
    pub fn insert(&mut self, record: SandboxRecord) {
        if let Some(node) = &record.node {
            *self.placed.entry(node.clone()).or_default() += 1;
        }
        *self.phases.entry(record.phase.as_str()).or_default() += 1;
        // Most puts change a status, not the spec: the usage stays.
        let spec_changed = self
            .sandboxes
            .get(&record.name)
            .is_none_or(|old| old.spec != record.spec);
        if spec_changed {
            self.count_usage(&record, true);
        }
        let old = self.sandboxes.insert(record.name.clone(), record);
        if let Some(old) = old {
            if spec_changed {
                self.count_usage(&old, false);
            }
            self.uncount(old);
        }
    }

    fn remove_sandbox(&mut self, name: &str) {
        if let Some(old) = self.sandboxes.remove(name) {
            self.count_usage(&old, false);
            self.uncount(old);
        }
    }

    /// Takes a replaced or removed record out of the derived counts.
    fn uncount(&mut self, old: SandboxRecord) {
        decrement(&mut self.phases, old.phase.as_str());
        if let Some(node) = old.node {
            decrement(&mut self.placed, node.as_str());
        }
    }

    /// Inserts a node record as loaded from storage or a snapshot.
    pub fn insert_node(&mut self, record: NodeRecord) {
        self.nodes.insert(record.name.clone(), record);
    }

    /// Makes one change to the in-memory state: a change `apply` decided,
    /// or a record loaded from a snapshot.
    pub fn take(&mut self, change: &Change) {
        match change {
            Change::PutSandbox(r) => self.insert(r.clone()),
            Change::DeleteSandbox(name) => {
                self.remove_sandbox(name);
            }
            Change::PutNode(n) => self.insert_node(n.clone()),
            Change::PutRequest(r) => self.insert_request(r.clone()),
            Change::DeleteRequest(id) => {
                if let Some(r) = self.requests.remove(id) {
                    self.request_order.remove(&(r.index, r.slot));
                }
            }
            Change::PutVolume(v) => self.insert_volume(v.clone()),
            Change::DeleteVolume(v) => {
                self.volumes.remove(v);
            }
            Change::PutToken(t) => self.insert_token(t.clone()),
            Change::PutTenant(t) => self.insert_tenant(t.clone()),
            Change::PutAudit(e) => self.insert_audit(e.clone()),
            Change::DeleteAudit(pos) => {
                self.audit.remove(pos);
            }
        }
    }

    /// Inserts a kept volume as loaded from storage or a snapshot.
    pub fn insert_volume(&mut self, volume: KeptVolume) {
        self.volumes.insert(volume.volume.clone(), volume);
    }

    /// Kept volumes, ordered by name.
    pub fn volumes(&self) -> impl Iterator<Item = &KeptVolume> {
        self.volumes.values()
    }

    pub fn volume(&self, name: &str) -> Option<&KeptVolume> {
        self.volumes.get(name)
    }

    /// Inserts a remembered request as loaded from storage or a snapshot.
    pub fn insert_request(&mut self, record: RequestRecord) {
        self.request_order
            .insert((record.index, record.slot), record.id.clone());
        self.requests.insert(record.id.clone(), record);
    }

    /// The remembered requests, oldest first.
    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.request_order
            .values()
            .filter_map(|id| self.requests.get(id))
    }

    /// Applies a proposal carried by the log entry at (`term`, `index`):
    /// refuses a command proposed for another leadership term, answers a
    /// known request id with its first response, and otherwise applies the
    /// command (remembering the response under its request id).
    ///
    /// An entry that carries a [`Command::Batch`] applies each proposal in
    /// it in order, exactly as if each had an entry of its own, and answers
    /// with each one's response.
    pub fn apply_proposal(&mut self, term: u64, index: u64, proposal: &Proposal) -> Applied {
        let Command::Batch { proposals } = &proposal.command else {
            return self.apply_at(term, (index, 0), proposal);
        };
        let mut responses = Vec::with_capacity(proposals.len());
        let mut changes = Vec::new();
        for (slot, inner) in (0u32..).zip(proposals) {
            let (response, more) = self.apply_at(term, (index, slot), inner);
            responses.push(response);
            changes.extend(more);
        }
        (CommandResponse::Batch { responses }, changes)
    }

    fn apply_at(&mut self, term: u64, pos: LogPos, proposal: &Proposal) -> Applied {
        let (response, mut changes) = self.apply_unaudited(term, pos, proposal);
        if let Some(stamp) = &proposal.audit {
            let audit = self.audit_changes(pos, stamp, proposal, &response);
            for change in &audit {
                self.take(change);
            }
            changes.extend(audit);
        }
        (response, changes)
    }

    fn apply_unaudited(&mut self, term: u64, pos: LogPos, proposal: &Proposal) -> Applied {
        if let Some(proposed) = proposal.term {
            if proposed != term {
                let msg = format!(
                    "{} was proposed by the leader of term {proposed}, but the entry is of term {term}",
                    proposal.command.subject()
                );
                return (CommandResponse::rejected(StaleTerm, msg), vec![]);
            }
        }
        let stamp_ms = proposal.audit.as_ref().map(|a| a.at_ms);
        let Some(id) = &proposal.request_id else {
            return self.apply_traced(&proposal.command, &proposal.trace, stamp_ms);
        };
        let subject = proposal.command.subject();
        // The chaos suite's `apply-twice` forgets every request id (see
        // `berth_proto::chaos`); it is set on every node, so replicas agree.
        let remembered = self
            .requests
            .get(id)
            .filter(|_| !berth_proto::chaos::broken("apply-twice"));
        if let Some(first) = remembered {
            if first.subject != subject {
                let msg = format!(
                    "request id {id:?} was already used for {:?}; use a new id for {subject:?}",
                    first.subject
                );
                return (CommandResponse::rejected(InvalidArgument, msg), vec![]);
            }
            return (first.response.clone(), vec![]);
        }
        let (response, mut changes) =
            self.apply_traced(&proposal.command, &proposal.trace, stamp_ms);
        let record = RequestRecord {
            id: id.clone(),
            index: pos.0,
            slot: pos.1,
            subject,
            response: response.clone(),
        };
        let mut remembered = vec![Change::PutRequest(record)];
        let excess = (self.requests.len() + 1).saturating_sub(REQUEST_WINDOW);
        let evicted = self.request_order.values().take(excess).cloned();
        remembered.extend(evicted.map(Change::DeleteRequest).collect::<Vec<_>>());
        for change in &remembered {
            self.take(change);
        }
        changes.extend(remembered);
        (response, changes)
    }

    /// The sandbox `name` if its uid is `uid`.
    pub(super) fn current(&self, name: &str, uid: &str) -> Option<&SandboxRecord> {
        self.sandboxes.get(name).filter(|r| r.uid == uid)
    }

    /// Applies one command. Deterministic: the same state and command give
    /// the same result on every node.
    pub fn apply(&mut self, command: &Command) -> Applied {
        self.apply_traced(command, "", None)
    }

    /// [`State::apply`], keeping `trace` on the sandbox a create makes or
    /// the operation an update or rollback begins.
    /// Lifecycle events are derived here too (`stamp_ms`: the API node's
    /// time of a client's request, for commands that carry none).
    fn apply_traced(&mut self, command: &Command, trace: &str, stamp_ms: Option<i64>) -> Applied {
        let (mut response, mut changes) = self.decide(command);
        if !trace.is_empty() {
            stamp_trace(command, trace, &mut changes);
        }
        self.record_events(command, &mut changes, stamp_ms);
        // The answer shows the record as stored.
        if let CommandResponse::Sandbox { record } = &mut response {
            let stored = changes.iter().find_map(|c| match c {
                Change::PutSandbox(r) if r.name == record.name && r.uid == record.uid => Some(r),
                _ => None,
            });
            if let Some(stored) = stored {
                *record = stored.clone();
            }
        }
        for change in &changes {
            self.take(change);
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
                adopt_volume,
            } => {
                if self.sandboxes.contains_key(name) {
                    let msg = format!("sandbox {name:?} already exists");
                    return (CommandResponse::rejected(AlreadyExists, msg), vec![]);
                }
                if let Some(refused) = self.over_quota(name, None, spec) {
                    return refused;
                }
                if let Some(volume) = adopt_volume {
                    return self.create_adopting(name, uid, spec, *created_at_ms, volume);
                }
                put(SandboxRecord {
                    name: name.clone(),
                    uid: uid.clone(),
                    spec: spec.clone(),
                    revision: 1,
                    created_at_ms: *created_at_ms,
                    phase: Phase::Pending,
                    // With no Ready node the leader's actor would say so
                    // at once, in a second write; the record says it now.
                    message: if self.nodes.values().any(|n| n.ready) {
                        UNSCHEDULED_MESSAGE
                    } else {
                        NO_NODE_MESSAGE
                    }
                    .to_string(),
                    desired: Desired::Running,
                    node: None,
                    container_id: String::new(),
                    volume: volume_name(name, uid),
                    volume_uid: uid.clone(),
                    volume_seeded: false,
                    revisions: vec![Revision {
                        number: 1,
                        spec: spec.clone(),
                        created_at_ms: *created_at_ms,
                        stable: false,
                    }],
                    stable_revision: 0,
                    operation: None,
                    trace: String::new(),
                    events: Vec::new(),
                })
            }
            Command::DeleteSandbox { name, keep_volume } => {
                let Some(record) = self.sandboxes.get(name) else {
                    return not_found(name);
                };
                // A delete ends the operation in progress, if any.
                let record = &abort_for_delete(record);
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
                if let Some(op) = record.active_operation() {
                    let command = match desired {
                        Desired::Stopped => OperatorCommand::Stop,
                        _ => OperatorCommand::Start,
                    };
                    let refused = on_operator(op.phase, command, &op.policy) == Admission::Refuse;
                    if refused && record.desired != *desired {
                        let msg = format!(
                            "{}; stop and start wait until it ends (or roll it back with `berth sandbox rollback {name}`)",
                            op.describe()
                        );
                        return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
                    }
                }
                let mut record = record.clone();
                record.desired = *desired;
                put(record)
            }
            Command::ScheduleSandbox {
                name, uid, node, ..
            } => {
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
                ..
            } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                let mut record = record.clone();
                record.container_id = container_id.clone();
                // A sandbox being deleted stays Deleting: a status observed
                // before the delete was applied must not make an
                // acknowledged delete look undone (found by the simulator,
                // seed 105).
                let deleting = matches!(record.desired, Desired::Deleted { .. });
                if !deleting || *phase == Phase::Deleting {
                    record.phase = *phase;
                    record.message = message.clone();
                }
                if *phase == Phase::Running {
                    record.volume_seeded = true;
                }
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
            Command::RemoveSandbox { name, uid, at_ms } => {
                let Some(record) = self.current(name, uid) else {
                    return not_found(name);
                };
                let mut changes = vec![Change::DeleteSandbox(name.clone())];
                let kept = matches!(record.desired, Desired::Deleted { keep_volume: true });
                if let (true, Some(node)) = (kept, &record.node) {
                    changes.push(Change::PutVolume(KeptVolume {
                        volume: record.volume.clone(),
                        node: node.clone(),
                        sandbox: name.clone(),
                        uid: record.volume_owner().to_string(),
                        kept_at_ms: *at_ms,
                        deleting: false,
                    }));
                }
                (CommandResponse::Deleted { name: name.clone() }, changes)
            }
            Command::DeleteVolume { .. }
            | Command::ForgetVolume { .. }
            | Command::ReplaceNode { .. } => self.decide_volume_or_node(command),
            Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::SetQuota { .. }
            | Command::RecordExec { .. } => self.decide_auth(command),
            // Unpacked by `apply_proposal`; only a nested one gets here.
            Command::Batch { .. } => (
                CommandResponse::rejected(InvalidArgument, "a batch cannot hold another batch"),
                vec![],
            ),
            Command::UpdateSandbox { .. }
            | Command::RollbackSandbox { .. }
            | Command::AdvanceOperation { .. }
            | Command::SetOperationProgress { .. } => self.decide_operation(command),
            Command::RegisterNode {
                name,
                driver,
                data_addr,
                cpus,
                memory_bytes,
                at_ms,
                instance_id,
            } => {
                if let Some(known) = self.nodes.get(name) {
                    let other = !known.instance_id.is_empty() && known.instance_id != *instance_id;
                    if other && !known.replace_allowed {
                        let msg = format!(
                            "node name {name:?} belongs to agent instance {}, not {instance_id}: two agents cannot share a node name (a cloned data dir, or the same --node-name on two hosts). If this machine replaces that node, stop the old agent and run `berth node replace {name}`",
                            known.instance_id
                        );
                        return (CommandResponse::rejected(FailedPrecondition, msg), vec![]);
                    }
                }
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
                    instance_id: instance_id.clone(),
                    replace_allowed: false,
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

/// The record with its active operation (if any) ended because the
/// sandbox is being deleted.
fn abort_for_delete(record: &SandboxRecord) -> SandboxRecord {
    let mut record = record.clone();
    if let Some(op) = record.operation.as_mut().filter(|o| o.is_active()) {
        if let Admission::Abort(phase, _) =
            on_operator(op.phase, OperatorCommand::Delete, &op.policy)
        {
            op.reason = format!("the sandbox was deleted during {}", op.phase.as_str());
            op.phase = phase;
            op.attempts += 1;
        }
    }
    record
}

mod auth;
mod operations;
mod volumes;

#[cfg(test)]
mod tests;
