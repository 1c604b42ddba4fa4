//! Crash points for the chaos tests: with `BERTH_CHAOS_CRASH_AFTER_PHASE`
//! set to an update phase name (for example `StartingNew`), the leader
//! aborts the whole process right after committing an operation's move into
//! that phase and before carrying out its effects: the worst moment to die,
//! and the same as `kill -9` for everything on disk. Unset, nothing happens.

use std::sync::OnceLock;

const ENV: &str = "BERTH_CHAOS_CRASH_AFTER_PHASE";

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
