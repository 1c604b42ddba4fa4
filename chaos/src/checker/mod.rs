//! The checks at the end of every run, after the faults have healed:
//!
//! - every operation is terminal and every delete has finished, within the
//!   settle time (longer than the sum of the phase deadlines the workload's
//!   updates can reach);
//! - each sandbox name's history is linearizable (see [`linearizable`]):
//!   acknowledged creates, updates and deletes are reflected, none applied
//!   twice or lost;
//! - every acknowledged marker file is intact in its workspace, and a
//!   workspace only disappears with a delete of its sandbox;
//! - no orphan containers or volumes;
//! - no command executed under a term older than the agent's fence (the
//!   agents' "executing" audit lines);
//! - never two running containers of one sandbox (the engine samples);
//! - no process panicked (the logs; failpoint aborts are not panics).

pub mod linearizable;
mod logs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_proto::v1::{ListSandboxesRequest, OperationPhase, Phase, StartSandboxRequest};
use berth_testkit::TestCluster;
use serde::Serialize;

use crate::history::{millis, Op, OpKind, Outcome, Value};
use crate::sampler::Samples;
use crate::workload::{exec, marker_content};

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: String,
    pub detail: String,
}

fn violation(kind: &str, detail: String) -> Violation {
    Violation {
        kind: kind.to_string(),
        detail,
    }
}

/// What the checks looked at, besides the violations.
#[derive(Debug, Default, Serialize)]
pub struct Checked {
    pub histories: usize,
    pub inconclusive: usize,
    pub markers_verified: usize,
    pub workspaces_unverifiable: usize,
    pub audit_lines: usize,
    pub samples: u64,
    /// How often each failpoint aborted a process (from the logs).
    pub failpoints_hit: BTreeMap<String, u64>,
}

struct Live {
    uid: String,
    phase: i32,
    operation_terminal: bool,
    op_phase: i32,
}

async fn list(cluster: &mut TestCluster, prefix: &str) -> Option<BTreeMap<String, Live>> {
    for id in cluster.running() {
        let Ok(mut client) = cluster.sandboxes(id).await else {
            continue;
        };
        if let Ok(list) = client.list_sandboxes(ListSandboxesRequest::default()).await {
            return Some(
                list.into_inner()
                    .sandboxes
                    .into_iter()
                    .filter(|s| s.name.starts_with(prefix))
                    .map(|s| {
                        let terminal = s.operation.as_ref().is_none_or(|o| o.terminal);
                        let op_phase = s.operation.as_ref().map_or(0, |o| o.phase);
                        (
                            s.name,
                            Live {
                                uid: s.uid,
                                phase: s.phase,
                                operation_terminal: terminal,
                                op_phase,
                            },
                        )
                    })
                    .collect(),
            );
        }
    }
    None
}

/// Waits until every operation is terminal and every delete done.
async fn settle(
    cluster: &mut TestCluster,
    prefix: &str,
    limit: Duration,
    out: &mut Vec<Violation>,
) -> BTreeMap<String, Live> {
    let until = Instant::now() + limit;
    loop {
        let now = list(cluster, prefix).await;
        let quiet = now.as_ref().is_some_and(|m| {
            m.values()
                .all(|l| l.operation_terminal && l.phase != Phase::Deleting as i32)
        });
        if quiet || Instant::now() > until {
            let Some(now) = now else {
                out.push(violation(
                    "unavailable",
                    "no control node answered after the faults healed".into(),
                ));
                return BTreeMap::new();
            };
            for (name, l) in &now {
                if !l.operation_terminal {
                    let phase = OperationPhase::try_from(l.op_phase)
                        .map(|p| p.as_str_name())
                        .unwrap_or("?");
                    out.push(violation(
                        "operation_not_terminal",
                        format!(
                            "{name}: still {phase} {}s after the faults healed",
                            limit.as_secs()
                        ),
                    ));
                }
                if l.phase == Phase::Deleting as i32 {
                    out.push(violation(
                        "delete_not_finished",
                        format!("{name} still Deleting"),
                    ));
                }
            }
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts stopped sandboxes so their workspaces can be read, and waits
/// (bounded) until they run.
async fn start_all(
    cluster: &mut TestCluster,
    prefix: &str,
    live: &BTreeMap<String, Live>,
) -> BTreeMap<String, Live> {
    let leader = cluster.running().first().copied().unwrap_or(1);
    if let Ok(mut client) = cluster.sandboxes(leader).await {
        for (name, l) in live {
            if l.phase != Phase::Running as i32 {
                let _ = client
                    .start_sandbox(StartSandboxRequest {
                        name: name.clone(),
                        request_id: String::new(),
                    })
                    .await;
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let now = list(cluster, prefix).await.unwrap_or_default();
        if now.values().all(|l| l.phase == Phase::Running as i32) || Instant::now() > until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads every live workspace: its identity and its marker files.
async fn workspaces(
    cluster: &mut TestCluster,
    live: &BTreeMap<String, Live>,
    checked: &mut Checked,
) -> BTreeMap<String, (String, BTreeMap<u64, String>)> {
    let mut out = BTreeMap::new();
    let id = cluster.running().first().copied().unwrap_or(1);
    let Ok(mut client) = cluster.sandboxes(id).await else {
        return out;
    };
    for (name, l) in live {
        if l.phase != Phase::Running as i32 {
            checked.workspaces_unverifiable += 1;
            continue;
        }
        let script = "cat /sandbox/chaos/id 2>/dev/null || echo none; for f in /sandbox/chaos/m-*; do [ -f \"$f\" ] && echo \"$f $(cat \"$f\")\"; done; true";
        match exec(&mut client, name.clone(), script).await {
            Ok((0, text)) => {
                let mut lines = text.lines();
                let ws = lines.next().unwrap_or("none").trim().to_string();
                let markers = lines
                    .filter_map(|line| {
                        let (path, content) = line.split_once(' ')?;
                        let n = path.rsplit("m-").next()?.parse().ok()?;
                        Some((n, content.trim().to_string()))
                    })
                    .collect();
                out.insert(name.clone(), (ws, markers));
            }
            _ => checked.workspaces_unverifiable += 1,
        }
    }
    out
}

/// Every acknowledged marker is intact in its workspace; a workspace only
/// disappears with a delete of its sandbox after the marker was written.
fn check_markers(
    ops: &[Op],
    found: &BTreeMap<String, (String, BTreeMap<u64, String>)>,
    checked: &mut Checked,
    out: &mut Vec<Violation>,
) {
    for (name, (ws, markers)) in found {
        for (n, content) in markers {
            if *content != marker_content(*n) {
                out.push(violation(
                    "marker_corrupt",
                    format!("{name} workspace {ws}: m-{n} holds {content:?}"),
                ));
            }
        }
    }
    let by_ws: BTreeMap<&str, &str> = found
        .iter()
        .map(|(name, (ws, _))| (ws.as_str(), name.as_str()))
        .collect();
    for op in ops {
        let (OpKind::Marker { n }, Outcome::Ok(Value::Workspace(ws))) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        match by_ws.get(ws.as_str()) {
            Some(name) => {
                let present = found.get(*name).is_some_and(|(_, m)| m.contains_key(n));
                if present {
                    checked.markers_verified += 1;
                } else {
                    out.push(violation(
                        "marker_lost",
                        format!("{name} workspace {ws}: acknowledged m-{n} is missing"),
                    ));
                }
            }
            None => {
                // Gone: legitimate only if a delete of its sandbox may have
                // taken effect after the marker was written.
                let deleted = ops.iter().any(|d| {
                    d.sandbox == op.sandbox
                        && d.kind == OpKind::Delete
                        && d.complete_ms.is_none_or(|c| c >= op.invoke_ms)
                        && !matches!(d.outcome, Outcome::Failed { .. })
                });
                let unverifiable = found.get(&op.sandbox).is_none() && !deleted;
                if !deleted && !unverifiable {
                    out.push(violation(
                        "workspace_lost",
                        format!(
                            "{}: workspace {ws} (m-{n} acknowledged) replaced without a delete",
                            op.sandbox
                        ),
                    ));
                }
            }
        }
    }
}

/// No container or volume of these sandboxes but the live ones.
fn check_orphans(prefix: &str, live: &BTreeMap<String, Live>, out: &mut Vec<Violation>) {
    let listing = |args: &[&str]| -> Vec<(String, String)> {
        std::process::Command::new("podman")
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        let mut p = l.split_whitespace();
                        Some((p.next()?.to_string(), p.next().unwrap_or("").to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let format = "{{ index .Labels \"berth.sandbox\" }} {{ index .Labels \"berth.uid\" }}";
    let containers = listing(&[
        "ps",
        "-a",
        "--filter",
        "label=berth.sandbox",
        "--format",
        format,
    ]);
    let volumes = listing(&[
        "volume",
        "ls",
        "--filter",
        "label=berth.sandbox",
        "--format",
        "{{ index .Labels \"berth.sandbox\" }} {{ index .Labels \"berth.uid\" }}",
    ]);
    for (what, items) in [("container", containers), ("volume", volumes)] {
        for (name, uid) in items.into_iter().filter(|(n, _)| n.starts_with(prefix)) {
            let known = live.get(&name).is_some_and(|l| l.uid == uid);
            if !known {
                out.push(violation(
                    &format!("orphan_{what}"),
                    format!("{what} of {name} (uid {uid}) with no live sandbox"),
                ));
            }
        }
    }
}

/// Runs every check; the final reads are appended to the history.
pub async fn check(
    cluster: &mut TestCluster,
    prefix: &str,
    names: &[String],
    mut ops: Vec<Op>,
    samples: &Samples,
    settle_for: Duration,
    started: Instant,
) -> (Vec<Violation>, Checked, Vec<Op>) {
    let mut out = Vec::new();
    let mut checked = Checked {
        samples: samples.taken,
        ..Checked::default()
    };
    let live = settle(cluster, prefix, settle_for, &mut out).await;
    // The final state of every name, as reads at the end of the history.
    let at = millis(started.elapsed());
    for (i, name) in names.iter().enumerate() {
        let outcome = match live.get(name) {
            Some(l) => Outcome::Ok(Value::Sandbox {
                uid: l.uid.clone(),
                deleting: l.phase == Phase::Deleting as i32,
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
    for name in names {
        let mine: Vec<Op> = ops.iter().filter(|o| &o.sandbox == name).cloned().collect();
        checked.histories += 1;
        match linearizable::check(&mine) {
            linearizable::Verdict::Linearizable => {}
            linearizable::Verdict::Inconclusive => checked.inconclusive += 1,
            linearizable::Verdict::Violation => out.push(violation(
                "not_linearizable",
                format!(
                    "{name}: {} operations; see the history in the JSON report",
                    mine.len()
                ),
            )),
        }
    }
    let running = start_all(cluster, prefix, &live).await;
    let found = workspaces(cluster, &running, &mut checked).await;
    check_markers(&ops, &found, &mut checked, &mut out);
    check_orphans(prefix, &running, &mut out);
    logs::check_audit(cluster, &mut checked, &mut out);
    logs::check_panics(cluster, &mut out);
    checked.failpoints_hit = logs::failpoints_hit(cluster);
    for (name, (most, at)) in &samples.most_running {
        if *most > 1 {
            out.push(violation(
                "two_instances",
                format!("{name}: {most} containers running at {at} ms"),
            ));
        }
    }
    (out, checked, ops)
}
