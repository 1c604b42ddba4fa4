//! `berth sandbox describe` and the lifecycle event lines of `berth
//! sandbox events`: the human view of one sandbox, from the same API every
//! client uses (the sandbox, its revisions, its events, the node list).

use berth_proto::v1::{
    GetSandboxRequest, LifecycleEvent, ListAgentsRequest, ListRevisionsRequest, OperationPhase,
    Phase, Sandbox, SandboxEventsRequest,
};
use serde_json::{json, Value};

use crate::client::Control;
use crate::output::{phase_name, print_table, sandbox_json, utc, Format};
use crate::Failure;

/// How many events `describe` shows.
const LAST_EVENTS: usize = 10;

fn when(ms: i64) -> String {
    if ms > 0 {
        utc(ms)
    } else {
        "-".to_string()
    }
}

fn event_json(e: &LifecycleEvent) -> Value {
    json!({"seq": e.seq, "at_unix_ms": e.at_unix_ms, "kind": e.kind, "message": e.message, "revision": e.revision})
}

/// Print lifecycle events (a table, with its header when `header`).
pub fn print_lifecycle(format: Format, events: &[LifecycleEvent], header: bool) {
    match format {
        Format::Json => {
            for e in events {
                println!("{}", event_json(e));
            }
        }
        Format::Table => {
            let mut rows = Vec::new();
            if header {
                rows.push(
                    ["TIME (UTC)", "REV", "KIND", "MESSAGE"]
                        .map(String::from)
                        .to_vec(),
                );
            }
            for e in events {
                rows.push(vec![
                    when(e.at_unix_ms),
                    e.revision.to_string(),
                    e.kind.clone(),
                    e.message.clone(),
                ]);
            }
            print_table(&rows);
        }
    }
}

/// One line saying why a sandbox is not running, or None when it is.
pub fn why_not_running(s: &Sandbox, node_ready: Option<bool>) -> Option<String> {
    let phase = Phase::try_from(s.phase).unwrap_or(Phase::Unspecified);
    if phase == Phase::Running {
        return None;
    }
    let why = match (phase, s.node.is_empty(), node_ready) {
        (Phase::Stopped, ..) => "it was stopped (berth sandbox start brings it back)".to_string(),
        (Phase::Deleting, ..) => "it is being deleted".to_string(),
        (_, true, _) => format!("not placed yet: {}", s.message),
        (_, false, Some(false)) => format!(
            "its node {} is not Ready (the agent is down or unreachable); {}",
            s.node, s.message
        ),
        _ => s.message.clone(),
    };
    Some(why)
}

fn restarts(events: &[LifecycleEvent]) -> usize {
    events.iter().filter(|e| e.kind == "Restarted").count()
}

fn started_at(events: &[LifecycleEvent]) -> i64 {
    events
        .iter()
        .rev()
        .find(|e| e.kind == "Started" || e.kind == "Restarted")
        .map_or(0, |e| e.at_unix_ms)
}

pub async fn describe(control: &Control, format: Format, name: String) -> Result<u8, Failure> {
    let mut sandboxes = control.sandboxes();
    let s = sandboxes
        .get_sandbox(GetSandboxRequest {
            name: name.clone(),
            consistency: 0,
        })
        .await?
        .into_inner();
    let revisions = sandboxes
        .list_revisions(ListRevisionsRequest { name: name.clone() })
        .await?
        .into_inner();
    let events = sandboxes
        .sandbox_events(SandboxEventsRequest { name })
        .await?
        .into_inner()
        .lifecycle;
    let agents = control
        .cluster()
        .list_agents(ListAgentsRequest {})
        .await
        .map(|r| r.into_inner().agents)
        .unwrap_or_default();
    let node_ready = agents.iter().find(|a| a.name == s.node).map(|a| a.ready);
    let why = why_not_running(&s, node_ready);
    let last: Vec<LifecycleEvent> = events
        .iter()
        .skip(events.len().saturating_sub(LAST_EVENTS))
        .cloned()
        .collect();
    if matches!(format, Format::Json) {
        let revs: Vec<Value> = revisions
            .revisions
            .iter()
            .map(|r| json!({"number": r.number, "image": r.spec.as_ref().map(|s| s.image.clone()), "stable": r.stable, "current": r.current}))
            .collect();
        let out = json!({
            "sandbox": sandbox_json(&s),
            "node_ready": node_ready,
            "restarts": restarts(&events),
            "started_at_unix_ms": started_at(&events),
            "revisions": revs,
            "events": last.iter().map(event_json).collect::<Vec<_>>(),
            "why_not_running": why,
        });
        println!("{out}");
        return Ok(0);
    }
    let spec = s.spec.clone().unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        (
            "Name".into(),
            format!("{}  (uid {}, tenant {})", s.name, s.uid, s.tenant),
        ),
        (
            "Image".into(),
            format!(
                "{}  (revision {}, stable {})",
                spec.image, s.revision, s.stable_revision
            ),
        ),
        (
            "Phase".into(),
            format!("{}: {}", phase_name(s.phase), s.message),
        ),
    ];
    let node = match (&s.node[..], node_ready) {
        ("", _) => "-".to_string(),
        (n, Some(true)) => format!("{n} (Ready)"),
        (n, Some(false)) => format!("{n} (NOT Ready)"),
        (n, None) => format!("{n} (unknown to the cluster)"),
    };
    lines.push(("Node".into(), node));
    let container = if s.container_id.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{}  started {}  restarts {}",
            &s.container_id[..s.container_id.len().min(24)],
            when(started_at(&events)),
            restarts(&events)
        )
    };
    lines.push(("Container".into(), container));
    lines.push(("Volume".into(), s.volume.clone()));
    if !spec.env.is_empty() || !spec.secret_env.is_empty() {
        let mut keys: Vec<String> = spec.env.keys().cloned().collect();
        keys.extend(spec.secret_env.keys().map(|k| format!("{k} (secret)")));
        keys.sort();
        lines.push(("Env".into(), keys.join(", ")));
    }
    if spec.policy.is_some() {
        lines.push((
            "Policy".into(),
            "yes (berth sandbox history shows it)".into(),
        ));
    }
    if let Some(op) = s.operation.as_ref() {
        let phase = OperationPhase::try_from(op.phase)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("OPERATION_PHASE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let mut text = format!(
            "{} {} r{} -> r{}: {}",
            op.kind, op.id, op.from_revision, op.to_revision, phase
        );
        if !op.terminal {
            text.push_str(&format!("  (deadline {})", when(op.deadline_unix_ms)));
        }
        if !op.reason.is_empty() {
            text.push_str(&format!("; {}", op.reason));
        }
        lines.push(("Operation".into(), text));
    }
    let revs: Vec<String> = revisions
        .revisions
        .iter()
        .map(|r| {
            let mut marks = Vec::new();
            if r.current {
                marks.push("current");
            }
            if r.stable {
                marks.push("stable");
            }
            let image = r.spec.as_ref().map(|s| s.image.as_str()).unwrap_or("");
            if marks.is_empty() {
                format!("r{} {image}", r.number)
            } else {
                format!("r{} {image} ({})", r.number, marks.join(", "))
            }
        })
        .collect();
    lines.push(("Revisions".into(), revs.join("; ")));
    if let Some(why) = &why {
        lines.push(("Not running".into(), why.clone()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &lines {
        println!("{k:<width$}  {v}");
    }
    println!();
    println!("Events (last {}):", last.len());
    print_lifecycle(format, &last, true);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_a_sandbox_is_not_running() {
        let mut s = Sandbox {
            phase: Phase::Running as i32,
            node: "n1".into(),
            message: "running".into(),
            ..Sandbox::default()
        };
        assert_eq!(why_not_running(&s, Some(true)), None);
        s.phase = Phase::Failed as i32;
        s.message = "image \"x\" not found".into();
        assert_eq!(
            why_not_running(&s, Some(true)).unwrap(),
            "image \"x\" not found"
        );
        assert!(why_not_running(&s, Some(false))
            .unwrap()
            .contains("not Ready"));
        s.node.clear();
        assert!(why_not_running(&s, None)
            .unwrap()
            .starts_with("not placed yet"));
    }
}
