//! The chaos suite's hooks in `berthd` and `berth-agent`: failpoints
//! ([`failpoint`], configured by `FAILPOINTS`) and the switch of test-only
//! faults: `BERTH_CHAOS_BREAK` names faults (comma separated)
//! that deliberately break an invariant, so `berth-chaos --break` can show
//! its checker catches real violations. Unset, nothing changes; never set
//! it outside the chaos suite. The faults are listed where they act:
//! `control/src/chaos.rs` and `agent/src/chaos.rs`.

use std::sync::{Arc, OnceLock};

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

/// The failpoints of `berthd` and `berth-agent`, configured at start-up by
/// the `FAILPOINTS` environment variable in fail-rs syntax
/// (`name=action;...`). Keep the returned guard for the life of the
/// process. Unset, every failpoint is a map lookup that finds nothing.
pub fn failpoints() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// A failpoint named `name`, where the chaos suite can crash or stall the
/// process: the action `return` aborts the process right there (on disk,
/// the same as `kill -9` at that instant), `sleep(ms)` and `delay(ms)`
/// stall it, and prefixes such as `5%return` or `1*return` make it random
/// or counted. The points, each at a window between two effects:
///
/// - `after-commit-PHASE`: the leader committed an update's move into
///   PHASE and has not yet acted on it;
/// - `leader-before-send`: the leader is about to send a command to an agent;
/// - `agent-before-execute`, `agent-before-reply`: an agent admitted a
///   command and has not executed it, or executed it and has not replied;
/// - `log-before-sync`, `apply-before-sync`: Raft log entries or applied
///   changes are about to be written;
/// - `snapshot-before-save`, `snapshot-before-install`: a snapshot was
///   built or received and is about to be stored.
pub fn failpoint(name: &str) {
    if let Some(observer) = OBSERVER.get() {
        observer(name);
    }
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("chaos: aborting at failpoint {name}");
        std::process::abort();
    }
}

/// Sees every failpoint reached (the deterministic simulator's hook: it
/// crashes the simulated host there).
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the process's failpoint observer (once).
pub fn observe_failpoints(observer: Observer) -> Result<(), String> {
    OBSERVER
        .set(observer)
        .map_err(|_| "a failpoint observer is already installed".to_string())
}
