//! End to end with real processes and real Podman containers: berthd × 3,
//! berth-agent with the container driver, sandboxes from a locally built
//! image. Each test checks the invariants it is about: the workspace
//! survives every gateway event (4), at most one container per sandbox
//! (5), a new leader adopts running sandboxes without touching them (2),
//! bad input gets a clear answer (8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_proto::v1::{
    DeleteSandboxRequest, Phase, Sandbox, SandboxLogsRequest, StartSandboxRequest,
    StopSandboxRequest,
};
use berth_testkit::api::{
    any_node, cluster_with_agent, create, exec, get, read_file, unique, wait_agent_ready,
    wait_gone, wait_until, write_file,
};
use berth_testkit::podman::{self, TEST_IMAGE_V1};
use berth_testkit::TestCluster;

const NODE: &str = "n1";

async fn wait_phase(
    cluster: &mut TestCluster,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> anyhow::Result<Sandbox> {
    wait_until(cluster, name, timeout, |s| s.phase == phase as i32).await
}

async fn running(
    cluster: &mut TestCluster,
    tag: &str,
) -> anyhow::Result<(String, podman::ContainerInfo)> {
    let name = cluster.track(&unique(tag));
    create(cluster, &name, TEST_IMAGE_V1).await?;
    wait_phase(cluster, &name, Phase::Running, Duration::from_secs(60)).await?;
    let info = podman::container(&name)?.expect("container exists");
    Ok((name, info))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_survives_a_restart_of_every_control_node() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, before) = running(&mut cluster, "gw").await?;
    let (_, seeded) = exec(&mut cluster, &name, &["cat", "/sandbox/README"]).await?;
    assert!(
        seeded.contains("seeded by berth-demo"),
        "volume not seeded from the image: {seeded:?}"
    );
    write_file(&mut cluster, &name, "precious").await?;

    for id in 1..=3 {
        cluster.kill9(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        podman::container(&name)?.map(|c| c.running),
        Some(true),
        "workload must outlive the gateway"
    );
    for id in 1..=3 {
        cluster.restart(id)?;
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;
    wait_phase(&mut cluster, &name, Phase::Running, Duration::from_secs(30)).await?;
    assert_eq!(read_file(&mut cluster, &name).await?, "precious");
    assert_eq!(
        podman::container(&name)?,
        Some(before),
        "container restarted or replaced"
    );
    assert_eq!(podman::volumes_of(&name)?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_adopts_running_sandboxes_without_touching_them() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let mut sandboxes = Vec::new();
    for i in 0..3 {
        sandboxes.push(running(&mut cluster, &format!("adopt{i}")).await?);
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;
    // The new leader's actors now act: stopping one sandbox works.
    let (stopped, _) = sandboxes[0].clone();
    let mut client = cluster.sandboxes(new_leader).await?;
    client
        .stop_sandbox(StopSandboxRequest {
            name: stopped.clone(),
            request_id: String::new(),
        })
        .await?;
    wait_phase(
        &mut cluster,
        &stopped,
        Phase::Stopped,
        Duration::from_secs(30),
    )
    .await?;
    eprintln!(
        "failover: new leader acting on sandboxes {:?} after kill -9",
        killed_at.elapsed()
    );
    for (name, before) in &sandboxes[1..] {
        let s = wait_phase(&mut cluster, name, Phase::Running, Duration::from_secs(10)).await?;
        assert_eq!(s.container_id, before.id);
        assert_eq!(
            podman::container(name)?.as_ref(),
            Some(before),
            "{name} was restarted or replaced"
        );
        assert_eq!(podman::containers_of(name)?.len(), 1, "{name} duplicated");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_reconciles_its_inventory_without_duplicates_or_deletes(
) -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, before) = running(&mut cluster, "agentrs").await?;
    write_file(&mut cluster, &name, "kept").await?;
    cluster.kill9_agent(NODE);
    // The leader notices the silence and reports the node NotReady.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = get(&mut cluster, &name).await?.expect("sandbox");
        if s.message.contains("NotReady") {
            break;
        }
        assert!(Instant::now() < deadline, "never reported NotReady: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        podman::container(&name)?.as_ref(),
        Some(&before),
        "nothing may change while the agent is away"
    );
    cluster.start_agent(NODE)?;
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        s.phase == Phase::Running as i32 && s.message.starts_with("running on node")
    })
    .await?;
    assert_eq!(podman::container(&name)?, Some(before));
    assert_eq!(podman::containers_of(&name)?.len(), 1);
    assert_eq!(podman::volumes_of(&name)?.len(), 1);
    assert_eq!(read_file(&mut cluster, &name).await?, "kept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_behind_berths_back_is_recreated_with_the_same_volume(
) -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, before) = running(&mut cluster, "recreate").await?;
    let volume = get(&mut cluster, &name).await?.expect("sandbox").volume;
    write_file(&mut cluster, &name, "survivor").await?;
    podman::remove_container(&name)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        if let Some(c) = podman::container(&name)? {
            if c.running && c.id != before.id {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "container never recreated\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = wait_phase(&mut cluster, &name, Phase::Running, Duration::from_secs(30)).await?;
    assert_eq!(s.node, NODE);
    assert_eq!(s.volume, volume);
    assert_eq!(podman::volumes_of(&name)?, vec![volume]);
    assert_eq!(read_file(&mut cluster, &name).await?, "survivor");
    assert_eq!(podman::containers_of(&name)?.len(), 1);
    assert_ne!(after.id, before.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_delete_with_and_without_the_volume_leave_no_orphans() -> anyhow::Result<()>
{
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, before) = running(&mut cluster, "life").await?;
    write_file(&mut cluster, &name, "v").await?;
    let via = any_node(&mut cluster);
    let mut client = cluster.sandboxes(via).await?;

    // The container's output through the control plane (the demo process
    // prints nothing, so the stream just ends cleanly).
    let mut logs = client
        .sandbox_logs(SandboxLogsRequest {
            name: name.clone(),
            follow: false,
        })
        .await?
        .into_inner();
    while logs.message().await?.is_some() {}

    client
        .stop_sandbox(StopSandboxRequest {
            name: name.clone(),
            request_id: String::new(),
        })
        .await?;
    wait_phase(&mut cluster, &name, Phase::Stopped, Duration::from_secs(30)).await?;
    assert_eq!(podman::container(&name)?.map(|c| c.running), Some(false));
    let refused = exec(&mut cluster, &name, &["true"]).await.unwrap_err();
    let status = refused.downcast_ref::<tonic::Status>().expect("status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    client
        .start_sandbox(StartSandboxRequest {
            name: name.clone(),
            request_id: String::new(),
        })
        .await?;
    wait_phase(&mut cluster, &name, Phase::Running, Duration::from_secs(30)).await?;
    let restarted = podman::container(&name)?.expect("container");
    assert_eq!(restarted.id, before.id, "start reuses the container");
    assert_eq!(read_file(&mut cluster, &name).await?, "v");

    client
        .delete_sandbox(DeleteSandboxRequest {
            name: name.clone(),
            keep_volume: false,
            request_id: String::new(),
        })
        .await?;
    wait_gone(&mut cluster, &name).await?;
    assert!(podman::containers_of(&name)?.is_empty(), "orphan container");
    assert!(podman::volumes_of(&name)?.is_empty(), "orphan volume");

    let (kept, _) = running(&mut cluster, "keepvol").await?;
    let volume = get(&mut cluster, &kept).await?.expect("sandbox").volume;
    client
        .delete_sandbox(DeleteSandboxRequest {
            name: kept.clone(),
            keep_volume: true,
            request_id: String::new(),
        })
        .await?;
    wait_gone(&mut cluster, &kept).await?;
    assert!(podman::containers_of(&kept)?.is_empty(), "orphan container");
    assert_eq!(
        podman::volumes_of(&kept)?,
        vec![volume.clone()],
        "--keep-volume must keep it"
    );
    podman::remove_volume(&volume);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_clearly_and_unknown_sandboxes_are_not_found() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let name = cluster.track(&unique("noimage"));
    create(&mut cluster, &name, "localhost/berth-does-not-exist:v9").await?;
    let failed = wait_phase(&mut cluster, &name, Phase::Failed, Duration::from_secs(90)).await?;
    assert!(
        failed.message.contains("berth-does-not-exist"),
        "no reason given: {failed:?}"
    );
    assert!(podman::containers_of(&name)?.is_empty());

    let err = exec(&mut cluster, "no-such-sandbox", &["true"])
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("status");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let via = any_node(&mut cluster);
    let mut client = cluster.sandboxes(via).await?;
    let err = client
        .stop_sandbox(StopSandboxRequest {
            name: "no-such-sandbox".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_container_is_restarted_with_growing_backoff() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let name = cluster.track(&unique("crashloop"));
    create(&mut cluster, &name, podman::TEST_IMAGE_CRASH).await?;
    let s = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.message.contains("exited with code 3")
    })
    .await?;
    assert_eq!(s.phase, Phase::Starting as i32, "{s:?}");
    // Watch it for 20 s: with backoff (2, 4, 8, 16 s ...) that is a handful
    // of starts; restarting on every 1 s tick would be about twenty.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&cluster.agent(NODE).expect("agent").log)?;
    let starts = log
        .lines()
        .filter(|l| l.contains("command done") && l.contains(&name) && l.contains("ensure"))
        .count();
    assert!((2..=8).contains(&starts), "{starts} starts in about 20 s");
    assert_eq!(
        podman::containers_of(&name)?.len(),
        1,
        "restarts reuse one container"
    );
    Ok(())
}
