//! The fault schedule of a seed and the driver that applies it between
//! simulation steps: partitions (symmetric, one-way, isolating the
//! leader), flaky links (random breaks: lost messages), latency spikes and
//! held links (delay and reordering across connections), control-node
//! crashes with unsynced writes lost, agent crashes, and crashes at a
//! failpoint (an update phase just committed, a command about to be sent
//! or executed, a write about to be synced). Clock skew is fixed per host
//! at start. When the workload ends, everything heals.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::cluster::{self, Registry};
use super::world;
use berth_raft::store::disk::MemDisk;
use std::sync::Arc;

/// Failpoints a scheduled crash can wait for.
const POINTS: &[&str] = &[
    "after-commit-Pulling",
    "after-commit-StoppingOld",
    "after-commit-StartingNew",
    "after-commit-Verifying",
    "after-commit-Succeeded",
    "after-commit-RollingBack",
    "after-commit-RolledBack",
    "after-commit-Aborted",
    "leader-before-send",
    "agent-before-execute",
    "agent-before-reply",
    "log-before-sync",
    "apply-before-sync",
    "snapshot-before-save",
    "snapshot-before-install",
];

#[derive(Debug, Clone, Serialize)]
pub enum Fault {
    /// Cut `host` off from every other host.
    Isolate { host: String },
    /// Cut off whichever control node leads when the fault starts.
    IsolateLeader,
    /// Cut the link between two hosts both ways.
    Partition { a: String, b: String },
    /// Drop what `from` sends to `to` (`to` still reaches `from`).
    OneWay { from: String, to: String },
    /// The link breaks at random (messages lost) with this rate per tick.
    Flaky { a: String, b: String, rate: f64 },
    /// Messages between two hosts take up to `ms`.
    Slow { a: String, b: String, ms: u64 },
    /// Messages between two hosts are held, then all delivered at once.
    Hold { a: String, b: String },
    /// Crash a control node (unsynced writes lost) or an agent.
    Crash { host: String },
    /// Crash whichever control node leads.
    CrashLeader,
    /// Crash the first host to reach this failpoint.
    CrashAt { point: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Scheduled {
    pub at_ms: u64,
    pub for_ms: u64,
    pub fault: Fault,
}

/// A seed's schedule: `count` faults within `[500, until_ms)`.
pub fn schedule(
    rng: &mut StdRng,
    controls: &[String],
    agents: &[String],
    until_ms: u64,
) -> Vec<Scheduled> {
    let count = rng.gen_range(2..=6);
    let all: Vec<String> = controls.iter().chain(agents).cloned().collect();
    let mut out = Vec::new();
    for _ in 0..count {
        let at_ms = rng.gen_range(500..until_ms.saturating_sub(1500).max(501));
        let for_ms = rng.gen_range(300..4000).min(until_ms - at_ms);
        let two = |rng: &mut StdRng| {
            let mut pick = all.clone();
            pick.shuffle(rng);
            (pick[0].clone(), pick[1].clone())
        };
        let fault = match rng.gen_range(0..100) {
            0..=11 => Fault::Isolate {
                host: controls[rng.gen_range(0..controls.len())].clone(),
            },
            12..=23 => Fault::IsolateLeader,
            24..=31 => {
                let (a, b) = two(rng);
                Fault::Partition { a, b }
            }
            32..=39 => {
                let (from, to) = two(rng);
                Fault::OneWay { from, to }
            }
            40..=47 => {
                let (a, b) = two(rng);
                Fault::Flaky {
                    a,
                    b,
                    rate: rng.gen_range(0.01..0.2),
                }
            }
            48..=53 => {
                let (a, b) = two(rng);
                Fault::Slow {
                    a,
                    b,
                    ms: rng.gen_range(50..600),
                }
            }
            54..=57 => {
                let (a, b) = two(rng);
                Fault::Hold { a, b }
            }
            58..=67 => Fault::Crash {
                host: controls[rng.gen_range(0..controls.len())].clone(),
            },
            68..=75 => Fault::Crash {
                host: agents[rng.gen_range(0..agents.len())].clone(),
            },
            76..=87 => Fault::CrashLeader,
            _ => Fault::CrashAt {
                point: POINTS[rng.gen_range(0..POINTS.len())].to_string(),
            },
        };
        out.push(Scheduled {
            at_ms,
            for_ms,
            fault,
        });
    }
    out.sort_by_key(|s| s.at_ms);
    out
}

/// A fault in effect, and how to undo it.
enum Active {
    Cut(String, String),
    CutOneWay(String, String),
    Flaky(String, String),
    Slow(String, String),
    Held(String, String),
    Down(String),
    Waiting(String),
}

/// Applies a schedule to a running simulation.
pub struct Driver {
    pending: Vec<Scheduled>,
    active: Vec<(u64, Active)>,
    pub controls: Vec<String>,
    pub agents: Vec<String>,
    pub disks: BTreeMap<String, Arc<MemDisk>>,
    pub registry: Registry,
    /// Control nodes down now (at most one at a time).
    healed: bool,
    /// Default max latency, restored after a slow link.
    pub max_latency: Duration,
}

impl Driver {
    pub fn new(
        mut schedule: Vec<Scheduled>,
        controls: Vec<String>,
        agents: Vec<String>,
        disks: BTreeMap<String, Arc<MemDisk>>,
        registry: Registry,
        max_latency: Duration,
    ) -> Self {
        schedule.reverse();
        Self {
            pending: schedule,
            active: Vec::new(),
            controls,
            agents,
            disks,
            registry,
            healed: false,
            max_latency,
        }
    }

    fn all(&self) -> Vec<String> {
        self.controls.iter().chain(&self.agents).cloned().collect()
    }

    fn down(&self) -> Vec<&str> {
        self.active
            .iter()
            .filter_map(|(_, a)| match a {
                Active::Down(h) => Some(h.as_str()),
                _ => None,
            })
            .collect()
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, host: &str, until: u64) -> bool {
        let control = self.controls.iter().any(|c| c == host);
        // Keep a majority of control nodes able to come back: one down at
        // a time (partitions may still cut any number off).
        let control_down = self
            .down()
            .iter()
            .any(|h| self.controls.iter().any(|c| c == h));
        if self.down().contains(&host) || (control && control_down) {
            return false;
        }
        sim.crash(host.to_string());
        if let Some(disk) = self.disks.get(host) {
            disk.crash();
        }
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
        world::note(format!(
            "FAULT crash {host} (at {now} ms, back at {until} ms)"
        ));
        self.active.push((until, Active::Down(host.to_string())));
        true
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, s: Scheduled) {
        let until = now + s.for_ms;
        let leader = cluster::leader(&self.registry);
        match s.fault {
            Fault::Isolate { host } => self.isolate(sim, &host, until),
            Fault::IsolateLeader => {
                if let Some(host) = leader {
                    self.isolate(sim, &host, until);
                }
            }
            Fault::Partition { a, b } => {
                sim.partition(a.clone(), b.clone());
                world::note(format!("FAULT partition {a} | {b}"));
                self.active.push((until, Active::Cut(a, b)));
            }
            Fault::OneWay { from, to } => {
                sim.partition_oneway(from.clone(), to.clone());
                world::note(format!("FAULT one-way {from} -> {to} dropped"));
                self.active.push((until, Active::CutOneWay(from, to)));
            }
            Fault::Flaky { a, b, rate } => {
                sim.set_link_fail_rate(a.clone(), b.clone(), rate);
                world::note(format!("FAULT flaky {a} <-> {b} rate {rate:.3}"));
                self.active.push((until, Active::Flaky(a, b)));
            }
            Fault::Slow { a, b, ms } => {
                sim.set_link_max_message_latency(a.clone(), b.clone(), Duration::from_millis(ms));
                world::note(format!("FAULT slow {a} <-> {b} up to {ms} ms"));
                self.active.push((until, Active::Slow(a, b)));
            }
            Fault::Hold { a, b } => {
                sim.hold(a.clone(), b.clone());
                world::note(format!("FAULT hold {a} <-> {b}"));
                self.active
                    .push((until.min(now + 1500), Active::Held(a, b)));
            }
            Fault::Crash { host } => {
                self.crash(sim, now, &host, until);
            }
            Fault::CrashLeader => {
                if let Some(host) = leader {
                    self.crash(sim, now, &host, until);
                }
            }
            Fault::CrashAt { point } => {
                world::note(format!("FAULT armed: crash at failpoint {point}"));
                self.active.push((until, Active::Waiting(point)));
            }
        }
    }

    fn isolate(&mut self, sim: &mut turmoil::Sim<'_>, host: &str, until: u64) {
        world::note(format!("FAULT isolate {host}"));
        for other in self.all().into_iter().chain(["w".to_string()]) {
            if other != host {
                sim.partition(host.to_string(), other.clone());
                self.active
                    .push((until, Active::Cut(host.to_string(), other)));
            }
        }
    }

    fn undo(&mut self, sim: &mut turmoil::Sim<'_>, active: Active) {
        match active {
            Active::Cut(a, b) => sim.repair(a, b),
            Active::CutOneWay(from, to) => sim.repair_oneway(from, to),
            Active::Flaky(a, b) => sim.set_link_fail_rate(a, b, 0.0),
            Active::Slow(a, b) => sim.set_link_max_message_latency(a, b, self.max_latency),
            Active::Held(a, b) => sim.release(a, b),
            Active::Down(host) => {
                world::note(format!("FAULT restart {host}"));
                sim.bounce(host);
            }
            Active::Waiting(_) => {}
        }
    }

    /// Called before every step: starts due faults, crashes hosts that
    /// reached an armed failpoint, undoes expired faults; heals everything
    /// once `heal` is set.
    pub fn step(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, heal: bool) {
        let reached = world::with(|st| std::mem::take(&mut st.reached));
        for (host, point) in reached {
            let armed = self
                .active
                .iter()
                .position(|(_, a)| matches!(a, Active::Waiting(p) if *p == point));
            if let Some(i) = armed {
                let (until, _) = self.active.remove(i);
                world::note(format!("FAULT {host} reached failpoint {point}"));
                if !self.crash(sim, now, &host, until.max(now + 300)) {
                    world::note(format!("FAULT crash at {point} skipped ({host})"));
                }
            }
        }
        if heal && !self.healed {
            self.healed = true;
            self.pending.clear();
            for (_, active) in std::mem::take(&mut self.active) {
                self.undo(sim, active);
            }
            world::note("FAULT all healed");
            return;
        }
        while self.pending.last().is_some_and(|s| s.at_ms <= now) {
            if let Some(s) = self.pending.pop() {
                self.start(sim, now, s);
            }
        }
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|(until, _)| *until <= now);
        self.active = kept;
        for (_, active) in expired {
            self.undo(sim, active);
        }
    }
}
