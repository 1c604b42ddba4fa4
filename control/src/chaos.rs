//! Crash points for the chaos tests: with `BERTH_CHAOS_CRASH_AFTER_PHASE`
//! set to an update phase name (for example `StartingNew`), the leader
//! aborts the whole process right after committing an operation's move into
//! that phase and before carrying out its effects: the worst moment to die,
//! and the same as `kill -9` for everything on disk. Unset, nothing happens.

use std::sync::OnceLock;

const ENV: &str = "BERTH_CHAOS_CRASH_AFTER_PHASE";
const BREAK: &str = "BERTH_CHAOS_BREAK";

/// Test-only faults for the chaos suite's proof that its checker catches
/// real violations: with `BERTH_CHAOS_BREAK` naming a fault (a comma
/// separated list), this node deliberately breaks an invariant. Unset,
/// nothing changes. Never set it outside `berth-chaos --break`.
///
/// - `forget-early`: a deleted sandbox is forgotten as soon as its node
///   reports nothing of it, without waiting for the node to answer a Remove
///   (the bug the chaos suite found: volumes outlive their sandboxes);
/// - `stale-stamp`: commands to agents carry the term before this leader's
///   (a deposed leader's commands; agents must refuse them).
pub fn broken(what: &str) -> bool {
    static FAULTS: OnceLock<Vec<String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var(BREAK)
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|f| f == what)
}

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
