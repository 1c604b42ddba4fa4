//! What the agent reports about Kubernetes sandboxes: a Pod's status as
//! an `Observed`, and the inventory of this node from the watch caches.
//!
//! A sandbox is reported once: by its live Pod of the highest revision (a
//! terminating one only when nothing else is left), or, with no Pod, by
//! its workspace claim alone (`Absent`, volume present). Only this node's
//! Pods and claims are reported (invariant 7: the node is the agent's
//! settled name, never a Pod's hostname).

use std::collections::{BTreeMap, HashSet};

use berth_proto::agent_v1::{ContainerState, Observed};
use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod};

use super::objects::{
    ANNOTATION_NODE, ANNOTATION_SANDBOX, ANNOTATION_VOLUME, LABEL_REVISION, LABEL_UID,
    LABEL_VOLUME_UID, SANDBOX_CONTAINER,
};

fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> &'a str {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
        .unwrap_or_default()
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> &'a str {
    meta.annotations
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
        .unwrap_or_default()
}

/// The sandbox a Pod belongs to ("" for Pods that are not sandboxes).
pub fn sandbox_of(pod: &Pod) -> &str {
    annotation(&pod.metadata, ANNOTATION_SANDBOX)
}

pub fn uid_of(pod: &Pod) -> &str {
    label(&pod.metadata, LABEL_UID)
}

pub fn revision_of(pod: &Pod) -> u64 {
    label(&pod.metadata, LABEL_REVISION).parse().unwrap_or(0)
}

pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The uid a claim's labels give its owner, and the sandbox it was made for.
pub fn claim_owner(pvc: &PersistentVolumeClaim) -> (&str, &str) {
    (
        label(&pvc.metadata, LABEL_VOLUME_UID),
        annotation(&pvc.metadata, ANNOTATION_SANDBOX),
    )
}

/// The claim was made by the agent of `node`.
pub fn claim_on(pvc: &PersistentVolumeClaim, node: &str) -> bool {
    annotation(&pvc.metadata, ANNOTATION_NODE) == node
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == SANDBOX_CONTAINER)
}

/// A failed workspace seed (the init container exited non-zero).
fn seed_failure(pod: &Pod) -> Option<(i32, String)> {
    let init = pod.status.as_ref()?.init_container_statuses.as_ref()?;
    init.iter().find_map(|c| {
        let state = c.state.as_ref()?;
        let terminated = state.terminated.as_ref().or(c
            .last_state
            .as_ref()?
            .terminated
            .as_ref())?;
        (terminated.exit_code != 0).then(|| {
            (
                terminated.exit_code,
                format!(
                    "seeding the workspace failed ({})",
                    terminated.reason.as_deref().unwrap_or("Error")
                ),
            )
        })
    })
}

/// What a sandbox's Pod says about it (volume presence filled in by the
/// caller).
pub fn observed_of(pod: &Pod) -> Observed {
    let meta = &pod.metadata;
    let mut o = Observed {
        name: sandbox_of(pod).to_string(),
        uid: uid_of(pod).to_string(),
        revision: revision_of(pod),
        container_id: meta.uid.clone().unwrap_or_default(),
        state: ContainerState::Created as i32,
        volume: annotation(meta, ANNOTATION_VOLUME).to_string(),
        ..Observed::default()
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_string());
    let time = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.to_string();
    let status = main_status(pod);
    if let Some(id) = status.and_then(|c| c.container_id.clone()) {
        o.container_id = id;
    }
    let state = status.and_then(|c| c.state.as_ref());
    let last = status
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    if let Some(running) = state.and_then(|s| s.running.as_ref()) {
        o.state = ContainerState::Running as i32;
        o.started_at = running.started_at.as_ref().map(time).unwrap_or_default();
        o.message = "running".to_string();
    } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        o.state = ContainerState::Exited as i32;
        o.exit_code = i64::from(t.exit_code);
        o.started_at = t.started_at.as_ref().map(time).unwrap_or_default();
        o.message = t.reason.clone().unwrap_or_else(|| "exited".to_string());
    } else if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.clone().unwrap_or_default();
        o.message = match &waiting.message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason,
        };
        if let Some(t) = last {
            // Between restarts (CrashLoopBackOff): it exited.
            o.state = ContainerState::Exited as i32;
            o.exit_code = i64::from(t.exit_code);
            o.started_at = t.started_at.as_ref().map(time).unwrap_or_default();
        }
    } else if matches!(phase.as_str(), "Failed" | "Succeeded") {
        o.state = ContainerState::Exited as i32;
        o.message = phase.to_lowercase();
    } else {
        o.message = phase.to_lowercase();
    }
    if o.state != ContainerState::Running as i32 {
        if let Some((code, why)) = seed_failure(pod) {
            o.state = ContainerState::Exited as i32;
            o.exit_code = i64::from(code);
            o.message = why;
        }
    }
    if terminating(pod) {
        o.message = format!("terminating ({})", o.message);
    }
    o
}

/// The Pod that speaks for its sandbox: live before terminating, then the
/// highest revision.
pub fn current<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.into_iter()
        .max_by_key(|p| (!terminating(p), revision_of(p)))
}

/// This node's sandboxes from the cached Pods and claims.
pub fn inventory(pods: &[&Pod], claims: &[&PersistentVolumeClaim], node: &str) -> Vec<Observed> {
    let present: HashSet<&str> = claims
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mut by_sandbox: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods.iter().copied().filter(|p| !sandbox_of(p).is_empty()) {
        by_sandbox.entry(sandbox_of(pod)).or_default().push(pod);
    }
    let mut out = Vec::new();
    for pods in by_sandbox.values() {
        if let Some(pod) = current(pods.iter().copied()) {
            let mut o = observed_of(pod);
            o.volume_present = present.contains(o.volume.as_str());
            out.push(o);
        }
    }
    let used: HashSet<String> = out.iter().map(|o| o.volume.clone()).collect();
    for claim in claims.iter().filter(|c| claim_on(c, node)) {
        let Some(name) = claim.metadata.name.as_deref() else {
            continue;
        };
        if used.contains(name) {
            continue;
        }
        let (uid, sandbox) = claim_owner(claim);
        out.push(Observed {
            name: sandbox.to_string(),
            uid: uid.to_string(),
            state: ContainerState::Absent as i32,
            volume: name.to_string(),
            volume_present: true,
            ..Observed::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(revision: u64, deleting: bool, status: serde_json::Value) -> Pod {
        let mut meta = json!({
            "name": format!("berth-s-r{revision}"), "uid": "pod-uid",
            "labels": {"berth.dev/uid": "u1", "berth.dev/revision": revision.to_string()},
            "annotations": {"berth.dev/sandbox": "s", "berth.dev/volume": "berth-s-u1"},
        });
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({"metadata": meta, "spec": {"containers": [{"name": "sandbox"}]}, "status": status})).unwrap()
    }

    fn main(state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
        json!({"phase": "Running", "containerStatuses": [{"name": "sandbox", "image": "i", "imageID": "", "ready": true, "restartCount": 1, "containerID": "c://1", "state": state, "lastState": last}]})
    }

    #[test]
    fn pod_states_map_to_container_states() {
        let running = pod(
            2,
            false,
            main(
                json!({"running": {"startedAt": "2026-01-01T00:00:05Z"}}),
                json!({}),
            ),
        );
        let o = observed_of(&running);
        assert_eq!(
            (o.state(), o.revision, o.uid.as_str()),
            (ContainerState::Running, 2, "u1")
        );
        assert_eq!((o.name.as_str(), o.volume.as_str()), ("s", "berth-s-u1"));
        assert_eq!(o.started_at, "2026-01-01T00:00:05Z");
        assert_eq!(o.container_id, "c://1");
        let crashing = pod(
            2,
            false,
            main(
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                json!({"terminated": {"exitCode": 3, "startedAt": "2026-01-01T00:00:01Z"}}),
            ),
        );
        let o = observed_of(&crashing);
        assert_eq!((o.state(), o.exit_code), (ContainerState::Exited, 3));
        assert_eq!(o.message, "CrashLoopBackOff");
        let pulling = pod(
            2,
            false,
            main(
                json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}}),
                json!({}),
            ),
        );
        let o = observed_of(&pulling);
        assert_eq!(
            (o.state(), o.message.as_str()),
            (ContainerState::Created, "ErrImagePull: not found")
        );
        let pending = pod(1, false, json!({"phase": "Pending"}));
        assert_eq!(observed_of(&pending).state(), ContainerState::Created);
        let seed_failed = pod(
            1,
            false,
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "seed-workspace", "image": "i", "imageID": "", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}]}),
        );
        let o = observed_of(&seed_failed);
        assert_eq!((o.state(), o.exit_code), (ContainerState::Exited, 1));
        assert!(o.message.contains("seeding"), "{}", o.message);
    }

    #[test]
    fn one_report_per_sandbox_and_claims_of_this_node_only() {
        let old = pod(1, true, main(json!({"running": {}}), json!({})));
        let new = pod(2, false, json!({"phase": "Pending"}));
        assert_eq!(current([&old, &new]).map(revision_of), Some(2));
        assert_eq!(current([&old]).map(revision_of), Some(1));
        let claim = |name: &str, node: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"berth.dev/volume-uid": "u9"},
                "annotations": {"berth.dev/sandbox": "kept", "berth.dev/node": node}}}))
            .unwrap()
        };
        let mine = claim("berth-s-u1", "n1");
        let kept = claim("berth-kept-u9", "n1");
        let elsewhere = claim("berth-other-u8", "n2");
        let inv = inventory(&[&old, &new], &[&mine, &kept, &elsewhere], "n1");
        assert_eq!(inv.len(), 2, "{inv:?}");
        assert_eq!((inv[0].revision, inv[0].volume_present), (2, true));
        assert_eq!((inv[1].name.as_str(), inv[1].uid.as_str()), ("kept", "u9"));
        assert_eq!(inv[1].state(), ContainerState::Absent);
    }
}
