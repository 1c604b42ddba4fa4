//! The nemesis: a schedule of faults drawn from the seed, injected into
//! the real processes of a cluster and healed after a while.
//!
//! Faults: `kill -9` of the leader (and, on one node chosen by the seed,
//! the crash points right after an update phase is committed), of a
//! follower, of an agent; SIGSTOP/SIGCONT of the leader (the old leader
//! wakes up after a new one took over); a full restart of every control
//! node; and the network faults of [`network`] through the chaos network.
//! Failover times are measured from a leader kill, pause or isolation until
//! the other nodes agree on a new leader.

mod network;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_testkit::TestCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::clock::Clocks;
use crate::net::ChaosNet;
use crate::profile::Profile;

/// Update phases a crash point can follow.
pub const CRASH_PHASES: [&str; 6] = [
    "Pulling",
    "StoppingOld",
    "StartingNew",
    "Verifying",
    "RollingBack",
    "Succeeded",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    PauseLeader,
    KillAgent,
    RestartAll,
    /// A node died at its crash point (counted when it is found dead).
    CrashPoint,
    IsolateLeader,
    OneWayLeader,
    SplitNodes,
    IsolateAgent,
    SlowNetwork,
    DropLinks,
    /// One node's wall clock steps forward or back (libfaketime).
    ClockJump,
}

impl FaultKind {
    fn is_network(self) -> bool {
        matches!(
            self,
            Self::IsolateLeader
                | Self::OneWayLeader
                | Self::SplitNodes
                | Self::IsolateAgent
                | Self::SlowNetwork
                | Self::DropLinks
        )
    }
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub at_ms: u64,
    pub kind: FaultKind,
    pub hold_ms: u64,
    /// Picks among candidates (followers, agents).
    pub pick: u64,
}

/// The faults of a run, drawn from the seed; the same seed and profile
/// give the same schedule (`--replay`).
pub fn schedule(seed: u64, profile: &Profile) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut at = Duration::from_secs(5);
    let between = |rng: &mut StdRng, (lo, hi): (Duration, Duration)| {
        Duration::from_millis(rng.gen_range(lo.as_millis() as u64..=hi.as_millis() as u64))
    };
    while at < profile.duration {
        let kind = pick_kind(&mut rng, profile.mix);
        let hold = between(&mut rng, profile.fault_hold);
        faults.push(Fault {
            at_ms: at.as_millis() as u64,
            kind,
            hold_ms: hold.as_millis() as u64,
            pick: rng.gen(),
        });
        at += hold + between(&mut rng, profile.fault_gap);
    }
    faults
}

/// How often each fault is drawn, in percent.
pub const MIXED: &[(FaultKind, u32)] = &[
    (FaultKind::KillLeader, 20),
    (FaultKind::KillFollower, 8),
    (FaultKind::PauseLeader, 11),
    (FaultKind::KillAgent, 10),
    (FaultKind::RestartAll, 4),
    (FaultKind::IsolateLeader, 12),
    (FaultKind::OneWayLeader, 8),
    (FaultKind::SplitNodes, 8),
    (FaultKind::IsolateAgent, 7),
    (FaultKind::SlowNetwork, 4),
    (FaultKind::DropLinks, 4),
    (FaultKind::ClockJump, 4),
];

/// Only leader kills.
pub const LEADER_KILLS: &[(FaultKind, u32)] = &[(FaultKind::KillLeader, 1)];

fn pick_kind(rng: &mut StdRng, mix: &[(FaultKind, u32)]) -> FaultKind {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut at = rng.gen_range(0..total.max(1));
    for (kind, weight) in mix {
        if at < *weight {
            return *kind;
        }
        at -= weight;
    }
    FaultKind::KillLeader
}

/// The failpoints of a run (`FAILPOINTS`, see `berth_proto::chaos`): one
/// control node, chosen by the seed, aborts right after committing one
/// update phase whenever it leads one, and now and then at its other
/// windows (before sending a command, before syncing log entries or
/// applied changes, before storing a snapshot); one agent aborts now and
/// then between admitting a command and executing it, or between executing
/// it and replying. The percentages are drawn by the processes, not the
/// seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failpoints {
    pub node: u64,
    pub phase: &'static str,
    pub node_points: String,
    /// Index of the agent, in start order.
    pub agent: usize,
    pub agent_points: String,
}

pub fn failpoints(seed: u64, nodes: u64, agents: usize) -> Failpoints {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let node = rng.gen_range(1..=nodes);
    let phase = CRASH_PHASES[rng.gen_range(0..CRASH_PHASES.len())];
    let agent = rng.gen_range(0..agents.max(1));
    Failpoints {
        node,
        phase,
        node_points: [
            format!("after-commit-{phase}=return"),
            "leader-before-send=1%return".into(),
            "log-before-sync=0.3%return".into(),
            "apply-before-sync=0.3%return".into(),
            "snapshot-before-save=25%return".into(),
            "snapshot-before-install=25%return".into(),
        ]
        .join(";"),
        agent,
        agent_points: "agent-before-execute=2%return;agent-before-reply=2%return".into(),
    }
}

/// What the nemesis did.
#[derive(Debug, Default, Serialize)]
pub struct NemesisReport {
    pub injected: BTreeMap<String, u64>,
    /// Leader kills while an update (or another operation) was in flight,
    /// as the leader answered just before.
    pub kills_mid_operation: u64,
    pub failover_ms: Vec<u64>,
    /// Every fault with when it was injected (ms since the start).
    pub log: Vec<(u64, String)>,
}

impl NemesisReport {
    fn count(&mut self, kind: FaultKind, at_ms: u64, what: String) {
        *self.injected.entry(format!("{kind:?}")).or_default() += 1;
        self.log.push((at_ms, what));
    }
}

/// The leader as the running nodes see it.
pub async fn leader(cluster: &mut TestCluster) -> Option<u64> {
    for id in cluster.running() {
        if let Ok(status) = cluster.status(id).await {
            if status.leader_id != 0 {
                return Some(status.leader_id);
            }
        }
    }
    None
}

/// Whether an operation is in flight on some sandbox, as node `id` sees it.
async fn operation_in_flight(cluster: &TestCluster, id: u64) -> bool {
    let Ok(mut client) = cluster.sandboxes(id).await else {
        return false;
    };
    let request = berth_proto::v1::ListSandboxesRequest::default();
    client.list_sandboxes(request).await.is_ok_and(|list| {
        list.into_inner()
            .sandboxes
            .iter()
            .any(|s| s.operation.as_ref().is_some_and(|o| !o.terminal))
    })
}

/// Waits until the nodes other than `old` agree on a leader other than it.
async fn failover(cluster: &mut TestCluster, old: u64) -> Option<Duration> {
    let started = Instant::now();
    let others: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    while started.elapsed() < Duration::from_secs(30) {
        for id in &others {
            if let Ok(s) = cluster.status(*id).await {
                if s.leader_id != 0 && s.leader_id != old {
                    return Some(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Counts a process found dead on its own: it died at a failpoint.
fn died(report: &mut NemesisReport, started: Instant, who: String) {
    let at = started.elapsed().as_millis() as u64;
    report.count(
        FaultKind::CrashPoint,
        at,
        format!("{who} died at a failpoint"),
    );
}

/// Restarts every control node and agent that is not running (a crash
/// point fired, or a fault is being healed).
pub fn revive(
    cluster: &mut TestCluster,
    report: &mut NemesisReport,
    started: Instant,
    count: bool,
) {
    for id in cluster.node_ids() {
        let running = cluster.process(id).is_some_and(|p| p.is_running());
        if !running {
            if count {
                died(report, started, format!("node {id}"));
            }
            if let Err(e) = cluster.restart(id) {
                eprintln!("berth-chaos: cannot restart node {id}: {e:#}");
            }
        }
    }
    for name in cluster.agent_names() {
        let running = cluster.agent(&name).is_some_and(|p| p.is_running());
        if !running {
            if count {
                died(report, started, format!("agent {name}"));
            }
            if let Err(e) = cluster.start_agent(&name) {
                eprintln!("berth-chaos: cannot restart agent {name}: {e:#}");
            }
        }
    }
}

/// Sleeps `d`, restarting nodes that die meanwhile (crash points).
async fn watchful_sleep(
    cluster: &mut TestCluster,
    d: Duration,
    report: &mut NemesisReport,
    started: Instant,
) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
        revive(cluster, report, started, true);
    }
}

/// Injects the scheduled faults until `profile.duration` has passed.
pub async fn run(
    cluster: &mut TestCluster,
    net: &ChaosNet,
    clocks: Option<&Clocks>,
    faults: &[Fault],
    profile: &Profile,
    started: Instant,
) -> NemesisReport {
    let mut report = NemesisReport::default();
    let mut progress_at = Duration::from_secs(60);
    for fault in faults {
        if started.elapsed() >= progress_at {
            progress_at += Duration::from_secs(60);
            let injected: u64 = report.injected.values().sum();
            eprintln!(
                "berth-chaos: {} s: {injected} faults injected, {} failovers",
                started.elapsed().as_secs(),
                report.failover_ms.len()
            );
        }
        // The schedule may fall behind (a fault can take longer than drawn);
        // the run still ends on time.
        let at = Duration::from_millis(fault.at_ms);
        if at >= profile.duration || started.elapsed() >= profile.duration {
            break;
        }
        let wait = at.saturating_sub(started.elapsed());
        watchful_sleep(cluster, wait, &mut report, started).await;
        let now = started.elapsed().as_millis() as u64;
        let hold = Duration::from_millis(fault.hold_ms);
        match fault.kind {
            FaultKind::KillLeader | FaultKind::PauseLeader => {
                let Some(old) = leader(cluster).await else {
                    continue;
                };
                let pause = fault.kind == FaultKind::PauseLeader;
                if !pause && profile.kill_mid_operation {
                    // Aim the kill: wait (a little) for an operation to be
                    // in flight on the leader.
                    let until = Instant::now() + Duration::from_secs(8);
                    while Instant::now() < until && !operation_in_flight(cluster, old).await {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if !pause && operation_in_flight(cluster, old).await {
                    report.kills_mid_operation += 1;
                }
                if pause {
                    if let Some(p) = cluster.process(old) {
                        let _ = p.pause();
                    }
                } else {
                    cluster.kill9(old);
                }
                report.count(fault.kind, now, format!("{:?} node {old}", fault.kind));
                if let Some(took) = failover(cluster, old).await {
                    report.failover_ms.push(took.as_millis() as u64);
                }
                if pause {
                    watchful_sleep(cluster, hold, &mut report, started).await;
                } else {
                    tokio::time::sleep(hold).await;
                }
                if pause {
                    if let Some(p) = cluster.process(old) {
                        let _ = p.resume();
                    }
                }
            }
            FaultKind::KillFollower => {
                let leader = leader(cluster).await;
                let followers: Vec<u64> = cluster
                    .running()
                    .into_iter()
                    .filter(|id| Some(*id) != leader)
                    .collect();
                if followers.is_empty() {
                    continue;
                }
                let victim = followers[(fault.pick % followers.len() as u64) as usize];
                cluster.kill9(victim);
                report.count(fault.kind, now, format!("KillFollower node {victim}"));
                tokio::time::sleep(hold).await;
            }
            FaultKind::KillAgent => {
                let agents = cluster.agent_names();
                let victim = agents[(fault.pick % agents.len() as u64) as usize].clone();
                cluster.kill9_agent(&victim);
                report.count(fault.kind, now, format!("KillAgent {victim}"));
                tokio::time::sleep(hold).await;
            }
            FaultKind::RestartAll => {
                for id in cluster.node_ids() {
                    cluster.kill9(id);
                }
                report.count(fault.kind, now, "RestartAll".to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            FaultKind::CrashPoint => {}
            FaultKind::ClockJump => {
                let Some(clocks) = clocks else { continue };
                let nodes = cluster.node_ids();
                let node = nodes[(fault.pick % nodes.len() as u64) as usize];
                let minutes = 1 + (fault.pick >> 8) % 30;
                let offset = if fault.pick & 0x10 == 0 { 60 } else { -60 } * minutes as i64;
                if let Err(e) = clocks.set(node, offset) {
                    eprintln!("berth-chaos: cannot move node {node}'s clock: {e}");
                    continue;
                }
                report.count(
                    fault.kind,
                    now,
                    format!("ClockJump node {node} by {offset:+} s"),
                );
                watchful_sleep(cluster, hold, &mut report, started).await;
                if let Err(e) = clocks.set(node, 0) {
                    eprintln!("berth-chaos: cannot reset node {node}'s clock: {e}");
                }
            }
            kind if kind.is_network() => {
                let roles = network::Roles {
                    leader: leader(cluster).await,
                    nodes: cluster.node_ids(),
                    agents: cluster.agent_names(),
                };
                let Some((rules, line)) = network::rules(kind, fault.pick, &roles) else {
                    continue;
                };
                net.set(rules);
                report.count(kind, now, line);
                let cuts_leader =
                    matches!(kind, FaultKind::IsolateLeader | FaultKind::OneWayLeader);
                if let (true, Some(old)) = (cuts_leader, roles.leader) {
                    if let Some(took) = failover(cluster, old).await {
                        report.failover_ms.push(took.as_millis() as u64);
                    }
                }
                watchful_sleep(cluster, hold, &mut report, started).await;
                net.heal();
            }
            _ => {}
        }
        // Heal: everything killed comes back (a crash point counts itself).
        revive(cluster, &mut report, started, false);
    }
    let rest = profile.duration.saturating_sub(started.elapsed());
    watchful_sleep(cluster, rest, &mut report, started).await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileName;

    #[test]
    fn a_seed_gives_one_schedule() {
        let profile = Profile::new(ProfileName::Ci, None);
        let a = schedule(42, &profile);
        let b = schedule(42, &profile);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&schedule(43, &profile)).unwrap()
        );
        assert!(a.len() >= 5, "{}", a.len());
        assert!(a
            .windows(2)
            .all(|w| w[0].at_ms + w[0].hold_ms <= w[1].at_ms));
        assert!(a
            .iter()
            .all(|f| f.at_ms < profile.duration.as_millis() as u64));
        assert_eq!(failpoints(42, 3, 2), failpoints(42, 3, 2));
        assert!((1..=3).contains(&failpoints(42, 3, 2).node));
        assert!(failpoints(42, 3, 2).agent < 2);
    }
}
