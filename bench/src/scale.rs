//! One leader holding many sandboxes (in-memory driver, one agent): how
//! long it takes to create them and get each an actor, what the leader
//! costs while nothing happens (CPU, RSS per sandbox), and the write rate
//! with all of them present next to the rate on an empty cluster.

use std::time::{Duration, Instant};

use berth_proto::v1::{CreateSandboxRequest, GetStatusRequest, SandboxSpec};
use berth_testkit::TestCluster;

use crate::load::drive;
use crate::proc::{idle_cpu, peak_rss, usage};
use crate::util::create_all;

const AGENT: &str = "mem-1";
const WRITE_SECS: f64 = 5.0;
const WRITE_CONCURRENCY: usize = 64;

async fn write_rate(cluster: &TestCluster, leader: u64, prefix: &str) -> anyhow::Result<f64> {
    let client = cluster.sandboxes(leader).await?;
    let prefix = prefix.to_string();
    let level = drive(WRITE_CONCURRENCY, WRITE_SECS, move |seq| {
        let mut client = client.clone();
        let name = format!("{prefix}{seq}");
        async move {
            client
                .create_sandbox(CreateSandboxRequest {
                    name,
                    spec: Some(SandboxSpec {
                        image: "localhost/berth-demo:v1".to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(level.per_sec)
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    cluster.start_agent_with(AGENT, &control, "memory")?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = cluster
        .process(leader)
        .and_then(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("no leader process"))?;
    let (_, rss_empty) = usage(pid)?;
    let cpu_empty = idle_cpu(pid, Duration::from_secs(5)).await?;
    let empty_rate = write_rate(&cluster, leader, "empty-").await?;
    let extra = (empty_rate * WRITE_SECS) as usize;

    eprintln!("scale: creating {n} sandboxes");
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    create_all(&cluster, leader, &names, "localhost/berth-demo:v1", 64).await?;
    let created = started.elapsed();
    let mut admin = cluster.cluster_client(leader).await?;
    let all = n + extra;
    loop {
        let status = admin.get_status(GetStatusRequest {}).await?.into_inner();
        if status.sandbox_actors as usize >= all.saturating_sub(extra / 10) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "actors never caught up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let adopted = started.elapsed();
    // Let placement and the first container starts finish.
    tokio::time::sleep(Duration::from_secs(20)).await;
    eprintln!("scale: measuring idle CPU");
    let cpu_idle = idle_cpu(pid, Duration::from_secs(10)).await?;
    let (_, rss_full) = usage(pid)?;
    eprintln!("scale: measuring writes with {n} sandboxes");
    let full_rate = write_rate(&cluster, leader, "full-").await?;

    println!("scale: {n} sandboxes (in-memory driver, 1 agent, 3 control nodes)");
    println!(
        "scale: created in {:.1}s ({:.0}/s); every one with an actor after {:.1}s",
        created.as_secs_f64(),
        n as f64 / created.as_secs_f64(),
        adopted.as_secs_f64()
    );
    println!(
        "scale: idle leader CPU {:.1}% of one core with {n} sandboxes ({:.1}% empty)",
        cpu_idle * 100.0,
        cpu_empty * 100.0
    );
    println!(
        "scale: leader RSS {:.0} MiB ({:.0} MiB empty): {:.1} KiB per sandbox",
        rss_full as f64 / 1048576.0,
        rss_empty as f64 / 1048576.0,
        rss_full.saturating_sub(rss_empty) as f64 / 1024.0 / all as f64
    );
    println!(
        "scale: creates at concurrency {WRITE_CONCURRENCY}: {empty_rate:.0}/s empty, {full_rate:.0}/s with {n} ({:+.0}%)",
        (full_rate / empty_rate - 1.0) * 100.0
    );
    join_new_member(&mut cluster, leader, n).await
}

/// A fourth control node joins and gets everything as a snapshot: how long
/// it takes, and whether the new member ever held the state twice (its
/// peak RSS next to what it holds once caught up).
async fn join_new_member(cluster: &mut TestCluster, leader: u64, n: usize) -> anyhow::Result<()> {
    let applied = cluster.status(leader).await?.last_applied_index;
    eprintln!("scale: a fourth node joins");
    let started = Instant::now();
    cluster.start_joining(4)?;
    cluster
        .wait_applied(4, applied, Duration::from_secs(600))
        .await?;
    let caught_up = started.elapsed();
    let pid = cluster
        .process(4)
        .and_then(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("no process for the new member"))?;
    let (_, rss) = usage(pid)?;
    let peak = peak_rss(pid)?;
    println!(
        "scale: a new member caught up with {n} sandboxes (by snapshot) in {:.1}s; its RSS {:.0} MiB, peak {:.0} MiB",
        caught_up.as_secs_f64(),
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    Ok(())
}
