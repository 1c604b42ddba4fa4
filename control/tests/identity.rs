//! Identity with real processes and Podman: everything that can outlive a
//! sandbox is keyed by its uid (a kept volume is never confused with a new
//! sandbox of the same name, and can be listed, adopted and deleted); a
//! lost volume is reported, never recreated empty; and two agents cannot
//! share one node name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, DeleteVolumeRequest, ListAgentsRequest,
    ListVolumesRequest, OperationPhase, Phase, ReplaceNodeRequest, Sandbox, SandboxSpec,
    UpdateSandboxRequest,
};
use berth_testkit::api::{
    cluster_with_agent, get, read_file, unique, wait_gone, wait_until, write_file,
};
use berth_testkit::podman::{self, TEST_IMAGE_V1, TEST_IMAGE_V2};
use berth_testkit::TestCluster;

const NODE: &str = "n1";

fn create_request(name: &str, volume: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        name: name.to_string(),
        spec: Some(SandboxSpec {
            image: TEST_IMAGE_V1.to_string(),
            policy: None,
            env: HashMap::new(),
            secret_env: Default::default(),
        }),
        volume: volume.to_string(),
        ..Default::default()
    }
}

async fn running(cluster: &mut TestCluster, name: &str, volume: &str) -> anyhow::Result<Sandbox> {
    let mut client = cluster.sandboxes(1).await?;
    client.create_sandbox(create_request(name, volume)).await?;
    wait_until(cluster, name, Duration::from_secs(60), |s| {
        s.phase == Phase::Running as i32
    })
    .await
}

async fn delete(cluster: &mut TestCluster, name: &str, keep_volume: bool) -> anyhow::Result<()> {
    let mut client = cluster.sandboxes(1).await?;
    client
        .delete_sandbox(DeleteSandboxRequest {
            name: name.to_string(),
            keep_volume,
            request_id: String::new(),
        })
        .await?;
    wait_gone(cluster, name).await
}

/// Deleted with --keep-volume, then re-created under the same name: the
/// kept volume's inventory entry used to hide the new container (status
/// flapped, updates rolled back, a delete forgot a running container).
/// Now the new sandbox is steady, updates, and is deleted cleanly while the
/// kept volume stays; the kept volume is listed (name, uid, size), adopted
/// by another sandbox with its data, kept again and deleted for good.
#[tokio::test]
async fn a_kept_volume_is_never_confused_with_a_new_sandbox_of_the_same_name() -> anyhow::Result<()>
{
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let name = cluster.track(&unique("keep"));
    let adopter = cluster.track(&unique("adopt"));
    let first = running(&mut cluster, &name, "").await?;
    write_file(&mut cluster, &name, "precious").await?;
    delete(&mut cluster, &name, true).await?;

    let mut client = cluster.sandboxes(2).await?;
    let kept = client
        .list_volumes(ListVolumesRequest {})
        .await?
        .into_inner()
        .volumes;
    let kept = kept
        .iter()
        .find(|v| v.volume == first.volume)
        .expect("listed");
    assert_eq!(
        (kept.sandbox.as_str(), kept.uid.as_str()),
        (name.as_str(), first.uid.as_str())
    );
    assert_eq!(kept.node, NODE);
    assert!(kept.size_bytes.is_some_and(|b| b > 0), "{kept:?}");

    // A new sandbox of the same name: steady Running, never flapping.
    let second = running(&mut cluster, &name, "").await?;
    assert_ne!(second.uid, first.uid);
    assert_ne!(second.volume, first.volume);
    let steady_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < steady_until {
        let s = get(&mut cluster, &name).await?.expect("sandbox");
        assert_eq!(s.phase, Phase::Running as i32, "flapped: {s:?}");
        assert_eq!(s.container_id, second.container_id, "{s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ... updates without a spurious rollback ...
    client
        .update_sandbox(UpdateSandboxRequest {
            name: name.clone(),
            image: Some(TEST_IMAGE_V2.to_string()),
            min_healthy_ms: Some(2_000),
            health_timeout_ms: Some(30_000),
            ..Default::default()
        })
        .await?;
    let updated = wait_until(&mut cluster, &name, Duration::from_secs(90), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    let op = updated.operation.unwrap();
    assert_eq!(op.phase, OperationPhase::Succeeded as i32, "{op:?}");
    // ... and is deleted with its container, the kept volume untouched.
    delete(&mut cluster, &name, false).await?;
    assert!(
        podman::container(&name)?.is_none(),
        "a container outlived its delete"
    );
    assert_eq!(podman::volumes_of(&name)?, vec![first.volume.clone()]);

    // Adopt the kept volume: the data is there.
    let adopted = running(&mut cluster, &adopter, &first.volume).await?;
    assert_eq!(adopted.volume, first.volume);
    assert_eq!(read_file(&mut cluster, &adopter).await?, "precious");
    let again = client
        .create_sandbox(create_request(&unique("adopt2"), &first.volume))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::NotFound,
        "adopted only once: {again:?}"
    );

    // Kept again, then deleted for good by its node.
    delete(&mut cluster, &adopter, true).await?;
    let marked = client
        .delete_volume(DeleteVolumeRequest {
            volume: first.volume.clone(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert!(marked.deleting);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_volumes(ListVolumesRequest {})
            .await?
            .into_inner();
        if listed.volumes.iter().all(|v| v.volume != first.volume) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "kept volume never deleted\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(podman::volumes_of(&name)?.is_empty());
    let unknown = client
        .delete_volume(DeleteVolumeRequest {
            volume: first.volume.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    Ok(())
}

/// The volume of a sandbox that has run is removed behind berth's back
/// while its agent is down: the agent used to create an empty one and start
/// the sandbox on it. Now the sandbox is Failed with `VolumeLost` and no
/// volume is created.
#[tokio::test]
async fn a_lost_volume_is_reported_never_recreated_empty() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let name = cluster.track(&unique("lost"));
    let s = running(&mut cluster, &name, "").await?;
    cluster.kill9_agent(NODE);
    podman::remove_container(&name)?;
    podman::remove_volume(&s.volume);
    assert!(podman::volumes_of(&name)?.is_empty());
    cluster.start_agent(NODE)?;
    let failed = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.phase == Phase::Failed as i32
    })
    .await?;
    assert!(failed.message.contains("VolumeLost"), "{}", failed.message);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        podman::volumes_of(&name)?.is_empty(),
        "an empty volume was created"
    );
    assert!(podman::container(&name)?.is_none());
    Ok(())
}

async fn agent_instance(cluster: &TestCluster) -> anyhow::Result<(bool, String)> {
    let mut client = cluster.cluster_client(1).await?;
    let agents = client.list_agents(ListAgentsRequest {}).await?.into_inner();
    let a = agents
        .agents
        .into_iter()
        .find(|a| a.name == NODE)
        .expect("agent");
    Ok((a.ready, a.instance_id))
}

/// A second agent claiming a live node's name (its own data dir: another
/// machine with the same --node-name) is refused with a clear error instead
/// of silently replacing the first session; after the first one is gone it
/// is accepted only once an operator runs `berth node replace`.
#[tokio::test]
async fn a_second_agent_cannot_take_a_node_name() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let name = cluster.track(&unique("claim"));
    let s = running(&mut cluster, &name, "").await?;
    let (_, first) = agent_instance(&cluster).await?;
    assert!(!first.is_empty());

    let control = cluster.control_addrs();
    cluster.start_agent_as("impostor", NODE, &control, "container")?;
    let impostor_log = cluster.agent_dir("impostor").with_extension("log");
    let log_of = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_of(&impostor_log).contains("refused") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "impostor never refused\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent_instance(&cluster).await?, (true, first.clone()));
    let same = get(&mut cluster, &name).await?.expect("sandbox");
    assert_eq!(
        (same.phase, same.container_id),
        (Phase::Running as i32, s.container_id)
    );

    // The first agent dies; its name is still not free for the taking.
    let mut admin = cluster.cluster_client(1).await?;
    let busy = admin
        .replace_node(ReplaceNodeRequest { name: NODE.into() })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");
    cluster.kill9_agent(NODE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_instance(&cluster).await?.0 {
        anyhow::ensure!(Instant::now() < deadline, "node never NotReady");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent_instance(&cluster).await?,
        (false, first.clone()),
        "still refused"
    );
    admin
        .replace_node(ReplaceNodeRequest { name: NODE.into() })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ready, instance) = agent_instance(&cluster).await?;
        if ready && instance != first {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replacement never accepted\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
