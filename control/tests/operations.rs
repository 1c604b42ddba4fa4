//! Operations between the happy paths, with real berthd processes and an
//! agent on the in-memory driver (these defects live in the control plane):
//! operator commands during an update are refused or end it cleanly, a lost
//! node cannot hold an update (every phase has a deadline), and a retried
//! write (same request id, through a follower) is answered, never applied
//! twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, OperationPhase, Phase, RollbackSandboxRequest,
    Sandbox, SandboxSpec, StartSandboxRequest, StopSandboxRequest, UpdateSandboxRequest,
};
use berth_testkit::api::{unique, wait_agent_ready, wait_until};
use berth_testkit::TestCluster;

const NODE: &str = "mem1";

async fn cluster() -> anyhow::Result<TestCluster> {
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    cluster.start_agent_with(NODE, &control, "memory")?;
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;
    Ok(cluster)
}

fn spec(image: &str) -> SandboxSpec {
    SandboxSpec {
        image: image.to_string(),
        policy: None,
        env: HashMap::new(),
        secret_env: Default::default(),
    }
}

fn create_request(name: &str, request_id: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        name: name.to_string(),
        spec: Some(spec("img:v1")),
        request_id: request_id.to_string(),
        ..Default::default()
    }
}

fn update_request(name: &str, min_healthy_ms: u64, health_timeout_ms: u64) -> UpdateSandboxRequest {
    UpdateSandboxRequest {
        name: name.to_string(),
        image: Some("img:v2".to_string()),
        min_healthy_ms: Some(min_healthy_ms),
        health_timeout_ms: Some(health_timeout_ms),
        ..Default::default()
    }
}

async fn running(cluster: &mut TestCluster, name: &str) -> anyhow::Result<Sandbox> {
    let mut client = cluster.sandboxes(1).await?;
    client.create_sandbox(create_request(name, "")).await?;
    wait_until(cluster, name, Duration::from_secs(30), |s| {
        s.phase == Phase::Running as i32
    })
    .await
}

fn phase(s: &Sandbox) -> Option<OperationPhase> {
    s.operation
        .as_ref()
        .and_then(|o| OperationPhase::try_from(o.phase).ok())
}

/// A stop during Verifying used to leave the update RollingBack forever:
/// now stop and start are refused naming the operation, which goes on and
/// succeeds; a delete during an update ends it (Aborted) and deletes.
#[tokio::test]
async fn stop_and_start_wait_for_an_update_and_delete_ends_it() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let name = unique("opstop");
    running(&mut cluster, &name).await?;
    let mut client = cluster.sandboxes(2).await?;
    let op = client
        .update_sandbox(update_request(&name, 4_000, 30_000))
        .await?
        .into_inner();
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        phase(s) == Some(OperationPhase::Verifying)
    })
    .await?;
    let status = client
        .stop_sandbox(StopSandboxRequest {
            name: name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&op.id) && status.message().contains("Verifying"),
        "{}",
        status.message()
    );
    // Start of a sandbox meant to run changes nothing and is accepted.
    client
        .start_sandbox(StartSandboxRequest {
            name: name.clone(),
            request_id: String::new(),
        })
        .await?;
    let done = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    assert_eq!(phase(&done), Some(OperationPhase::Succeeded), "{done:?}");

    // Delete during the next update: Aborted, then gone.
    let mut next = update_request(&name, 30_000, 60_000);
    next.image = Some("img:v3".to_string());
    client.update_sandbox(next).await?;
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        phase(s) == Some(OperationPhase::Verifying)
    })
    .await?;
    let deleted = client
        .delete_sandbox(DeleteSandboxRequest {
            name: name.clone(),
            keep_volume: false,
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let op = deleted
        .sandbox
        .and_then(|s| s.operation)
        .expect("operation");
    assert_eq!(op.phase, OperationPhase::Aborted as i32, "{op:?}");
    assert!(
        op.reason.contains("deleted during Verifying"),
        "{}",
        op.reason
    );
    Ok(())
}

/// The node dies mid-update and never comes back: the update still ends,
/// by deadlines (Verifying, then RollingBack), Failed with a reason that
/// names the way out.
#[tokio::test]
async fn an_update_on_a_lost_node_ends_by_its_deadlines() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let name = unique("oplost");
    running(&mut cluster, &name).await?;
    let mut client = cluster.sandboxes(1).await?;
    client
        .update_sandbox(update_request(&name, 5_000, 8_000))
        .await?;
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        phase(s) == Some(OperationPhase::Verifying)
    })
    .await?;
    cluster.kill9_agent(NODE);
    let done = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    let op = done.operation.clone().unwrap();
    assert_eq!(phase(&done), Some(OperationPhase::Failed), "{op:?}");
    assert!(
        op.reason.contains("within") && op.reason.contains("--to-revision"),
        "{}",
        op.reason
    );
    Ok(())
}

/// A create retried with its request id (here through two different
/// control nodes, a follower forwarding) returns the sandbox it created,
/// not AlreadyExists; a retried rollback returns the first rollback's
/// operation instead of aborting it; an id reused for another sandbox is
/// InvalidArgument.
#[tokio::test]
async fn a_retried_write_is_answered_not_applied_twice() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let name = unique("opretry");
    let request_id = format!("test-{name}");
    let mut via1 = cluster.sandboxes(1).await?;
    let mut via2 = cluster.sandboxes(2).await?;
    let first = via1
        .create_sandbox(create_request(&name, &request_id))
        .await?
        .into_inner();
    let again = via2
        .create_sandbox(create_request(&name, &request_id))
        .await?
        .into_inner();
    assert_eq!(
        again.uid, first.uid,
        "the same sandbox, not a second create"
    );
    let fresh = via2
        .create_sandbox(create_request(&name, ""))
        .await
        .unwrap_err();
    assert_eq!(fresh.code(), tonic::Code::AlreadyExists);
    let reused = via1
        .create_sandbox(create_request(&format!("{name}-b"), &request_id))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::InvalidArgument, "{reused:?}");
    let bad = via1
        .create_sandbox(create_request(&format!("{name}-c"), "has space"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        s.phase == Phase::Running as i32
    })
    .await?;
    via1.update_sandbox(update_request(&name, 20_000, 60_000))
        .await?;
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        phase(s) == Some(OperationPhase::Verifying)
    })
    .await?;
    let rollback = RollbackSandboxRequest {
        name: name.clone(),
        to_revision: None,
        request_id: format!("rollback-{name}"),
    };
    let first = via1.rollback_sandbox(rollback.clone()).await?.into_inner();
    // Without its id, the retry would be refused: "already going back".
    let again = via2.rollback_sandbox(rollback).await?.into_inner();
    assert_eq!(again.id, first.id, "the same operation");
    assert_eq!(again.phase, OperationPhase::RollingBack as i32, "{again:?}");
    let done = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    assert_eq!(phase(&done), Some(OperationPhase::RolledBack), "{done:?}");
    Ok(())
}

/// `update --unset-env KEY` removes a variable; unsetting one that is not
/// set, or setting and unsetting one at once, is refused and changes
/// nothing.
#[tokio::test]
async fn an_update_can_unset_env() -> anyhow::Result<()> {
    let mut cluster = cluster().await?;
    let name = unique("unset");
    let mut client = cluster.sandboxes(1).await?;
    let mut create = create_request(&name, "");
    create.spec = Some(SandboxSpec {
        env: HashMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
        ..spec("img:v1")
    });
    client.create_sandbox(create).await?;
    wait_until(&mut cluster, &name, Duration::from_secs(30), |s| {
        s.phase == Phase::Running as i32
    })
    .await?;
    let unset = |keys: &[&str]| UpdateSandboxRequest {
        name: name.clone(),
        unset_env: keys.iter().map(|k| k.to_string()).collect(),
        min_healthy_ms: Some(0),
        health_timeout_ms: Some(30_000),
        ..Default::default()
    };
    let missing = client.update_sandbox(unset(&["C"])).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument, "{missing:?}");
    let mut both = unset(&["A"]);
    both.env = HashMap::from([("A".into(), "3".into())]);
    let both = client.update_sandbox(both).await.unwrap_err();
    assert_eq!(both.code(), tonic::Code::InvalidArgument, "{both:?}");
    client.update_sandbox(unset(&["A"])).await?;
    let done = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    assert_eq!(phase(&done), Some(OperationPhase::Succeeded));
    assert_eq!(done.revision, 2);
    let env = done.spec.unwrap().env;
    assert_eq!(env, HashMap::from([("B".to_string(), "2".to_string())]));
    Ok(())
}
