//! The switch of the chaos suite's test-only faults, shared by `berthd`
//! and `berth-agent`: `BERTH_CHAOS_BREAK` names faults (comma separated)
//! that deliberately break an invariant, so `berth-chaos --break` can show
//! its checker catches real violations. Unset, nothing changes; never set
//! it outside the chaos suite. The faults are listed where they act:
//! `control/src/chaos.rs` and `agent/src/chaos.rs`.

use std::sync::OnceLock;

const ENV: &str = "BERTH_CHAOS_BREAK";

/// Whether the fault `what` is switched on.
pub fn broken(what: &str) -> bool {
    static FAULTS: OnceLock<Vec<String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var(ENV)
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|f| f == what)
}
