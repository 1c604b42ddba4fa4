//! The kube driver against an in-process Kubernetes API (berth-kubefake)
//! through the real client over HTTP: create, update, rollback, stop,
//! delete with and without the volume, agent restart (adopt, never
//! recreate), a Pod that crashes or whose image is missing, lost and
//! foreign claims, conflicts, injected errors, 404s and a watch that must
//! list again after `410 Gone`. Invariants 4, 5 and 7 are checked on the
//! API's own record: no claim deleted but by a delete, no Pod created
//! while another still held its claim, Pods pinned to the agent's node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use berth_agent::driver::kube::objects::Storage;
use berth_agent::driver::kube::{KubeConfig, KubeDriver};
use berth_agent::driver::{Driver, DriverError};
use berth_kubefake::{FakeApi, Image, Resource};
use berth_proto::agent_v1::{exec_output::Out, ContainerState, Ensure, Observed, Remove};
use futures::StreamExt;

const NS: &str = "sandboxes";
const NODE: &str = "worker-1";
const V1: &str = "localhost/demo:v1";
const V2: &str = "localhost/demo:v2";
const CRASH: &str = "localhost/demo:crash";
const LIMIT: Duration = Duration::from_secs(60);

struct Env {
    api: FakeApi,
    kubeconfig: tempfile::NamedTempFile,
}

async fn env() -> Env {
    let api = FakeApi::start().await.unwrap();
    for (image, version, exit_code) in [
        (V1, "v1", None),
        (V2, "v2", None),
        (CRASH, "crash", Some(3)),
    ] {
        api.add_image(
            image,
            Image {
                sandbox: vec![("README".into(), format!("seeded by {version}\n"))],
                exit_code,
            },
        );
    }
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), api.kubeconfig(NS)).unwrap();
    Env { api, kubeconfig }
}

impl Env {
    async fn driver(&self) -> KubeDriver {
        KubeDriver::connect(KubeConfig {
            namespace: NS.into(),
            kubeconfig: Some(self.kubeconfig.path().to_path_buf()),
            node: NODE.into(),
            storage: Storage::default(),
            pull_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap()
    }

    fn workspace_file(&self, volume: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.api.workspace(NS, volume).join(file)).ok()
    }

    fn count(&self, request: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.as_str() == request)
            .count()
    }
}

fn ensure(name: &str, uid: &str, revision: u64, image: &str) -> Ensure {
    Ensure {
        name: name.into(),
        uid: uid.into(),
        revision,
        image: image.into(),
        env: HashMap::from([("GREETING".into(), "hello".into())]),
        volume: format!("berth-{name}-{uid}"),
        volume_expected: revision > 1,
        ..Ensure::default()
    }
}

fn remove(name: &str, uid: &str, keep_volume: bool) -> Remove {
    Remove {
        name: name.into(),
        uid: uid.into(),
        volume: format!("berth-{name}-{uid}"),
        keep_volume,
        volume_uid: String::new(),
    }
}

/// Wait until the inventory reports `name` in a state `check` accepts.
async fn until(driver: &KubeDriver, name: &str, check: impl Fn(&Observed) -> bool) -> Observed {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let inventory = driver.inventory().await.unwrap();
        if let Some(o) = inventory.iter().find(|o| o.name == name && check(o)) {
            return o.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not reached; inventory {inventory:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running_at(revision: u64) -> impl Fn(&Observed) -> bool {
    move |o| o.state() == ContainerState::Running && o.revision == revision
}

async fn exec(driver: &KubeDriver, name: &str, command: &[&str]) -> (i32, String) {
    let mut stream = driver
        .exec(name, "", command.iter().map(|s| s.to_string()).collect())
        .await
        .unwrap();
    let (mut code, mut out) = (-1, String::new());
    while let Some(item) = stream.next().await {
        match item.unwrap().out.unwrap() {
            Out::Stdout(b) | Out::Stderr(b) => out.push_str(&String::from_utf8_lossy(&b)),
            Out::ExitCode(c) => code = c,
        }
    }
    (code, out)
}

#[tokio::test]
async fn create_update_rollback_stop_and_delete_keep_the_workspace() {
    let env = env().await;
    let d = env.driver().await;
    let vol = "berth-web-u1";
    d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap();
    until(&d, "web", running_at(1)).await;
    // One claim, pinned Pod, seeded once from the image.
    let pod = env.api.get(Resource::Pods, NS, "berth-web-r1").unwrap();
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let claim = env
        .api
        .get(Resource::PersistentVolumeClaims, NS, vol)
        .unwrap();
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(
        env.workspace_file(vol, "README").as_deref(),
        Some("seeded by v1\n")
    );
    let (code, _) = exec(&d, "web", &["sh", "-c", "echo precious > note"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        exec(&d, "web", &["sh", "-c", "echo $GREETING; exit 7"]).await,
        (7, "hello\n".into())
    );
    let size = d.volume_size(vol).await.unwrap();
    assert!(size > 0, "{size}");

    // Update: the old Pod is gone before the new one exists; same claim.
    let o = d.ensure(&ensure("web", "u1", 2, V2)).await.unwrap();
    assert_eq!(o.revision, 2);
    until(&d, "web", running_at(2)).await;
    assert!(env.api.get(Resource::Pods, NS, "berth-web-r1").is_none());
    assert_eq!(
        exec(&d, "web", &["cat", "note"]).await,
        (0, "precious\n".into())
    );
    assert_eq!(
        env.workspace_file(vol, "README").as_deref(),
        Some("seeded by v1\n"),
        "never re-seeded"
    );

    // Repeating the command changes nothing.
    let posts = env.count("POST /api/v1/namespaces/sandboxes/pods");
    d.ensure(&ensure("web", "u1", 2, V2)).await.unwrap();
    assert_eq!(env.count("POST /api/v1/namespaces/sandboxes/pods"), posts);

    // Rollback is the same path down.
    d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap();
    until(&d, "web", running_at(1)).await;
    assert_eq!(exec(&d, "web", &["cat", "note"]).await.1, "precious\n");

    // Stop: no Pod, the claim stays; start makes the Pod again.
    let o = d.stop("web", "u1").await.unwrap();
    assert_eq!(
        (o.state(), o.volume_present),
        (ContainerState::Absent, true)
    );
    until(&d, "web", |o| {
        o.state() == ContainerState::Absent && o.volume_present
    })
    .await;
    d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap();
    until(&d, "web", running_at(1)).await;

    // Delete keeping the volume, then for good.
    let o = d.remove(&remove("web", "u1", true)).await.unwrap();
    assert_eq!(
        (o.state(), o.volume_present),
        (ContainerState::Absent, true)
    );
    assert!(env.api.list(Resource::Pods, NS).is_empty());
    assert_eq!(
        env.workspace_file(vol, "note").as_deref(),
        Some("precious\n")
    );
    let claim_deletes = format!("DELETE /api/v1/namespaces/sandboxes/persistentvolumeclaims/{vol}");
    assert_eq!(env.count(&claim_deletes), 0, "no claim deleted until asked");
    let o = d.remove(&remove("web", "u1", false)).await.unwrap();
    assert!(!o.volume_present);
    assert!(env
        .api
        .get(Resource::PersistentVolumeClaims, NS, vol)
        .is_none());
    assert_eq!(env.count(&claim_deletes), 1);
    // Invariant 5 on the API's record: never two Pods on one claim.
    assert_eq!(env.api.claim_overlaps(), Vec::<String>::new());
    assert!(env.api.list(Resource::ConfigMaps, NS).is_empty());
    assert!(env.api.list(Resource::Secrets, NS).is_empty());
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_pods_and_claims() {
    let env = env().await;
    let first = env.driver().await;
    first.ensure(&ensure("a", "ua", 1, V1)).await.unwrap();
    first.ensure(&ensure("b", "ub", 1, V1)).await.unwrap();
    until(&first, "a", running_at(1)).await;
    until(&first, "b", running_at(1)).await;
    first.stop("b", "ub").await.unwrap();
    drop(first);
    let before = env.api.requests().len();
    let second = env.driver().await;
    // Everything is reported from the API, nothing made or deleted.
    until(&second, "a", running_at(1)).await;
    until(&second, "b", |o| {
        o.state() == ContainerState::Absent && o.volume_present
    })
    .await;
    second.ensure(&ensure("a", "ua", 1, V1)).await.unwrap();
    let after: Vec<String> = env.api.requests()[before..].to_vec();
    assert!(
        after.iter().all(|r| r.starts_with("GET ")),
        "a restart only reads: {after:?}"
    );
}

#[tokio::test]
async fn a_crashing_pod_and_a_missing_image_are_reported_and_rolled_back() {
    let env = env().await;
    let d = env.driver().await;
    d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap();
    until(&d, "web", running_at(1)).await;
    // A missing image fails the pull; the running Pod is untouched.
    let err = d
        .ensure(&ensure("web", "u1", 2, "localhost/nope:v9"))
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::ImageNotFound { .. }), "{err}");
    assert!(err.to_string().contains("ErrImagePull"), "{err}");
    until(&d, "web", running_at(1)).await;
    // An image that crashes: the kubelet restarts it, we report the exit.
    d.ensure(&ensure("web", "u1", 3, CRASH)).await.unwrap();
    let crashed = until(&d, "web", |o| {
        o.revision == 3 && o.state() == ContainerState::Exited
    })
    .await;
    assert_eq!(crashed.exit_code, 3);
    // Rollback to the last good revision.
    d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap();
    until(&d, "web", running_at(1)).await;
    // A crash of a running container is seen as a restart.
    let before = until(&d, "web", running_at(1)).await;
    assert!(env.api.crash(NS, "berth-web-r1", 137));
    let after = until(&d, "web", |o| {
        o.state() == ContainerState::Running && o.started_at != before.started_at
            || o.container_id != before.container_id
    })
    .await;
    assert_ne!(after.container_id, before.container_id);
    assert_eq!(env.api.claim_overlaps(), Vec::<String>::new());
}

#[tokio::test]
async fn lost_and_foreign_claims_are_never_replaced_or_deleted() {
    let env = env().await;
    let d = env.driver().await;
    // Lost: the sandbox ran before, its claim is gone.
    let err = d.ensure(&ensure("lost", "ul", 2, V1)).await.unwrap_err();
    assert!(matches!(err, DriverError::VolumeLost { .. }), "{err}");
    assert!(env
        .api
        .get(Resource::PersistentVolumeClaims, NS, "berth-lost-ul")
        .is_none());
    // Foreign: a claim under the name that another sandbox owns.
    env.api
        .create(
            Resource::PersistentVolumeClaims,
            NS,
            serde_json::json!({"metadata": {"name": "berth-web-u1",
                "labels": {"app.kubernetes.io/managed-by": "berth", "berth.dev/volume-uid": "someone-else"},
                "annotations": {"berth.dev/sandbox": "other", "berth.dev/node": NODE}}}),
        )
        .unwrap();
    let err = d.ensure(&ensure("web", "u1", 1, V1)).await.unwrap_err();
    assert!(matches!(err, DriverError::ForeignVolume { .. }), "{err}");
    let err = d.remove(&remove("web", "u1", false)).await.unwrap_err();
    assert!(matches!(err, DriverError::ForeignVolume { .. }), "{err}");
    assert!(env
        .api
        .get(Resource::PersistentVolumeClaims, NS, "berth-web-u1")
        .is_some());
    assert!(env.api.list(Resource::Pods, NS).is_empty());
    // 404s: stopping or removing what is not there is done, not an error.
    let o = d.stop("ghost", "ug").await.unwrap();
    assert_eq!(o.state(), ContainerState::Absent);
    d.remove(&remove("ghost", "ug", false)).await.unwrap();
}

#[tokio::test]
async fn conflicts_injected_errors_and_a_410_are_handled() {
    let env = env().await;
    let d = env.driver().await;
    // A policy ConfigMap left with other content is replaced (a PUT with
    // the current resourceVersion), not duplicated.
    let mut e = ensure("web", "u1", 1, V1);
    e.policy = Some("env:\n  MODE: strict\n".into());
    env.api
        .create(
            Resource::ConfigMaps,
            NS,
            serde_json::json!({"metadata": {"name": "berth-web-r1-policy"}, "data": {"policy.yaml": "stale"}}),
        )
        .unwrap();
    // An injected server error fails the command; the repeat succeeds.
    env.api.fail("POST", "pods", 500, 1);
    let err = d.ensure(&e).await.unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    d.ensure(&e).await.unwrap();
    until(&d, "web", running_at(1)).await;
    let cm = env
        .api
        .get(Resource::ConfigMaps, NS, "berth-web-r1-policy")
        .unwrap();
    assert_eq!(cm["data"]["policy.yaml"], "env:\n  MODE: strict\n");
    assert_eq!(
        exec(&d, "web", &["sh", "-c", "echo $MODE"]).await.1,
        "strict\n"
    );
    // A Pod of another sandbox under the Pod name: a conflict, untouched.
    env.api
        .create(
            Resource::Pods,
            NS,
            serde_json::json!({"metadata": {"name": "berth-api-r1", "labels": {"berth.dev/uid": "not-mine"}},
                "spec": {"nodeName": NODE, "containers": [{"name": "sandbox", "image": V1}]}}),
        )
        .unwrap();
    let err = d.ensure(&ensure("api", "u2", 1, V1)).await.unwrap_err();
    assert!(matches!(err, DriverError::UidMismatch { .. }), "{err}");
    assert!(env.api.get(Resource::Pods, NS, "berth-api-r1").is_some());
    // The watch history is gone and every watch ends: the caches list
    // again and still see what changes next.
    env.api.compact();
    env.api.end_watches();
    d.ensure(&ensure("late", "u3", 1, V1)).await.unwrap();
    until(&d, "late", running_at(1)).await;
    // Only this node's Pods: one on another node is not reported.
    env.api
        .create(
            Resource::Pods,
            NS,
            serde_json::json!({"metadata": {"name": "berth-far-r1",
                "labels": {"app.kubernetes.io/managed-by": "berth", "berth.dev/uid": "uf", "berth.dev/revision": "1"},
                "annotations": {"berth.dev/sandbox": "far"}},
                "spec": {"nodeName": "worker-2", "containers": [{"name": "sandbox", "image": V1}]}}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.inventory().await.unwrap().iter().all(|o| o.name != "far"));
}

#[tokio::test]
async fn secrets_are_referenced_never_inline() {
    let env = env().await;
    let d = env.driver().await;
    let mut e = ensure("web", "u1", 1, V1);
    e.env.insert("API_TOKEN".into(), "s3cr3t".into());
    e.secret_keys = vec!["API_TOKEN".into()];
    d.ensure(&e).await.unwrap();
    until(&d, "web", running_at(1)).await;
    let pod = env.api.get(Resource::Pods, NS, "berth-web-r1").unwrap();
    assert!(!pod.to_string().contains("s3cr3t"), "{pod}");
    assert!(env
        .api
        .get(Resource::Secrets, NS, "berth-web-r1-env")
        .is_some());
    assert_eq!(
        exec(&d, "web", &["sh", "-c", "echo $API_TOKEN"]).await.1,
        "s3cr3t\n"
    );
    // Logs of the sandbox container.
    let mut logs = d.logs("web", "u1", false).await.unwrap();
    let first = logs.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first.data).contains("started"));
}
