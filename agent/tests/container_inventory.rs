//! The container driver's inventory against the real engine (Podman here):
//! an idle heartbeat inspects no container, a change behind the driver's
//! back is still seen at once (through the engine's event stream), a
//! change the driver makes is seen at the very next heartbeat, and a
//! resync inspects everything. A binary of its own:
//! the inventory lists every berth container on the engine, so another
//! test's containers would be counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use berth_agent::driver::{ContainerDriver, Driver};
use berth_proto::agent_v1::{ContainerState, Observed};
use common::*;

const SANDBOXES: usize = 4;

#[tokio::test]
async fn heartbeats_inspect_only_what_changed() {
    if !engine_available() {
        return;
    }
    build_image();
    let names: Vec<String> = (0..SANDBOXES)
        .map(|i| format!("agent-test-{}-inv{i}", std::process::id()))
        .collect();
    let _cleanup = Cleanup {
        names: names.clone(),
    };
    tokio::time::timeout(TEST_TIMEOUT, scenario(&names))
        .await
        .expect("inventory test timed out");
}

async fn scenario(names: &[String]) {
    let data = tempfile::tempdir().unwrap();
    let d = ContainerDriver::connect(None, data.path())
        .await
        .unwrap()
        .with_resync(Duration::from_secs(3600));
    for name in names {
        assert_running(&d.ensure(&ensure(name, "uid-1", 1, IMAGE)).await.unwrap());
    }

    // The first inventory inspects everything; idle ones inspect nothing.
    let first = d.inventory().await.unwrap();
    assert!(names.iter().all(|n| first.iter().any(|o| &o.name == n)));
    let base = d.inventory_inspects();
    assert!(base >= SANDBOXES as u64, "{base}");
    for _ in 0..3 {
        let again = d.inventory().await.unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(d.inventory_inspects(), base, "idle inventories inspected");

    // A container killed behind the driver's back: the engine's event
    // names it, and the next inventory inspects that one container.
    let killed = &names[0];
    assert!(podman(&["kill", &format!("berth-{killed}")])
        .status
        .success());
    let seen = seen_when(&d, killed, |o| o.state == ContainerState::Exited as i32).await;
    assert_eq!(seen.state, ContainerState::Exited as i32, "{seen:?}");
    let after_kill = d.inventory_inspects();
    assert!(after_kill - base <= 2, "{}", after_kill - base);

    // A restart leaves it "running" in the listing; only the engine's
    // events tell the inventory to look again.
    let restarted = &names[1];
    let before = inventory_entry(&d, restarted).await;
    assert!(
        podman(&["restart", "-t", "0", &format!("berth-{restarted}")])
            .status
            .success()
    );
    let now = seen_when(&d, restarted, |o| o.started_at != before.started_at).await;
    assert_running(&now);
    let spent = d.inventory_inspects() - after_kill;
    assert!(
        spent < SANDBOXES as u64,
        "{spent} inspects to see one restart: a full resync, not the event"
    );

    // A command this driver runs marks its sandbox changed: the very next
    // inventory has it.
    let stopped = d.stop(&names[2], "uid-1").await.unwrap();
    let seen = inventory_entry(&d, &names[2]).await;
    assert_eq!(seen.state, ContainerState::Exited as i32, "{seen:?}");
    assert_eq!(seen.container_id, stopped.container_id);

    // A container removed behind the driver's back is forgotten (its
    // volume is reported on its own).
    let removed = &names[3];
    assert!(
        podman(&["rm", "-f", "-t", "0", &format!("berth-{removed}")])
            .status
            .success()
    );
    let gone = seen_when(&d, removed, |o| o.state == ContainerState::Absent as i32).await;
    assert!(gone.volume_present, "{gone:?}");

    // A resync every time inspects every container every time.
    let always = ContainerDriver::connect(None, data.path())
        .await
        .unwrap()
        .with_resync(Duration::ZERO);
    always.inventory().await.unwrap();
    let one = always.inventory_inspects();
    always.inventory().await.unwrap();
    assert_eq!(always.inventory_inspects(), 2 * one);
    assert!(one >= SANDBOXES as u64 - 1, "{one}"); // one was removed
}

/// Inventories until `name`'s entry satisfies `done` (at most 20 s).
async fn seen_when(d: &ContainerDriver, name: &str, done: impl Fn(&Observed) -> bool) -> Observed {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = inventory_entry(d, name).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never seen: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
