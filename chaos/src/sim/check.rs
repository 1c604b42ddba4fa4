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
//! - no panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_agent::driver::MemoryDriver;
use berth_proto::v1::Phase;

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
    for (host, term, fence) in seen.executed {
        if term < fence {
            out.push(violation(
                "stale_term_executed",
                format!("{host} executed a command of term {term} with its fence at {fence}"),
            ));
        }
    }
    if report.settled_ms.is_some() {
        check_orphans(&finals, seen.engines, &mut out);
    }
    for panic in seen.panics {
        out.push(violation("panic", panic.clone()));
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
