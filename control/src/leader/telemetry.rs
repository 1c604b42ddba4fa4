//! The leader's share of traces and metrics: the span a command to an
//! agent is sent from (in the trace of the request that caused it), and
//! the metrics of finished operation phases. Observability only: nothing
//! here changes what the actors decide.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_raft::model::update::UpdatePhase;
use berth_raft::model::{Operation, Phase, SandboxRecord};
use berth_telemetry::metrics::{self, KindOutcome, PhaseLabel};
use berth_telemetry::propagate;

/// The trace a command for `record` belongs to: its active operation's,
/// else, until it first ran, its create's; none otherwise (a restart of a
/// long-running sandbox is not part of the request that created it).
fn trace_of(record: &SandboxRecord) -> &str {
    if let Some(op) = record.active_operation() {
        return &op.trace;
    }
    if record.container_id.is_empty() && !record.volume_seeded {
        return &record.trace;
    }
    ""
}

/// Open (and close) the leader's span for sending `op` to the sandbox's
/// agent; its traceparent, to carry inside the command.
pub fn command_trace(record: &SandboxRecord, op: &str, term: u64) -> String {
    let parent = trace_of(record);
    if parent.is_empty() {
        return String::new();
    }
    let span = tracing::info_span!(
        "leader.command",
        otel.name = %format!("leader {op}"),
        sandbox = %record.name,
        revision = record.revision,
        berth.term = term,
        node = record.node.as_deref().unwrap_or_default(),
    );
    propagate::continue_from(&span, parent);
    span.in_scope(propagate::current_traceparent)
}

/// Record that `op` left its phase for `to` after `elapsed_ms`.
pub fn phase_ended(op: &Operation, to: UpdatePhase, elapsed_ms: u64) {
    let m = metrics::get();
    m.phase_duration
        .get_or_create(&PhaseLabel {
            phase: op.phase.as_str().to_string(),
        })
        .observe(elapsed_ms as f64 / 1000.0);
    if to.is_terminal() {
        m.operations
            .get_or_create(&KindOutcome {
                kind: op.kind.as_str().to_string(),
                outcome: to.as_str().to_string(),
            })
            .inc();
    }
}

/// Set the sandboxes-by-phase gauges from the table's counts.
pub fn count_phases(counts: &BTreeMap<&'static str, usize>) {
    let m = metrics::get();
    // Every phase is always exported (0 when no sandbox is in it).
    let all = [
        Phase::Pending,
        Phase::Starting,
        Phase::Running,
        Phase::Stopped,
        Phase::Failed,
        Phase::Deleting,
    ];
    for phase in all.map(Phase::as_str) {
        m.sandboxes
            .get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            })
            .set(counts.get(phase).map_or(0, |&n| n as i64));
    }
}

/// The actor records a new status for `record`.
pub fn status_changed(record: &SandboxRecord, phase: Phase, container_id: &str) {
    let m = metrics::get();
    let first_run = record.container_id.is_empty() && !record.volume_seeded;
    if phase == Phase::Running && record.phase != Phase::Running && first_run {
        let ms = crate::clock::now_ms() - record.created_at_ms;
        m.time_to_running.observe(ms.max(0) as f64 / 1000.0);
    }
    if !record.container_id.is_empty()
        && !container_id.is_empty()
        && container_id != record.container_id
    {
        m.container_restarts.inc();
    }
}

/// This node became leader `after` ago and every sandbox now has its actor.
pub fn leader_ready(after: Duration) {
    let m = metrics::get();
    m.leader_changes.inc();
    m.failover_duration.observe(after.as_secs_f64());
    // A trace of its own: a failover is nobody's request.
    let span = tracing::info_span!(
        "leader.ready",
        otel.name = "leader ready",
        failover_ms = after.as_millis() as u64,
    );
    span.in_scope(|| {
        tracing::info!(
            after_ms = after.as_millis() as u64,
            "leader ready: every sandbox actor running"
        );
    });
}
