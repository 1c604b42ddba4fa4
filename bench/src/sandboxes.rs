//! Time to create N sandboxes and have all of them Running, on one agent
//! with the Podman container driver.

use std::time::{Duration, Instant};

use berth_proto::v1::Phase;
use berth_testkit::podman::{self, TEST_IMAGE_V1};
use berth_testkit::TestCluster;

use crate::util::{create_all, wait_phase_count};

pub async fn run(n: usize) -> anyhow::Result<()> {
    podman::ensure_test_image()?;
    let mut cluster = TestCluster::start(3).await?;
    cluster.start_agent("bench-1")?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let names: Vec<String> = (0..n)
        .map(|i| cluster.track(&format!("bench{i}-{}", std::process::id())))
        .collect();
    // Let the agent register before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    create_all(&cluster, leader, &names, TEST_IMAGE_V1, 16).await?;
    let accepted = started.elapsed();
    wait_phase_count(
        &cluster,
        leader,
        Phase::Running,
        n,
        Duration::from_secs(600),
    )
    .await?;
    let running = started.elapsed();
    println!(
        "sandboxes: {n} created (Raft-acknowledged) in {:.2}s",
        accepted.as_secs_f64()
    );
    println!(
        "sandboxes: {n} Running (real Podman containers, 1 agent) after {:.2}s",
        running.as_secs_f64()
    );
    println!(
        "sandboxes: {:.1} sandboxes/s to Running; {:.0} ms per sandbox",
        n as f64 / running.as_secs_f64(),
        running.as_millis() as f64 / n as f64
    );
    Ok(())
}
