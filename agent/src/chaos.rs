//! Test-only faults for the chaos suite's proof that its checker catches
//! real violations: with `BERTH_CHAOS_BREAK` naming a fault (a comma
//! separated list), the agent deliberately breaks an invariant. Unset,
//! nothing changes. Never set it outside `berth-chaos --break`.
//!
//! - `second-container`: every container the driver creates gets a running
//!   twin with the same labels and volume (breaks invariant 5);
//! - `skip-fencing`: commands of any term are executed (breaks invariant 3;
//!   paired with a control plane that stamps stale terms, `stale-stamp`).

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
