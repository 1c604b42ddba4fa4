//! The wall-clock seam: every timestamp berth writes into its replicated
//! state (creation times, event times, deadlines, token expiry) is read
//! here. Production reads the system clock. The deterministic simulator
//! installs its own clock once per process with [`set`] (simulated time,
//! with a skew per node). Timers and intervals are not read here: they use
//! `tokio::time`, which the simulator drives.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of Unix time in milliseconds.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

static CLOCK: OnceLock<WallClock> = OnceLock::new();

/// Replaces the system clock for the rest of the process (once).
pub fn set(clock: WallClock) -> Result<(), String> {
    CLOCK
        .set(clock)
        .map_err(|_| "a clock is already installed".to_string())
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    match CLOCK.get() {
        Some(clock) => clock(),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}
