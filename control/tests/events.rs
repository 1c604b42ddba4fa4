//! Lifecycle events from real processes (3 berthd, an in-memory agent): a
//! create, a failing update (its image is missing) and its rollback leave
//! their events in the replicated record; after `kill -9` of the leader
//! the new leader answers with the same events; `WatchEvents` streams the
//! kept ones and then each new one (a stop).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::v1::{
    CreateSandboxRequest, OperationPhase, Phase, SandboxEventsRequest, SandboxSpec,
    StopSandboxRequest, UpdateSandboxRequest, WatchEventsRequest,
};
use berth_testkit::api::{wait_agent_ready, wait_until};
use berth_testkit::TestCluster;

const NODE: &str = "mem1";

async fn kinds(cluster: &mut TestCluster, via: u64) -> Vec<String> {
    let mut client = cluster.sandboxes(via).await.unwrap();
    let events = client
        .sandbox_events(SandboxEventsRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner()
        .lifecycle;
    events
        .iter()
        .map(|e| format!("{}: {}", e.kind, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_record_a_failed_update_and_survive_failover() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let control = cluster.control_addrs();
    cluster.start_agent_with(NODE, &control, "memory").unwrap();
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30))
        .await
        .unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let mut client = cluster.sandboxes(leader).await.unwrap();
    let spec = SandboxSpec {
        image: "img:v1".into(),
        policy: None,
        env: HashMap::new(),
        secret_env: Default::default(),
    };
    client
        .create_sandbox(CreateSandboxRequest {
            name: "web".into(),
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(&mut cluster, "web", Duration::from_secs(30), |s| {
        s.phase == Phase::Running as i32
    })
    .await
    .unwrap();
    client
        .update_sandbox(UpdateSandboxRequest {
            name: "web".into(),
            image: Some("img:does-not-exist".into()),
            min_healthy_ms: Some(500),
            health_timeout_ms: Some(20_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_until(&mut cluster, "web", Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await
    .unwrap();
    let phase = done.operation.as_ref().map(|o| o.phase);
    assert_ne!(phase, Some(OperationPhase::Succeeded as i32), "{done:?}");

    let before = kinds(&mut cluster, leader).await;
    let has = |events: &[String], prefix: &str| events.iter().any(|e| e.starts_with(prefix));
    for wanted in [
        "Created: image img:v1",
        "Scheduled: placed on node mem1",
        "Started: ",
        "Running: ",
        "Update: update to revision 2 began",
    ] {
        assert!(has(&before, wanted), "no {wanted:?} in {before:#?}");
    }
    let failed = before
        .iter()
        .find(|e| e.starts_with("Update: now ") && e.contains("does-not-exist"));
    assert!(
        failed.is_some(),
        "the failing phase names its reason: {before:#?}"
    );

    // The leader dies; the survivors answer with the same events.
    cluster.kill9(leader);
    let next = cluster
        .wait_for_leader_among(
            &[1, 2, 3]
                .into_iter()
                .filter(|i| *i != leader)
                .collect::<Vec<_>>(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let after = kinds(&mut cluster, next).await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "events survive failover"
    );

    // A watch streams the kept events, then a new one.
    let mut client = cluster.sandboxes(next).await.unwrap();
    let mut stream = client
        .watch_events(WatchEventsRequest {
            name: "web".into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < after.len() {
        seen.push(stream.message().await.unwrap().unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "in order, no gaps"
    );
    client
        .stop_sandbox(StopSandboxRequest {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = stream.message().await.unwrap().unwrap();
            if e.kind == "Stopped" {
                return e;
            }
        }
    })
    .await
    .expect("a Stopped event is streamed");
    assert!(stopped.seq > seen.last().unwrap().seq);
}
