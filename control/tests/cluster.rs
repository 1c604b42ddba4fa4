//! Cluster tests: three (and more) real `berthd` processes on loopback.
//! Invariants checked: acknowledged writes survive `kill -9` of the leader
//! (1), restarted and lagging nodes catch up from the replicated log or a
//! snapshot (2), and a cluster without quorum answers Unavailable (8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use berth_proto::v1::{
    AddNodeRequest, CreateSandboxRequest, GetSandboxRequest, ListSandboxesRequest, MemberRole,
    ReadConsistency, RemoveNodeRequest, SandboxSpec,
};
use berth_testkit::TestCluster;

async fn create(cluster: &TestCluster, via: u64, name: &str) -> anyhow::Result<()> {
    let mut client = cluster.sandboxes(via).await?;
    client
        .create_sandbox(CreateSandboxRequest {
            name: name.to_string(),
            spec: Some(SandboxSpec {
                image: "localhost/berth-demo:v1".to_string(),
                policy: None,
                env: HashMap::new(),
                secret_env: Default::default(),
            }),
            request_id: String::new(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn names(
    cluster: &TestCluster,
    via: u64,
    consistency: ReadConsistency,
) -> anyhow::Result<BTreeSet<String>> {
    let mut client = cluster.sandboxes(via).await?;
    let list = client
        .list_sandboxes(ListSandboxesRequest {
            consistency: consistency as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(list.sandboxes.into_iter().map(|s| s.name).collect())
}

fn expected(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_replicate_to_every_node() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    for i in 0..10 {
        // Alternate between a follower (forwarded) and the leader.
        let via = if i % 2 == 0 { follower } else { leader };
        create(&cluster, via, &format!("w{i}")).await?;
    }
    let applied = cluster.status(leader).await?.last_applied_index;
    for id in 1..=3 {
        assert_eq!(
            names(&cluster, id, ReadConsistency::Linearizable).await?,
            expected("w", 10),
            "node {id}"
        );
        cluster
            .wait_applied(id, applied, Duration::from_secs(10))
            .await?;
        assert_eq!(
            names(&cluster, id, ReadConsistency::Local).await?,
            expected("w", 10),
            "node {id} local"
        );
    }
    // A duplicate is refused, and refused the same way through a follower.
    let err = create(&cluster, follower, "w0").await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("grpc status");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    Ok(())
}

/// One page of the list through node `via`.
async fn page(
    cluster: &TestCluster,
    via: u64,
    page_size: u32,
    page_token: String,
) -> Result<(Vec<String>, String), tonic::Status> {
    let mut client = cluster
        .sandboxes(via)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let list = client
        .list_sandboxes(ListSandboxesRequest {
            page_size,
            page_token,
            ..Default::default()
        })
        .await?
        .into_inner();
    let names = list.sandboxes.into_iter().map(|s| s.name).collect();
    Ok((names, list.next_page_token))
}

/// Pages through a follower list every sandbox once, in name order; a
/// sandbox created between pages after the last one listed is in a later
/// page; a token this API did not make is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_pages_through_every_sandbox_once() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    for i in 10..35 {
        create(&cluster, leader, &format!("p{i}")).await?;
    }
    let (all, token) = page(&cluster, follower, 0, String::new()).await?;
    assert_eq!(
        (all.len(), token.as_str()),
        (25, ""),
        "page_size 0: everything"
    );

    let (first, token) = page(&cluster, follower, 10, String::new()).await?;
    assert_eq!(first, all[..10]);
    assert!(!token.is_empty());
    // Created meanwhile: one sorting before the pages read so far (not
    // listed again), one after (listed).
    create(&cluster, leader, "a0").await?;
    create(&cluster, leader, "z0").await?;
    let (second, token) = page(&cluster, follower, 10, token).await?;
    assert_eq!(second, all[10..20]);
    let (third, token) = page(&cluster, follower, 10, token).await?;
    assert_eq!(third, [&all[20..], &["z0".to_string()]].concat());
    assert!(token.is_empty(), "the last page has no token");

    for bad in ["p10", "p1.%%%"] {
        let err = page(&cluster, follower, 10, bad.to_string())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_loses_no_acknowledged_write_and_the_node_catches_up_on_restart(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    for i in 0..20 {
        create(&cluster, leader, &format!("k{i}")).await?;
    }
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);
    let survivor = (1..=3).find(|id| *id != leader).unwrap_or(1);
    assert_eq!(
        names(&cluster, survivor, ReadConsistency::Linearizable).await?,
        expected("k", 20)
    );
    eprintln!(
        "failover: all acknowledged sandboxes readable {:?} after kill -9",
        killed_at.elapsed()
    );

    for i in 20..25 {
        create(&cluster, new_leader, &format!("k{i}")).await?;
    }
    cluster.restart(leader)?;
    let applied = cluster.status(new_leader).await?.last_applied_index;
    cluster
        .wait_applied(leader, applied, Duration::from_secs(20))
        .await?;
    assert_eq!(
        names(&cluster, leader, ReadConsistency::Local).await?,
        expected("k", 25)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_purged_log_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster =
        TestCluster::start_with(3, &["--snapshot-every", "10", "--logs-to-keep", "0"]).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let lagging = (1..=3).find(|id| *id != leader).unwrap_or(1);
    create(&cluster, leader, "s-first").await?;
    let lagging_applied = cluster
        .wait_applied(
            lagging,
            cluster.status(leader).await?.last_applied_index,
            Duration::from_secs(10),
        )
        .await?
        .last_applied_index;
    cluster.kill9(lagging);
    for i in 0..40 {
        create(&cluster, leader, &format!("s{i}")).await?;
    }
    // The leader must have purged past what the lagging node holds, so the
    // log alone can no longer bring it up to date.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader_status = loop {
        let status = cluster.status(leader).await?;
        if status.purged_index > lagging_applied || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        leader_status.purged_index > lagging_applied,
        "leader purged up to {} only; lagging node applied {lagging_applied}",
        leader_status.purged_index
    );
    cluster.restart(lagging)?;
    let caught_up = cluster
        .wait_applied(
            lagging,
            leader_status.last_applied_index,
            Duration::from_secs(20),
        )
        .await?;
    assert!(
        caught_up.snapshot_index > lagging_applied,
        "no snapshot installed: {caught_up:?}"
    );
    let mut want = expected("s", 40);
    want.insert("s-first".to_string());
    assert_eq!(
        names(&cluster, lagging, ReadConsistency::Local).await?,
        want
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_a_node_is_removed() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    for i in 0..5 {
        create(&cluster, leader, &format!("m{i}")).await?;
    }
    cluster.start_joining(4)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status(leader).await?;
        let four = status.members.iter().find(|m| m.id == 4);
        if four.is_some_and(|m| m.role == MemberRole::Follower as i32) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never became a voter: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applied = cluster.status(leader).await?.last_applied_index;
    cluster
        .wait_applied(4, applied, Duration::from_secs(10))
        .await?;
    assert_eq!(
        names(&cluster, 4, ReadConsistency::Local).await?,
        expected("m", 5)
    );

    // Adding it again, or a bad id, changes nothing.
    let mut admin = cluster.cluster_client(leader).await?;
    let again = admin
        .add_node(AddNodeRequest {
            id: 4,
            addr: cluster.addr(4).to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let zero = admin
        .add_node(AddNodeRequest {
            id: 0,
            addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), tonic::Code::InvalidArgument);
    let unknown = admin
        .remove_node(RemoveNodeRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Remove a follower other than the new node, through node 4.
    let removed = (1..=3).find(|id| *id != leader).unwrap_or(1);
    let mut via_four = cluster.cluster_client(4).await?;
    let status = via_four
        .remove_node(RemoveNodeRequest { id: removed })
        .await?
        .into_inner();
    let ids: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    assert!(!ids.contains(&removed) && ids.len() == 3, "{status:?}");
    cluster.kill9(removed);
    create(&cluster, 4, "after-removal").await?;
    let mut get = cluster.sandboxes(4).await?;
    get.get_sandbox(GetSandboxRequest {
        name: "after-removal".into(),
        consistency: 0,
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_and_reads_are_unavailable_not_hung() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(3, &["--request-timeout-ms", "2000"]).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    create(&cluster, leader, "before").await?;
    let survivor = leader;
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill9(id);
    }
    let err = create(&cluster, survivor, "during").await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("grpc status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let mut client = cluster.sandboxes(survivor).await?;
    let read = client
        .get_sandbox(GetSandboxRequest {
            name: "before".into(),
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");

    // Quorum back: the refused write never happened, the earlier one is there.
    let other = (1..=3).find(|id| *id != survivor).unwrap_or(1);
    cluster.restart(other)?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    assert_eq!(
        names(&cluster, survivor, ReadConsistency::Linearizable).await?,
        BTreeSet::from(["before".to_string()])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_a_node_down_cleanly_and_it_resumes() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    create(&cluster, leader, "t0").await?;
    let status = cluster
        .process(leader)
        .expect("leader process")
        .terminate(Duration::from_secs(10))?;
    assert!(status.success(), "berthd exited with {status:?}");
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.restart(leader)?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    assert_eq!(
        names(&cluster, leader, ReadConsistency::Linearizable).await?,
        expected("t", 1)
    );
    Ok(())
}
