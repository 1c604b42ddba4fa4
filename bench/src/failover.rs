//! Leader failover with N sandboxes in the state machine: `kill -9` the
//! leader and time until a new leader is elected, until it has an actor
//! running for every sandbox again, and until a command through it takes
//! effect on the agent.

use std::time::{Duration, Instant};

use berth_proto::v1::{GetSandboxRequest, GetStatusRequest, Phase, StopSandboxRequest};
use berth_testkit::TestCluster;

use crate::util::{create_all, wait_phase_count};

const AGENT: &str = "mem-1";

pub async fn run(n: usize) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    cluster.start_agent_with(AGENT, &control, "memory")?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let started = Instant::now();
    create_all(&cluster, leader, &names, "localhost/berth-demo:v1", 32).await?;
    let to_running = wait_phase_count(
        &cluster,
        leader,
        Phase::Running,
        n,
        Duration::from_secs(900),
    )
    .await?;
    println!(
        "failover: {n} sandboxes created and Running (in-memory driver) in {:.2}s",
        to_running.max(started.elapsed()).as_secs_f64()
    );

    let killed = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let elected = killed.elapsed();
    let mut admin = cluster.cluster_client(new_leader).await?;
    let adopted = loop {
        let status = admin.get_status(GetStatusRequest {}).await?.into_inner();
        if status.sandbox_actors as usize >= n {
            break killed.elapsed();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "actors never all running: {status:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // End to end: the new leader's actor for one sandbox acts on the agent.
    let mut client = cluster.sandboxes(new_leader).await?;
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
            killed.elapsed() < Duration::from_secs(300),
            "stop never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acted = killed.elapsed();
    println!(
        "failover: new leader (node {new_leader}) elected {:.0} ms after kill -9",
        elected.as_millis()
    );
    println!(
        "failover: {n} sandbox actors running on the new leader {:.0} ms after kill -9",
        adopted.as_millis()
    );
    println!(
        "failover: a stop through the new leader carried out by the agent {:.0} ms after kill -9",
        acted.as_millis()
    );
    Ok(())
}
