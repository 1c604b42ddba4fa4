//! The one place the control plane reads the wall clock (through the
//! process's clock seam, `berth_proto::clock`: the system clock in
//! production, simulated time in the simulator). Timestamps read here
//! travel inside Raft commands, so applying stays deterministic.

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    berth_proto::clock::now_ms()
}
