//! Run profiles: how big the cluster is, how long the workload runs, and
//! which faults the nemesis draws from.

use std::time::Duration;

use clap::ValueEnum;

use crate::nemesis::{FaultKind, LEADER_KILLS, MIXED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileName {
    /// About five minutes; run by CI.
    Ci,
    /// Long: every kind of fault, for an hour.
    Long,
    /// Leader kills only, one every few seconds, each aimed at an
    /// operation in flight when there is one.
    Kills,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: ProfileName,
    pub control_nodes: u64,
    pub agents: usize,
    pub clients: usize,
    pub sandboxes: usize,
    /// How long the workload and the nemesis run.
    pub duration: Duration,
    /// Pause between two faults (drawn between these bounds).
    pub fault_gap: (Duration, Duration),
    /// How long a fault lasts before it is healed.
    pub fault_hold: (Duration, Duration),
    /// How long the cluster gets to settle after the faults heal.
    pub settle: Duration,
    /// The faults drawn, with their weights.
    pub mix: &'static [(FaultKind, u32)],
    /// Leader kills wait (up to 8 s) for an operation in flight.
    pub kill_mid_operation: bool,
    /// Seeds of the deterministic simulation run first (`berth-chaos sim`,
    /// seeds 1..=N), before the real cluster.
    pub sim_seeds: u64,
}

impl Profile {
    pub fn new(name: ProfileName, minutes: Option<u64>) -> Self {
        let secs = |s| Duration::from_secs(s);
        match name {
            ProfileName::Ci => Self {
                name,
                control_nodes: 3,
                agents: 2,
                clients: 4,
                sandboxes: 4,
                duration: minutes.map_or(secs(120), |m| secs(m * 60)),
                fault_gap: (secs(6), secs(14)),
                fault_hold: (secs(2), secs(6)),
                settle: secs(120),
                mix: MIXED,
                kill_mid_operation: false,
                sim_seeds: 200,
            },
            ProfileName::Long => Self {
                name,
                control_nodes: 5,
                agents: 2,
                clients: 6,
                sandboxes: 6,
                duration: minutes.map_or(secs(3600), |m| secs(m * 60)),
                fault_gap: (secs(3), secs(8)),
                fault_hold: (secs(1), secs(5)),
                settle: secs(180),
                mix: MIXED,
                kill_mid_operation: false,
                sim_seeds: 2000,
            },
            ProfileName::Kills => Self {
                name,
                control_nodes: 3,
                agents: 2,
                clients: 6,
                sandboxes: 4,
                duration: minutes.map_or(secs(80 * 60), |m| secs(m * 60)),
                fault_gap: (Duration::from_millis(500), Duration::from_millis(1500)),
                fault_hold: (Duration::from_millis(300), Duration::from_millis(1000)),
                settle: secs(180),
                mix: LEADER_KILLS,
                kill_mid_operation: true,
                sim_seeds: 0,
            },
        }
    }
}
