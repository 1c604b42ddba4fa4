//! Leader failover with N sandboxes in the state machine, repeated: `kill -9`
//! the leader, time until the survivors agree on a new one and until it
//! runs an actor for every sandbox again; restart the killed node, let it
//! catch up, and kill the next leader. Prints p50 and p99 over the kills,
//! then checks once that a command through the last leader reaches the
//! agent.

use std::time::{Duration, Instant};

use berth_proto::v1::{GetSandboxRequest, GetStatusRequest, Phase, StopSandboxRequest};
use berth_testkit::TestCluster;

use crate::load::percentile as pick;
use crate::util::{create_all, wait_phase_count};

const AGENT: &str = "mem-1";

/// One kill of the current leader; returns (elected, adopted) and the new leader.
async fn kill_once(
    cluster: &mut TestCluster,
    leader: u64,
    n: usize,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let survivors: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let killed = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster
        .wait_for_leader_among(&survivors, Duration::from_secs(30))
        .await?;
    let elected = killed.elapsed();
    let mut admin = cluster.cluster_client(new_leader).await?;
    let adopted = loop {
        let status = admin.get_status(GetStatusRequest {}).await?.into_inner();
        if status.sandbox_actors as usize >= n {
            break killed.elapsed();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(120),
            "actors never all running: {status:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok((elected, adopted, new_leader))
}

pub async fn run(n: usize, kills: usize) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    cluster.start_agent_with(AGENT, &control, "memory")?;
    let mut leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let started = Instant::now();
    create_all(&cluster, leader, &names, "localhost/berth-demo:v1", 64).await?;
    wait_phase_count(
        &cluster,
        leader,
        Phase::Running,
        n,
        Duration::from_secs(1800),
    )
    .await?;
    println!(
        "failover: {n} sandboxes created and Running (in-memory driver) in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    let mut elected = Vec::new();
    let mut adopted = Vec::new();
    for k in 0..kills {
        let old = leader;
        let (e, a, new_leader) = kill_once(&mut cluster, leader, n).await?;
        println!(
            "failover: kill {}: node {old} killed; node {new_leader} elected after {} ms, all {n} actors after {} ms",
            k + 1,
            e.as_millis(),
            a.as_millis()
        );
        elected.push(e);
        adopted.push(a);
        leader = new_leader;
        // Bring the killed node back and let it catch up before the next kill.
        cluster.restart(old)?;
        let index = cluster.status(leader).await?.last_applied_index;
        let caught_up = cluster
            .wait_applied(old, index, Duration::from_secs(120))
            .await;
        if let Err(e) = caught_up {
            anyhow::bail!("{e}\n{}", cluster.logs());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // End to end: the last leader's actor for one sandbox acts on the agent.
    let killed = Instant::now();
    let mut client = cluster.sandboxes(leader).await?;
    client
        .stop_sandbox(StopSandboxRequest {
            name: names[0].clone(),
            request_id: String::new(),
        })
        .await?;
    loop {
        let s = client
            .get_sandbox(GetSandboxRequest {
                name: names[0].clone(),
                consistency: 0,
            })
            .await?
            .into_inner();
        if s.phase == Phase::Stopped as i32 {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(120),
            "stop never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    elected.sort();
    adopted.sort();
    println!(
        "failover: {kills} kills with {n} sandboxes: elected p50 {} ms p99 {} ms; every actor running p50 {} ms p99 {} ms",
        pick(&elected, 0.5).as_millis(),
        pick(&elected, 0.99).as_millis(),
        pick(&adopted, 0.5).as_millis(),
        pick(&adopted, 0.99).as_millis()
    );
    println!(
        "failover: a stop through the last leader carried out by the agent after {} ms",
        killed.elapsed().as_millis()
    );
    Ok(())
}
