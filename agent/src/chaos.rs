//! The agent's test-only faults for the chaos suite (switched on by
//! `BERTH_CHAOS_BREAK`, see `berth_proto::chaos`):
//!
//! - `second-container`: every container the driver creates gets a running
//!   twin with the same labels and volume (breaks invariant 5);
//! - `skip-fencing`: commands of any term are executed (breaks invariant 3;
//!   paired with a control plane that stamps stale terms, `stale-stamp`).

pub use berth_proto::chaos::broken;
