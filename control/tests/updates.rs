//! Image and policy updates end to end: real berthd × 3, a real agent and
//! Podman containers. Checked throughout: the same volume across every
//! revision (4), never two containers of one sandbox (5), every update
//! ends Succeeded, Aborted, RolledBack or Failed with a reason (6), and the
//! workspace is intact. The failover test kills the leader (a chaos crash
//! point: abort right after committing a phase) in every phase.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_proto::v1::{
    GetOperationRequest, Operation, OperationPhase, Phase, RollbackSandboxRequest, Sandbox,
    UpdateSandboxRequest,
};
use berth_testkit::api::{
    any_node, cluster_with_agent, create, exec, get, read_file, unique, wait_until, write_file,
};
use berth_testkit::podman::{self, TEST_IMAGE_CRASH, TEST_IMAGE_V1, TEST_IMAGE_V2};
use berth_testkit::TestCluster;

const NODE: &str = "n1";

/// A running sandbox at revision 1 with "precious" in its workspace.
async fn running_with_data(
    cluster: &mut TestCluster,
    tag: &str,
) -> anyhow::Result<(String, Sandbox)> {
    let name = cluster.track(&unique(tag));
    create(cluster, &name, TEST_IMAGE_V1).await?;
    let s = wait_until(cluster, &name, Duration::from_secs(60), |s| {
        s.phase == Phase::Running as i32
    })
    .await?;
    write_file(cluster, &name, "precious").await?;
    Ok((name, s))
}

fn update_to(name: &str, image: Option<&str>, policy: Option<&str>) -> UpdateSandboxRequest {
    UpdateSandboxRequest {
        name: name.to_string(),
        image: image.map(String::from),
        policy: policy.map(String::from),
        env: Default::default(),
        expected_revision: None,
        health_timeout_ms: Some(30_000),
        min_healthy_ms: Some(1_500),
        no_auto_rollback: false,
        request_id: String::new(),
        ..Default::default()
    }
}

async fn update(
    cluster: &mut TestCluster,
    request: UpdateSandboxRequest,
) -> Result<Operation, tonic::Status> {
    let via = any_node(cluster);
    let mut client = cluster
        .sandboxes(via)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client.update_sandbox(request).await.map(|r| r.into_inner())
}

/// Waits for the sandbox's operation to end; returns the sandbox then.
async fn wait_terminal(cluster: &mut TestCluster, name: &str) -> anyhow::Result<Sandbox> {
    wait_until(cluster, name, Duration::from_secs(120), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await
}

fn phase_of(s: &Sandbox) -> OperationPhase {
    s.operation
        .as_ref()
        .and_then(|o| OperationPhase::try_from(o.phase).ok())
        .unwrap_or(OperationPhase::Unspecified)
}

/// The invariants after any operation: one container, the original volume,
/// the workspace file intact, running the revision the record names.
async fn assert_intact(
    cluster: &mut TestCluster,
    name: &str,
    volume: &str,
    version: &str,
) -> anyhow::Result<()> {
    let s = wait_until(cluster, name, Duration::from_secs(60), |s| {
        s.phase == Phase::Running as i32 && s.message.starts_with("running")
    })
    .await?;
    assert_eq!(s.volume, volume, "the volume changed");
    assert_eq!(
        podman::volumes_of(name)?,
        vec![volume.to_string()],
        "a second volume appeared"
    );
    assert_eq!(
        podman::containers_of(name)?.len(),
        1,
        "more than one container"
    );
    assert_eq!(
        read_file(cluster, name).await?,
        "precious",
        "workspace data lost"
    );
    let (_, v) = exec(cluster, name, &["cat", "/etc/berth-demo-version"]).await?;
    assert_eq!(v.trim(), version, "running the wrong image");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_keeps_the_workspace_and_a_crashing_or_missing_image_is_undone() -> anyhow::Result<()>
{
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, s) = running_with_data(&mut cluster, "upd").await?;

    // v1 -> v2 succeeds on the same volume.
    let op = update(&mut cluster, update_to(&name, Some(TEST_IMAGE_V2), None)).await?;
    assert_eq!((op.from_revision, op.to_revision), (1, 2));
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), OperationPhase::Succeeded, "{done:?}");
    assert_eq!((done.revision, done.stable_revision), (2, 2));
    assert_intact(&mut cluster, &name, &s.volume, "v2").await?;

    // Identical update, stale compare-and-swap: refused, nothing changes.
    let same = update(&mut cluster, update_to(&name, Some(TEST_IMAGE_V2), None))
        .await
        .unwrap_err();
    assert_eq!(same.code(), tonic::Code::FailedPrecondition);
    let mut stale = update_to(&name, Some(TEST_IMAGE_V1), None);
    stale.expected_revision = Some(1);
    let stale = update(&mut cluster, stale).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);

    // A v3 whose process exits at once: rolled back to v2 automatically.
    update(&mut cluster, update_to(&name, Some(TEST_IMAGE_CRASH), None)).await?;
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), OperationPhase::RolledBack, "{done:?}");
    let reason = done
        .operation
        .as_ref()
        .map(|o| o.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("revision 3") && reason.contains("rolling back to revision 2"),
        "{reason}"
    );
    assert_eq!(done.revision, 2);
    assert_intact(&mut cluster, &name, &s.volume, "v2").await?;

    // An image that does not exist: aborted before the old one was stopped.
    let before = podman::container(&name)?.expect("container");
    update(
        &mut cluster,
        update_to(&name, Some("localhost/berth-does-not-exist:v1"), None),
    )
    .await?;
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), OperationPhase::Aborted, "{done:?}");
    assert!(
        done.operation
            .as_ref()
            .is_some_and(|o| o.reason.contains("never stopped")),
        "{done:?}"
    );
    assert_eq!(
        podman::container(&name)?,
        Some(before),
        "the sandbox went down"
    );
    assert_eq!(done.revision, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_updates_are_gated_and_invalid_policies_change_nothing() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, s) = running_with_data(&mut cluster, "pol").await?;

    let invalid = update(
        &mut cluster,
        update_to(&name, None, Some("netwrok: none\n")),
    )
    .await
    .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    let after = get(&mut cluster, &name).await?.expect("sandbox");
    assert_eq!(
        (after.revision, after.operation.is_none()),
        (1, true),
        "an invalid policy changed something"
    );

    let policy = "network: none\nenv:\n  MODE: strict\nreadiness:\n  command: [\"test\", \"-f\", \"/sandbox/data.txt\"]\n";
    update(&mut cluster, update_to(&name, None, Some(policy))).await?;
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), OperationPhase::Succeeded, "{done:?}");
    assert_intact(&mut cluster, &name, &s.volume, "v1").await?;
    let (_, mounted) = exec(&mut cluster, &name, &["cat", "/etc/berth/policy.yaml"]).await?;
    assert_eq!(mounted, policy);
    let (_, mode) = exec(&mut cluster, &name, &["sh", "-c", "echo $MODE"]).await?;
    assert_eq!(mode.trim(), "strict");

    // A readiness probe that never passes: rolled back to the policy above.
    let failing = "readiness:\n  command: [\"test\", \"-f\", \"/sandbox/never\"]\n";
    let mut request = update_to(&name, None, Some(failing));
    request.health_timeout_ms = Some(4_000);
    update(&mut cluster, request).await?;
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), OperationPhase::RolledBack, "{done:?}");
    assert!(
        done.operation
            .as_ref()
            .is_some_and(|o| o.reason.contains("readiness")),
        "{done:?}"
    );
    assert_eq!(done.revision, 2);
    assert_intact(&mut cluster, &name, &s.volume, "v1").await?;
    let (_, mounted) = exec(&mut cluster, &name, &["cat", "/etc/berth/policy.yaml"]).await?;
    assert_eq!(
        mounted, policy,
        "the rolled-back revision's policy is mounted again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_to_a_revision_and_during_an_update() -> anyhow::Result<()> {
    let mut cluster = cluster_with_agent(NODE, &[]).await?;
    let (name, s) = running_with_data(&mut cluster, "rb").await?;
    update(&mut cluster, update_to(&name, Some(TEST_IMAGE_V2), None)).await?;
    assert_eq!(
        phase_of(&wait_terminal(&mut cluster, &name).await?),
        OperationPhase::Succeeded
    );

    // Back to revision 1 by hand.
    let via = any_node(&mut cluster);
    let mut client = cluster.sandboxes(via).await?;
    let op = client
        .rollback_sandbox(RollbackSandboxRequest {
            name: name.clone(),
            to_revision: Some(1),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (op.kind.as_str(), op.from_revision, op.to_revision),
        ("rollback", 2, 1)
    );
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(
        (phase_of(&done), done.revision),
        (OperationPhase::Succeeded, 1),
        "{done:?}"
    );
    assert_intact(&mut cluster, &name, &s.volume, "v1").await?;
    let same = client
        .rollback_sandbox(RollbackSandboxRequest {
            name: name.clone(),
            to_revision: Some(1),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        same.code(),
        tonic::Code::FailedPrecondition,
        "a rollback to the current spec is refused"
    );

    // An update held in Verifying by a long min-healthy, rolled back midway.
    let mut slow = update_to(&name, Some(TEST_IMAGE_V2), None);
    slow.min_healthy_ms = Some(20_000);
    slow.health_timeout_ms = Some(60_000);
    update(&mut cluster, slow).await?;
    wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        phase_of(s) == OperationPhase::Verifying
    })
    .await?;
    let busy = update(&mut cluster, update_to(&name, Some(TEST_IMAGE_V1), None))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    assert!(
        busy.message().contains("Verifying"),
        "the refusal names the running operation: {busy:?}"
    );
    client
        .rollback_sandbox(RollbackSandboxRequest {
            name: name.clone(),
            to_revision: None,
            request_id: String::new(),
        })
        .await?;
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(
        (phase_of(&done), done.revision),
        (OperationPhase::RolledBack, 1),
        "{done:?}"
    );
    assert_intact(&mut cluster, &name, &s.volume, "v1").await?;
    let op = client
        .get_operation(GetOperationRequest { name: name.clone() })
        .await?
        .into_inner();
    assert!(op.terminal && op.reason.contains("operator"), "{op:?}");
    Ok(())
}

/// Kills the leader right after it commits `phase`; the new leader must
/// carry the operation to its end without a second container or data loss.
async fn failover_in(
    phase: &str,
    image: &str,
    expect: OperationPhase,
    version: &str,
) -> anyhow::Result<()> {
    let failpoint = format!("after-commit-{phase}=return");
    let mut cluster = cluster_with_agent(NODE, &[("FAILPOINTS", &failpoint)]).await?;
    let (name, s) =
        running_with_data(&mut cluster, &format!("fo-{}", phase.to_lowercase())).await?;
    update(&mut cluster, update_to(&name, Some(image), None)).await?;
    // Whichever node leads when the phase is committed dies by itself at
    // the crash point.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let crashed = loop {
        if let Some(id) = (1..=3).find(|id| cluster.process(*id).is_some_and(|p| !p.is_running())) {
            break id;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no leader crashed in {phase}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.kill9(crashed);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    assert_ne!(new_leader, crashed);
    let done = wait_terminal(&mut cluster, &name).await?;
    assert_eq!(phase_of(&done), expect, "failover in {phase}: {done:?}");
    assert_intact(&mut cluster, &name, &s.volume, version).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_in_every_phase_resumes_from_the_committed_phase() -> anyhow::Result<()> {
    for phase in ["Pulling", "StoppingOld", "StartingNew", "Verifying"] {
        failover_in(phase, TEST_IMAGE_V2, OperationPhase::Succeeded, "v2").await?;
    }
    failover_in(
        "RollingBack",
        TEST_IMAGE_CRASH,
        OperationPhase::RolledBack,
        "v1",
    )
    .await?;
    Ok(())
}
