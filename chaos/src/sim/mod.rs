//! `berth-chaos sim`: deterministic simulation. Each seed runs a whole
//! berth cluster — three berthd nodes (Raft on an in-memory disk with crash
//! semantics, the leader's actor tree, the API), two agents (the real
//! session and fence over the memory driver) and a workload host — in this
//! one process, on turmoil's simulated network and clock, under a fault
//! schedule drawn from the seed, then checks the chaos suite's invariants.
//! One seed fixes every message order, delay, crash, timer, id and clock,
//! so a failing seed replays exactly: `berth-chaos sim --seed N --trace`.
//!
//! Seeds run one at a time per process (the seams are process-wide);
//! `--jobs` runs several worker processes. See `docs/chaos.md`.

mod check;
mod client;
mod cluster;
mod faults;
mod runner;
mod world;

pub use runner::{main, run_profile_seeds, SimArgs};
