//! Crash points for the chaos tests: with `BERTH_CHAOS_CRASH_AFTER_PHASE`
//! set to an update phase name (for example `StartingNew`), the leader
//! aborts the whole process right after committing an operation's move into
//! that phase and before carrying out its effects: the worst moment to die,
//! and the same as `kill -9` for everything on disk. Unset, nothing happens.

use std::sync::OnceLock;

const ENV: &str = "BERTH_CHAOS_CRASH_AFTER_PHASE";

/// This node's test-only faults for the chaos suite (switched on by
/// `BERTH_CHAOS_BREAK`, see `berth_proto::chaos`):
///
/// - `forget-early`: a deleted sandbox is forgotten as soon as its node
///   reports nothing of it, without waiting for the node to answer a Remove
///   (the bug the chaos suite found: volumes outlive their sandboxes);
/// - `stale-stamp`: commands to agents carry the term before this leader's
///   (a deposed leader's commands; agents must refuse them).
pub use berth_proto::chaos::broken;

/// Called after an operation's phase change to `phase` was committed.
pub fn after_phase_committed(phase: &str) {
    static CRASH_AFTER: OnceLock<Option<String>> = OnceLock::new();
    let target = CRASH_AFTER.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if target.as_deref() == Some(phase) {
        tracing::error!(
            phase,
            "chaos: crashing right after committing this phase ({ENV})"
        );
        std::process::abort();
    }
}
