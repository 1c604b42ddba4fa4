//! The invariants checked on every seed, the chaos suite's, over what the
//! simulation saw:
//!
//! - every operation is terminal, and every delete finished, within the
//!   settle bound after the faults heal;
//! - each sandbox name's history, closed by the final read, is
//!   linearizable: acknowledged writes survive, none is applied twice;
//! - never two running instances of a sandbox (sampled at every step);
//! - no command executed under a term older than the agent's fence;
//! - no orphan: a running container or a volume of no live sandbox;
//! - every update phase change a node applied is a path of the update
//!   state machine (sampled at every step);
//! - no panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_agent::driver::MemoryDriver;
use berth_proto::v1::Phase;
use berth_raft::model::update::{transition, Event, UpdatePhase, UpdatePolicy};

use super::client::Report;
use crate::checker::linearizable::{self, Verdict};
use crate::checker::Violation;
use crate::history::{Op, OpKind, Outcome, Value};

fn violation(kind: &str, detail: String) -> Violation {
    Violation {
        kind: kind.to_string(),
        detail,
    }
}

/// Two running instances of one sandbox, first seen at `at_ms`.
#[derive(Debug, Default)]
pub struct Instances {
    pub doubled: BTreeMap<String, (Vec<String>, u64)>,
}

impl Instances {
    /// Samples the engines now.
    pub fn sample(&mut self, engines: &[(String, Arc<MemoryDriver>)], now_ms: u64) {
        let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (agent, engine) in engines {
            for (name, uid, revision) in engine.running() {
                running
                    .entry(name)
                    .or_default()
                    .push(format!("{agent}:{uid}@r{revision}"));
            }
        }
        for (name, where_) in running {
            if where_.len() > 1 && !self.doubled.contains_key(&name) {
                self.doubled.insert(name, (where_, now_ms));
            }
        }
    }
}

pub struct Seen<'a> {
    pub names: &'a [String],
    pub phases: &'a Phases,
    pub ops: Vec<Op>,
    pub report: &'a Report,
    pub instances: &'a Instances,
    pub executed: &'a [(String, u64, u64)],
    pub panics: &'a [String],
    pub engines: &'a [(String, Arc<MemoryDriver>)],
}

/// Every violation of the seed; the final reads are appended to the ops.
pub fn check(seen: Seen<'_>) -> (Vec<Violation>, Vec<Op>) {
    let mut out = Vec::new();
    let mut ops = seen.ops;
    let report = seen.report;
    if !report.unsettled.is_empty() {
        out.push(violation(
            "not_terminal",
            format!(
                "still in flight {} ms after the faults healed: {}",
                report
                    .settled_ms
                    .unwrap_or(0)
                    .saturating_sub(report.healed_ms),
                report.unsettled.join(", ")
            ),
        ));
    }
    let finals = report.finals.clone().unwrap_or_default();
    let at = report.settled_ms.unwrap_or(u64::MAX - 1);
    if report.settled_ms.is_some() {
        for (i, name) in seen.names.iter().enumerate() {
            let outcome = match finals.get(name) {
                Some(f) => Outcome::Ok(Value::Sandbox {
                    uid: f.uid.clone(),
                    deleting: f.phase == Phase::Deleting as i32,
                }),
                None => Outcome::Failed {
                    code: "NotFound".into(),
                    message: "final read".into(),
                },
            };
            ops.push(Op {
                id: u64::MAX - i as u64,
                client: usize::MAX,
                sandbox: name.clone(),
                kind: OpKind::Get,
                invoke_ms: at,
                complete_ms: Some(at),
                outcome,
            });
        }
    }
    for name in seen.names {
        let mine: Vec<Op> = ops.iter().filter(|o| &o.sandbox == name).cloned().collect();
        if linearizable::check(&mine) == Verdict::Violation {
            out.push(violation(
                "not_linearizable",
                format!(
                    "{name}: no order of its {} operations explains what clients saw",
                    mine.len()
                ),
            ));
        }
    }
    for (name, (where_, at_ms)) in &seen.instances.doubled {
        out.push(violation(
            "two_instances",
            format!("{name} running as {} at {at_ms} ms", where_.join(" and ")),
        ));
    }
    let stale: Vec<_> = seen.executed.iter().filter(|(_, t, f)| t < f).collect();
    if let Some((host, term, fence)) = stale.first() {
        out.push(violation(
            "stale_term_executed",
            format!(
                "{} command(s) executed under a term older than the agent's fence, first on {host}: term {term}, fence {fence}",
                stale.len()
            ),
        ));
    }
    if report.settled_ms.is_some() {
        check_orphans(&finals, seen.engines, &mut out);
    }
    for illegal in &seen.phases.illegal {
        out.push(violation("illegal_phase_change", illegal.clone()));
    }
    if let Some(first) = seen.panics.first() {
        out.push(violation(
            "panic",
            format!("{} panic(s), the first: {first}", seen.panics.len()),
        ));
    }
    (out, ops)
}

fn check_orphans(
    finals: &BTreeMap<String, super::client::Final>,
    engines: &[(String, Arc<MemoryDriver>)],
    out: &mut Vec<Violation>,
) {
    let live = |name: &str, uid: &str| finals.get(name).is_some_and(|f| f.uid == uid);
    for (agent, engine) in engines {
        for (name, uid, revision) in engine.running() {
            if !live(&name, &uid) {
                out.push(violation(
                    "orphan_container",
                    format!("{agent}: {name} (uid {uid}, r{revision}) runs with no live sandbox"),
                ));
            }
        }
        for (volume, name, owner) in engine.volumes() {
            if !live(&name, &owner) {
                out.push(violation(
                    "orphan_volume",
                    format!(
                        "{agent}: volume {volume} of {name} (uid {owner}) with no live sandbox"
                    ),
                ));
            }
        }
    }
}

/// Every phase change of an update or rollback, as each node applied it,
/// must be a path of the update state machine (`berth_raft::model::update`):
/// a phase change committed against a phase the operation had already left
/// (a broken compare-and-set) shows up as a jump the machine cannot make.
#[derive(Debug, Default)]
pub struct Phases {
    /// (node, sandbox, operation) -> phase last seen.
    last: BTreeMap<(String, String, String), UpdatePhase>,
    pub illegal: Vec<String>,
    pub changes: u64,
}

impl Phases {
    /// Samples the applied state of every running control node.
    pub fn sample(&mut self, registry: &super::cluster::Registry, now_ms: u64) {
        let nodes: Vec<(String, Arc<berth_raft::RaftNode>)> = registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, node)| (n.clone(), node.clone()))
            .collect();
        // A crashed node reloads from its disk: start over with it.
        self.last
            .retain(|(h, _, _), _| nodes.iter().any(|(n, _)| n == h));
        for (host, node) in nodes {
            let view = node.state().read();
            for record in view.table.iter() {
                let Some(op) = &record.operation else {
                    continue;
                };
                let key = (host.clone(), record.name.clone(), op.id.clone());
                let before = self.last.insert(key, op.phase);
                if let Some(before) = before.filter(|b| *b != op.phase) {
                    self.changes += 1;
                    if !reachable(before, op.phase, &op.policy) && self.illegal.len() < 5 {
                        self.illegal.push(format!(
                            "{host} applied {} of {} going {} -> {} at {now_ms} ms",
                            op.kind.as_str(),
                            record.name,
                            before.as_str(),
                            op.phase.as_str()
                        ));
                    }
                }
            }
        }
    }
}

/// Whether the update state machine can go from `from` to `to`.
fn reachable(from: UpdatePhase, to: UpdatePhase, policy: &UpdatePolicy) -> bool {
    let events = [
        Event::Begin,
        Event::Pulled,
        Event::PullFailed(String::new()),
        Event::OldStopped,
        Event::StopFailed(String::new()),
        Event::Started,
        Event::StartFailed(String::new()),
        Event::Healthy,
        Event::Unhealthy(String::new()),
        Event::Deadline,
        Event::RolledBack,
        Event::RollbackFailed(String::new()),
        Event::Abort,
        Event::Deleted,
    ];
    let mut seen = vec![from];
    let mut frontier = vec![from];
    while let Some(phase) = frontier.pop() {
        for event in &events {
            let (next, _) = transition(phase, event, policy);
            if next == to {
                return true;
            }
            if !seen.contains(&next) {
                seen.push(next);
                frontier.push(next);
            }
        }
    }
    false
}
