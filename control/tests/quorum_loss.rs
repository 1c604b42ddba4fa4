//! No sandbox is ever abandoned by its leader: the cluster loses its
//! quorum for minutes (both followers killed) while sandboxes are in the
//! middle of updates. Every sandbox actor lives through it (they retry
//! with backoff instead of failing, and are never given up on), and every
//! update finishes once the followers are back.
//!
//! `BERTH_TEST_QUORUM_LOSS_SECS` sets how long the quorum stays lost
//! (default 180 s: longer than the old restart budget's first few rounds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1::{
    CreateSandboxRequest, OperationPhase, Phase, SandboxSpec, UpdateSandboxRequest,
};
use berth_testkit::api::{unique, wait_agent_ready, wait_until};
use berth_testkit::TestCluster;

const NODE: &str = "mem1";
const SANDBOXES: usize = 3;

fn loss() -> Duration {
    let secs = std::env::var("BERTH_TEST_QUORUM_LOSS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

#[tokio::test]
async fn every_update_finishes_after_minutes_without_a_quorum() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    cluster.start_agent_with(NODE, &control, "memory")?;
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.sandboxes(leader).await?;

    let names: Vec<String> = (0..SANDBOXES)
        .map(|i| unique(&format!("quorum{i}")))
        .collect();
    for name in &names {
        client
            .create_sandbox(CreateSandboxRequest {
                name: name.clone(),
                spec: Some(SandboxSpec {
                    image: "img:v1".into(),
                    policy: None,
                    env: HashMap::new(),
                    secret_env: Default::default(),
                }),
                ..Default::default()
            })
            .await?;
    }
    for name in &names {
        wait_until(&mut cluster, name, Duration::from_secs(30), |s| {
            s.phase == Phase::Running as i32
        })
        .await?;
    }
    // Mid-update when the quorum goes: Verifying for 15 s.
    for name in &names {
        client
            .update_sandbox(UpdateSandboxRequest {
                name: name.clone(),
                image: Some("img:v2".into()),
                min_healthy_ms: Some(15_000),
                health_timeout_ms: Some(24 * 3600 * 1000),
                ..Default::default()
            })
            .await?;
    }
    for name in &names {
        wait_until(&mut cluster, name, Duration::from_secs(30), |s| {
            s.operation
                .as_ref()
                .is_some_and(|o| o.phase == OperationPhase::Verifying as i32)
        })
        .await?;
    }

    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        cluster.kill9(*id);
    }
    let lost_at = Instant::now();
    let mut lowest = usize::MAX;
    while lost_at.elapsed() < loss() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = cluster.status(leader).await?;
        if status.leader_id == leader {
            lowest = lowest.min(status.sandbox_actors as usize);
        }
    }
    assert_eq!(
        lowest,
        SANDBOXES,
        "a sandbox actor died during the quorum loss\n{}",
        cluster.logs()
    );

    for id in &followers {
        cluster.restart(*id)?;
    }
    for name in &names {
        let done = wait_until(&mut cluster, name, Duration::from_secs(120), |s| {
            s.operation.as_ref().is_some_and(|o| o.terminal)
        })
        .await?;
        let op = done.operation.unwrap();
        assert_eq!(op.phase, OperationPhase::Succeeded as i32, "{name}: {op:?}");
        assert_eq!(done.revision, 2);
    }
    Ok(())
}
