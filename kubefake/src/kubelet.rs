//! The fake kubelet: moves Pods through the states a real node shows.
//!
//! A created Pod waits for its PersistentVolumeClaim, "pulls" its image
//! (an image the fake does not know stays in `ErrImagePull`), runs its
//! init container (the workspace seed: the image's `/sandbox` files are
//! copied into the claim's directory once, guarded by the same sentinel
//! file the real init container uses), then runs. An image registered
//! with an exit code crashes after a moment and restarts with a growing
//! `restartCount` (`CrashLoopBackOff` in between), as `restartPolicy:
//! Always` does. A deleted Pod terminates after a short grace, so a new
//! Pod on the same ReadWriteOnce claim must wait for the old one to go.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::store::{now, Key, Resource};
use crate::Shared;

/// The sentinel the seeding init container leaves in a workspace.
pub const SENTINEL: &str = ".berth-seeded";
/// How long each step of a Pod's start takes.
const STEP: Duration = Duration::from_millis(60);
/// How long a terminating Pod takes to go (at most its grace period).
pub const TERMINATION: Duration = Duration::from_millis(250);
/// How long a crashing image's container runs, and the restart back-off.
const CRASH_AFTER: Duration = Duration::from_millis(300);

/// An image the fake "registry" holds.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Files under the image's `/sandbox` (path relative to it, content).
    pub sandbox: Vec<(String, String)>,
    /// `Some(code)`: the main container exits with `code` shortly after
    /// each start. `None`: it runs until the Pod is deleted.
    pub exit_code: Option<i32>,
}

fn container_status(name: &str, image: &str, state: Value, restarts: u64, last: Value) -> Value {
    json!({
        "name": name, "image": image, "imageID": format!("fake://{image}"),
        "containerID": format!("fake://{}", uuid::Uuid::new_v4()),
        "ready": state.get("running").is_some(),
        "started": state.get("running").is_some(),
        "restartCount": restarts, "state": state, "lastState": last,
    })
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

/// Drives one Pod from creation until it is deleted.
pub async fn run_pod(shared: Arc<Shared>, key: Key) {
    let Some(pod) = shared.get(&key) else { return };
    let spec = &pod["spec"];
    let main = &spec["containers"][0];
    let name = main["name"].as_str().unwrap_or("main").to_string();
    let image = main["image"].as_str().unwrap_or_default().to_string();
    let claim = crate::claim_of(&pod);
    let pending = |reason: &str, message: &str| {
        let status = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [container_status(&name, &image, waiting(reason, message), 0, json!({}))],
        });
        shared.set_status(&key, status)
    };
    tokio::time::sleep(STEP).await;
    // The claim must exist (and be bound) before the Pod can start.
    if let Some(claim) = &claim {
        let pvc: Key = (
            Resource::PersistentVolumeClaims,
            key.1.clone(),
            claim.clone(),
        );
        let mut told = false;
        while shared.get(&pvc).is_none() {
            if !told
                && !pending(
                    "ContainerCreating",
                    &format!("persistentvolumeclaim {claim:?} not found"),
                )
            {
                return;
            }
            told = true;
            tokio::time::sleep(STEP).await;
            if !shared.alive(&key) {
                return;
            }
        }
    }
    let Some(found) = shared.image(&image) else {
        pending(
            "ErrImagePull",
            &format!("failed to pull image {image:?}: not found"),
        );
        return;
    };
    if !pending("PodInitializing", "") {
        return;
    }
    tokio::time::sleep(STEP).await;
    if let Some(claim) = &claim {
        if let Err(e) = seed(&shared.workspace(&key.1, claim), &found) {
            tracing::warn!(error = %e, "fake kubelet: seeding failed");
        }
    }
    let mut restarts = 0u64;
    let mut last = json!({});
    loop {
        if !shared.alive(&key) {
            return;
        }
        let started = now();
        let running = json!({"running": {"startedAt": started}});
        let status = json!({
            "phase": "Running", "startTime": started, "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [container_status(&name, &image, running, restarts, last.clone())],
        });
        if !shared.set_status(&key, status) {
            return;
        }
        shared.log(
            &key,
            format!("container {name} started from {image} (restart {restarts})"),
        );
        let Some(code) = found.exit_code else { return };
        tokio::time::sleep(CRASH_AFTER).await;
        let terminated = json!({"terminated": {"exitCode": code, "reason": "Error", "startedAt": started, "finishedAt": now()}});
        shared.log(&key, format!("container {name} exited with code {code}"));
        restarts += 1;
        last = terminated.clone();
        let status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [container_status(&name, &image, waiting("CrashLoopBackOff", "back-off restarting failed container"), restarts, terminated)],
        });
        if !shared.set_status(&key, status) {
            return;
        }
        tokio::time::sleep(CRASH_AFTER).await;
    }
}

/// Crash the running main container of a Pod once, as an OOM kill or a
/// failing process would: `restartCount` grows and `startedAt` moves.
pub fn crash(shared: &Shared, key: &Key, code: i32) -> bool {
    shared
        .modify(key, |pod| {
            let status = &mut pod["status"]["containerStatuses"][0];
            let restarts = status["restartCount"].as_u64().unwrap_or(0) + 1;
            let started = status.pointer("/state/running/startedAt").cloned();
            status["lastState"] = json!({"terminated": {"exitCode": code, "reason": "Error", "startedAt": started, "finishedAt": now()}});
            status["restartCount"] = json!(restarts);
            status["state"] = json!({"running": {"startedAt": now()}});
            status["containerID"] = json!(format!("fake://{}", uuid::Uuid::new_v4()));
        })
        .is_some()
}

/// The init container's job: copy the image's `/sandbox` into an unseeded
/// workspace, then leave the sentinel; a seeded one is never touched.
fn seed(dir: &std::path::Path, image: &Image) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if dir.join(SENTINEL).exists() {
        return Ok(());
    }
    for (path, content) in &image.sandbox {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, content)?;
    }
    std::fs::write(dir.join(SENTINEL), "")
}

/// Finish a Pod's deletion after its (shortened) grace period.
pub async fn terminate(shared: Arc<Shared>, key: Key, grace: Duration) {
    tokio::time::sleep(grace.min(TERMINATION)).await;
    shared.finish_delete(&key);
}
