//! Rendering answers as aligned tables (default) or JSON (`-o json`).
//! JSON keys are part of the CLI's interface: sandboxes have `name`, `tenant`, `uid`,
//! `image`, `policy`, `env`, `revision`, `phase`, `message`, `created_at_unix_ms`;
//! cluster status has `leader`, `term`, `members` (`id`, `addr`, `role`).

use berth_proto::v1::{ClusterStatus, MemberRole, Phase, Sandbox};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn phase_name(phase: i32) -> &'static str {
    match Phase::try_from(phase) {
        Ok(Phase::Pending) => "Pending",
        Ok(Phase::Starting) => "Starting",
        Ok(Phase::Running) => "Running",
        Ok(Phase::Stopped) => "Stopped",
        Ok(Phase::Failed) => "Failed",
        Ok(Phase::Deleting) => "Deleting",
        Ok(Phase::Unspecified) | Err(_) => "Unknown",
    }
}

fn role_name(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Leader) => "leader",
        Ok(MemberRole::Follower) => "follower",
        Ok(MemberRole::Learner) => "learner",
        Ok(MemberRole::Unspecified) | Err(_) => "unknown",
    }
}

pub fn sandbox_json(s: &Sandbox) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let env: serde_json::Map<String, Value> = spec
        .env
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let secret_env: serde_json::Map<String, Value> = spec
        .secret_env
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "name": s.name,
        "tenant": s.tenant,
        "secret_env": secret_env,
        "uid": s.uid,
        "image": spec.image,
        "policy": spec.policy,
        "env": env,
        "revision": s.revision,
        "phase": phase_name(s.phase),
        "message": s.message,
        "created_at_unix_ms": s.created_at_unix_ms,
        "node": s.node,
        "container_id": s.container_id,
        "volume": s.volume,
        "stable_revision": s.stable_revision,
        "operation": s.operation.as_ref().map(crate::operations::operation_json),
    })
}

/// Prints rows with columns padded to their widest cell.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn print_sandboxes(format: Format, sandboxes: &[Sandbox], as_list: bool) {
    match format {
        Format::Json if as_list => {
            let list: Vec<Value> = sandboxes.iter().map(sandbox_json).collect();
            println!("{}", Value::Array(list));
        }
        Format::Json => {
            for s in sandboxes {
                println!("{}", sandbox_json(s));
            }
        }
        Format::Table => {
            let mut rows = vec![["NAME", "PHASE", "NODE", "REVISION", "IMAGE", "MESSAGE"]
                .map(String::from)
                .to_vec()];
            for s in sandboxes {
                let node = if s.node.is_empty() {
                    "-"
                } else {
                    s.node.as_str()
                };
                rows.push(vec![
                    s.name.clone(),
                    phase_name(s.phase).to_string(),
                    node.to_string(),
                    s.revision.to_string(),
                    s.spec.as_ref().map(|x| x.image.clone()).unwrap_or_default(),
                    s.message.clone(),
                ]);
            }
            print_table(&rows);
            if !as_list {
                if let Some(op) = sandboxes.first().and_then(|s| s.operation.as_ref()) {
                    println!("{}", operation_line(op));
                }
            }
        }
    }
}

/// One line about a sandbox's current or last operation; the reason of a
/// failed one names the way out (rollback --to-revision, start).
pub fn operation_line(op: &berth_proto::v1::Operation) -> String {
    let phase = crate::operations::phase_name(op.phase);
    let mut line = format!(
        "operation: {} {} (revision {} -> {}) {phase}",
        op.kind, op.id, op.from_revision, op.to_revision
    );
    if !op.progress.is_empty() {
        line.push_str(&format!(" ({})", op.progress));
    }
    if !op.reason.is_empty() {
        line.push_str(&format!(": {}", op.reason));
    }
    line
}

pub fn print_status(format: Format, status: &ClusterStatus) {
    match format {
        Format::Json => {
            let members: Vec<Value> = status
                .members
                .iter()
                .map(|m| json!({ "id": m.id, "addr": m.addr, "role": role_name(m.role) }))
                .collect();
            let leader = if status.leader_id == 0 {
                Value::Null
            } else {
                json!(status.leader_id)
            };
            println!(
                "{}",
                json!({
                    "leader": leader,
                    "term": status.term,
                    "members": members,
                    "node": status.node_id,
                    "last_applied_index": status.last_applied_index,
                    "sandbox_actors": status.sandbox_actors,
                })
            );
        }
        Format::Table => {
            let leader = if status.leader_id == 0 {
                "none".to_string()
            } else {
                status.leader_id.to_string()
            };
            println!(
                "leader: {leader}  term: {}  (answered by node {})",
                status.term, status.node_id
            );
            let mut rows = vec![["ID", "ADDR", "ROLE"].map(String::from).to_vec()];
            for m in &status.members {
                rows.push(vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role_name(m.role).to_string(),
                ]);
            }
            print_table(&rows);
        }
    }
}

/// One line per change, for `berth sandbox watch`.
pub fn print_watch_line(format: Format, s: &Sandbox) {
    match format {
        Format::Json => println!("{}", sandbox_json(s)),
        Format::Table => println!("{}  {:<9} {}", s.name, phase_name(s.phase), s.message),
    }
}

pub fn print_agents(format: Format, agents: &[berth_proto::v1::Agent]) {
    match format {
        Format::Json => {
            let list: Vec<Value> = agents
                .iter()
                .map(|a| {
                    json!({ "name": a.name, "driver": a.driver, "ready": a.ready, "message": a.message,
                            "sandboxes": a.sandboxes, "data_addr": a.data_addr,
                            "instance_id": a.instance_id })
                })
                .collect();
            println!("{}", Value::Array(list));
        }
        Format::Table => {
            let mut rows = vec![["NAME", "DRIVER", "STATUS", "SANDBOXES", "MESSAGE"]
                .map(String::from)
                .to_vec()];
            for a in agents {
                let status = if a.ready { "Ready" } else { "NotReady" };
                rows.push(vec![
                    a.name.clone(),
                    a.driver.clone(),
                    status.to_string(),
                    a.sandboxes.to_string(),
                    a.message.clone(),
                ]);
            }
            print_table(&rows);
        }
    }
}

pub fn print_revisions(format: Format, list: &berth_proto::v1::ListRevisionsResponse) {
    match format {
        Format::Json => {
            let revisions: Vec<Value> = list
                .revisions
                .iter()
                .map(|r| {
                    let spec = r.spec.clone().unwrap_or_default();
                    json!({ "revision": r.number, "image": spec.image, "policy": spec.policy,
                            "env": spec.env, "created_at_unix_ms": r.created_at_unix_ms,
                            "stable": r.stable, "current": r.current })
                })
                .collect();
            println!(
                "{}",
                json!({ "current": list.current, "stable_revision": list.stable_revision, "revisions": revisions })
            );
        }
        Format::Table => {
            let mut rows = vec![["REVISION", "IMAGE", "POLICY", "STABLE", "CURRENT"]
                .map(String::from)
                .to_vec()];
            for r in &list.revisions {
                let spec = r.spec.clone().unwrap_or_default();
                let policy = if spec.policy.is_some() { "yes" } else { "-" };
                rows.push(vec![
                    r.number.to_string(),
                    spec.image,
                    policy.to_string(),
                    if r.stable { "yes" } else { "no" }.to_string(),
                    if r.current { "*" } else { "" }.to_string(),
                ]);
            }
            print_table(&rows);
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub fn print_events(format: Format, events: &[berth_proto::v1::AuditEvent]) {
    match format {
        Format::Json => {
            let events: Vec<Value> = events
                .iter()
                .map(|e| {
                    json!({ "index": e.index, "at_unix_ms": e.at_unix_ms, "principal": e.principal,
                            "tenant": e.tenant,
                            "action": e.action, "detail": e.detail, "request_id": e.request_id,
                            "outcome": e.outcome })
                })
                .collect();
            println!("{}", json!(events));
        }
        Format::Table => {
            let mut rows = vec![["TIME (UTC)", "PRINCIPAL", "ACTION", "OUTCOME"]
                .map(String::from)
                .to_vec()];
            for e in events {
                let action = if e.detail.is_empty() {
                    e.action.clone()
                } else {
                    format!("{}: {}", e.action, e.detail)
                };
                rows.push(vec![
                    utc(e.at_unix_ms),
                    e.principal.clone(),
                    action,
                    e.outcome.lines().next().unwrap_or("").to_string(),
                ]);
            }
            print_table(&rows);
        }
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_871_045_000), "2026-11-28 13:04:05");
    }
}
