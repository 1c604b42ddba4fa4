//! The container driver against the real engine (Podman here).
//!
//! Builds a tiny busybox image locally, then walks one sandbox through its
//! life: create + seed, exec, no-op ensure, recreate behind the driver's
//! back (volume intact, not re-seeded), stop + restart, update, inventory
//! from labels after an agent "restart", and remove with and without
//! `keep_volume`. Skipped (with a notice) only when no engine exists at all.
//! Helpers (image, podman, cleanup, exec) are in `common/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use berth_agent::driver::{ContainerDriver, Driver, DriverError};
use berth_proto::agent_v1::{ContainerState, Remove};
use common::*;
use futures::StreamExt;

#[tokio::test]
async fn sandbox_lifecycle_keeps_the_volume() {
    if !engine_available() {
        return;
    }
    build_image();
    let name = format!("agent-test-{}-life", std::process::id());
    let _cleanup = Cleanup {
        names: vec![name.clone()],
    };
    tokio::time::timeout(TEST_TIMEOUT, lifecycle(&name))
        .await
        .expect("lifecycle test timed out");
}

async fn lifecycle(name: &str) {
    let data = tempfile::tempdir().unwrap();
    let d = ContainerDriver::connect(None, data.path()).await.unwrap();
    let vol = volume_of(name);

    // Create: container + volume, seeded from the image.
    let first = d.ensure(&ensure(name, "uid-1", 1, IMAGE)).await.unwrap();
    assert_running(&first);
    assert_eq!((first.uid.as_str(), first.revision), ("uid-1", 1));
    assert_eq!(first.volume, vol);
    assert_eq!(sh(&d, name, "cat /sandbox/README").await.0, "seeded\n");
    assert_eq!(sh(&d, name, "echo $GREETING").await.0, "hi\n");
    assert_eq!(
        sh(&d, name, "ls -a /sandbox | grep -c berth-seeded")
            .await
            .0,
        "1\n"
    );
    let (_, _, code) = sh(
        &d,
        name,
        "ulimit -n >/dev/null && echo work > /sandbox/work.txt; echo oops >&2; exit 3",
    )
    .await;
    assert_eq!(code, 3);
    let (_, err, _) = sh(&d, name, "echo oops >&2").await;
    assert_eq!(err, "oops\n");

    // Ensure again: a no-op.
    let again = d.ensure(&ensure(name, "uid-1", 1, IMAGE)).await.unwrap();
    assert_eq!(again.container_id, first.container_id);
    assert_eq!(again.started_at, first.started_at);

    // The user deletes the seeded README; then the container vanishes
    // behind the driver's back. Ensure recreates it on the same volume,
    // with user data intact and nothing re-seeded.
    assert_eq!(sh(&d, name, "rm /sandbox/README").await.2, 0);
    let rm = podman(&["rm", "-f", "-t", "0", &format!("berth-{name}")]);
    assert!(rm.status.success());
    let gone = inventory_entry(&d, name).await;
    assert_eq!(gone.state, ContainerState::Absent as i32, "{gone:?}");
    assert!(gone.volume_present && gone.volume == vol, "{gone:?}");
    let recreated = d.ensure(&ensure(name, "uid-1", 1, IMAGE)).await.unwrap();
    assert_running(&recreated);
    assert_ne!(recreated.container_id, first.container_id);
    assert_eq!(sh(&d, name, "cat /sandbox/work.txt").await.0, "work\n");
    assert_eq!(
        sh(&d, name, "test -e /sandbox/README").await.2,
        1,
        "not re-seeded"
    );

    // Stop keeps the container; ensure restarts the same one.
    let stopped = d.stop(name, "uid-1").await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited as i32, "{stopped:?}");
    assert_eq!(stopped.container_id, recreated.container_id);
    let not_running = d.exec(name, "", vec!["true".into()]).await.err();
    assert!(matches!(not_running, Some(DriverError::NotRunning { .. })));
    assert!(matches!(
        d.stop(name, "someone-else").await,
        Err(DriverError::UidMismatch { .. })
    ));
    let restarted = d.ensure(&ensure(name, "uid-1", 1, IMAGE)).await.unwrap();
    assert_running(&restarted);
    assert_eq!(restarted.container_id, recreated.container_id);
    assert_ne!(restarted.started_at, recreated.started_at);

    // A new revision replaces the container, never the volume.
    let updated = d.ensure(&ensure(name, "uid-1", 2, IMAGE)).await.unwrap();
    assert_running(&updated);
    assert_eq!(updated.revision, 2);
    assert_ne!(updated.container_id, restarted.container_id);
    assert_eq!(sh(&d, name, "cat /sandbox/work.txt").await.0, "work\n");
    let mut logs = d.logs(name, "", false).await.unwrap();
    while let Some(chunk) = logs.next().await {
        chunk.unwrap();
    }

    // Agent "restart": a new driver instance sees everything from labels.
    let d2 = ContainerDriver::connect(None, data.path()).await.unwrap();
    let seen = inventory_entry(&d2, name).await;
    assert_eq!(
        (seen.uid.as_str(), seen.revision, seen.container_id.as_str()),
        ("uid-1", 2, updated.container_id.as_str())
    );
    assert_running(&seen);

    // Remove keeping the volume, twice (idempotent); then remove it too.
    let mut remove = Remove {
        name: name.into(),
        uid: "uid-1".into(),
        volume: vol.clone(),
        keep_volume: true,
        ..Default::default()
    };
    for _ in 0..2 {
        let kept = d2.remove(&remove).await.unwrap();
        assert_eq!(kept.state, ContainerState::Absent as i32);
        assert!(kept.volume_present);
    }
    assert!(volume_exists(&vol));
    let orphan = inventory_entry(&d2, name).await;
    assert_eq!(
        (orphan.uid.as_str(), orphan.volume_present),
        ("uid-1", true)
    );
    remove.keep_volume = false;
    let removed = d2.remove(&remove).await.unwrap();
    assert!(!removed.volume_present, "{removed:?}");
    assert!(!volume_exists(&vol));
    assert!(d2.inventory().await.unwrap().iter().all(|o| o.name != name));
}

#[tokio::test]
async fn missing_image_creates_nothing() {
    if !engine_available() {
        return;
    }
    let name = format!("agent-test-{}-noimg", std::process::id());
    let _cleanup = Cleanup {
        names: vec![name.clone()],
    };
    let data = tempfile::tempdir().unwrap();
    let d = ContainerDriver::connect(None, data.path()).await.unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        d.ensure(&ensure(&name, "uid-1", 1, "localhost/nope:v1")),
    )
    .await
    .expect("bounded by the pull timeout")
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("missing image: {msg}");
    assert!(matches!(err, DriverError::ImageNotFound { .. }), "{msg}");
    assert!(
        msg.starts_with("image \"localhost/nope:v1\" not found locally and could not be pulled: "),
        "{msg}"
    );
    assert!(!volume_exists(&volume_of(&name)));
    let seen = d.inventory().await.unwrap();
    assert!(seen.iter().all(|o| o.name != name), "{seen:?}");
    assert!(matches!(
        d.exec(&name, "", vec!["true".into()]).await,
        Err(DriverError::NotFound { .. })
    ));
}
