//! When this node builds a snapshot (and so purges its log): once the
//! writes applied since the last snapshot reach both `--snapshot-every` and
//! the number of records in the state ([`SharedState::snapshot_due`]).
//! openraft's own policy only counts log entries, so at 100,000 sandboxes
//! it rewrote the whole state every thousand entries.
//!
//! Each node decides for itself, on its own log; openraft never builds two
//! snapshots at once and ignores a trigger while one is being built.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::SharedState;
use crate::Raft;

/// A trigger that did not lead to a snapshot (one was already being
/// built) is repeated after this long.
const RETRIGGER: Duration = Duration::from_secs(1);

/// Watches what is applied and triggers snapshots when due; ends with Raft.
pub(super) async fn run(raft: Raft, state: SharedState, at_least: u64) {
    let mut metrics = raft.metrics();
    let mut triggered: Option<Instant> = None;
    while metrics.changed().await.is_ok() {
        if !state.snapshot_due(at_least) {
            triggered = None;
            continue;
        }
        if triggered.is_some_and(|at| at.elapsed() < RETRIGGER) {
            continue;
        }
        triggered = Some(Instant::now());
        tracing::debug!(writes = state.writes_since_snapshot(), "snapshot due");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}
