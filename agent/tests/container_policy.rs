//! Pull and policies through the container driver against the real engine
//! (Podman here): a pull never touches the running container; a policy is
//! enforced (network, read-only root with a writable `/sandbox`, memory,
//! CPUs, env, the document mounted read-only); an update then a rollback
//! each replace the container on the same volume and mount their own
//! revision's policy; a bad policy creates nothing. Skipped (with a
//! notice) only when no engine exists at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::path::Path;

use berth_agent::commands::execute;
use berth_agent::driver::{ContainerDriver, Driver, DriverError};
use berth_agent::fence::Fence;
use berth_proto::agent_v1::{command::Op, Command, Ensure, Observed, Pull, Remove};
use common::*;

const MISSING: &str = "localhost/does-not-exist:v1";
const STRICT: &str = "network: none\nreadOnlyRootFilesystem: true\nresources: {memory: 64Mi, cpus: 0.5}\nenv: {MODE: strict}\n";

/// Run `test(driver, data_dir, name)` with cleanup, bounded in time.
async fn with_sandbox<F, Fut>(suffix: &str, test: F)
where
    F: FnOnce(ContainerDriver, std::path::PathBuf, String) -> Fut,
    Fut: Future<Output = ()>,
{
    if !engine_available() {
        return;
    }
    build_image();
    let name = format!("agent-test-{}-{suffix}", std::process::id());
    let _cleanup = Cleanup {
        names: vec![name.clone()],
    };
    let data = tempfile::tempdir().unwrap();
    let d = ContainerDriver::connect(None, data.path()).await.unwrap();
    tokio::time::timeout(TEST_TIMEOUT, test(d, data.path().to_path_buf(), name))
        .await
        .expect("test timed out");
}

fn with_policy(mut e: Ensure, policy: &str) -> Ensure {
    e.policy = Some(policy.to_string());
    e
}

fn pull_cmd(name: &str, image: &str) -> Command {
    Command {
        traceparent: String::new(),
        command_id: 1,
        term: 1,
        op: Some(Op::Pull(Pull {
            name: name.into(),
            image: image.into(),
            uid: String::new(),
        })),
    }
}

fn inspect(name: &str, format: &str) -> String {
    let out = podman(&["inspect", "--format", format, &format!("berth-{name}")]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn policy_files(data: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(data.join("policies"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn pull_never_touches_the_sandbox() {
    with_sandbox("pull", |d, data, name| async move {
        let fence = Fence::load(&data).unwrap();
        // Nothing there yet: ok, just the name.
        let mut r = execute(&d, &fence, pull_cmd(&name, IMAGE)).await;
        r.observed.iter_mut().for_each(|o| o.seq = 0);
        assert!(r.ok, "{r:?}");
        let just_name = Observed {
            name: name.clone(),
            ..Default::default()
        };
        assert_eq!(r.observed, Some(just_name));

        let running = d.ensure(&ensure(&name, "uid-1", 1, IMAGE)).await.unwrap();
        assert_running(&running);
        d.pull(IMAGE).await.unwrap();
        let mut r = execute(&d, &fence, pull_cmd(&name, IMAGE)).await;
        r.observed.iter_mut().for_each(|o| o.seq = 0);
        assert!(r.ok && !r.refused, "{r:?}");
        assert_eq!(r.observed.as_ref(), Some(&running), "reported untouched");
        assert_eq!(inventory_entry(&d, &name).await, running);

        let err = d.pull(MISSING).await.unwrap_err();
        eprintln!("missing image: {err}");
        let DriverError::ImageNotFound { image, reason } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(image, MISSING);
        assert!(!reason.is_empty());
        let r = execute(&d, &fence, pull_cmd(&name, MISSING)).await;
        assert!(!r.ok && !r.refused && r.observed.is_none(), "{r:?}");
        assert!(r
            .error
            .starts_with(&format!("image {MISSING:?} not found locally")));
        assert_eq!(inventory_entry(&d, &name).await, running, "nothing changed");
        assert!(!podman(&["image", "exists", MISSING]).status.success());
    })
    .await;
}

#[tokio::test]
async fn policy_is_enforced() {
    with_sandbox("policy", |d, data, name| async move {
        let e = with_policy(ensure(&name, "uid-1", 1, IMAGE), STRICT);
        let o = d.ensure(&e).await.unwrap();
        assert_running(&o);
        assert_eq!(sh(&d, &name, "cat /etc/berth/policy.yaml").await.0, STRICT);
        let (_, err, code) = sh(&d, &name, "echo x > /etc/berth/policy.yaml").await;
        assert_ne!(code, 0, "policy file writable: {err}");
        let (_, err, code) = sh(&d, &name, "touch /x").await;
        assert_ne!(code, 0, "root writable: {err}");
        assert_eq!(sh(&d, &name, "touch /sandbox/ok").await.2, 0);
        assert_eq!(
            sh(&d, &name, "echo t > /tmp/t && cat /tmp/t").await.0,
            "t\n"
        );
        assert_eq!(sh(&d, &name, "echo $MODE $GREETING").await.0, "strict hi\n");
        assert_eq!(sh(&d, &name, "cat /sandbox/README").await.0, "seeded\n");
        let links = sh(&d, &name, "tail -n +3 /proc/net/dev | cut -d: -f1")
            .await
            .0;
        assert_eq!(links.trim(), "lo", "only loopback without a network");
        assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "none");
        assert_eq!(inspect(&name, "{{.HostConfig.Memory}}"), "67108864");
        assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "500000000");
        assert_eq!(inspect(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");
        assert_eq!(policy_files(&data), [format!("{name}-r1.yaml")]);
        // Idempotent: the same Ensure again changes nothing.
        assert_eq!(d.ensure(&e).await.unwrap(), o);
    })
    .await;
}

#[tokio::test]
async fn update_then_rollback_keeps_the_volume_and_its_policy() {
    with_sandbox("rollback", |d, data, name| async move {
        let rev1 = with_policy(ensure(&name, "uid-1", 1, IMAGE), "env: {MODE: one}\n");
        let rev2_doc = "network: none\nenv: {MODE: two}\n";
        let rev2 = with_policy(ensure(&name, "uid-1", 2, IMAGE), rev2_doc);
        let policy = "cat /etc/berth/policy.yaml";

        let first = d.ensure(&rev1).await.unwrap();
        assert_eq!(sh(&d, &name, "echo kept > /sandbox/data").await.2, 0);
        let updated = d.ensure(&rev2).await.unwrap();
        assert_running(&updated);
        assert_eq!(updated.revision, 2);
        assert_ne!(updated.container_id, first.container_id);
        assert_eq!(updated.volume, first.volume);
        assert_eq!(sh(&d, &name, policy).await.0, rev2_doc);
        assert_eq!(sh(&d, &name, "echo $MODE").await.0, "two\n");
        assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "none");

        // Rollback: a lower revision replaces the container too.
        let back = d.ensure(&rev1).await.unwrap();
        assert_running(&back);
        assert_eq!(back.revision, 1);
        assert_ne!(back.container_id, updated.container_id);
        assert_ne!(back.container_id, first.container_id);
        assert_eq!(back.volume, first.volume);
        assert_eq!(sh(&d, &name, "cat /sandbox/data").await.0, "kept\n");
        assert_eq!(sh(&d, &name, policy).await.0, "env: {MODE: one}\n");
        assert_eq!(sh(&d, &name, "echo $MODE").await.0, "one\n");
        assert_ne!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "none");
        let files = [format!("{name}-r1.yaml"), format!("{name}-r2.yaml")];
        assert_eq!(policy_files(&data), files);

        // Removing the container (keeping the volume) drops its policies.
        let remove = Remove {
            name: name.clone(),
            uid: "uid-1".into(),
            volume: volume_of(&name),
            keep_volume: true,
            ..Default::default()
        };
        assert!(d.remove(&remove).await.unwrap().volume_present);
        assert!(policy_files(&data).is_empty());
    })
    .await;
}

#[tokio::test]
async fn invalid_policy_creates_nothing() {
    with_sandbox("badpolicy", |d, data, name| async move {
        // Refused before the image is even looked at.
        let bad = with_policy(ensure(&name, "uid-1", 1, MISSING), "network: bridge\n");
        let err = d.ensure(&bad).await.unwrap_err();
        eprintln!("invalid policy: {err}");
        assert!(matches!(err, DriverError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("network"), "{err}");
        assert!(!volume_exists(&volume_of(&name)));
        assert!(d.inventory().await.unwrap().iter().all(|o| o.name != name));
        assert!(policy_files(&data).is_empty());

        // Against a running sandbox: it is left as it was.
        let running = d.ensure(&ensure(&name, "uid-1", 1, IMAGE)).await.unwrap();
        let typo = with_policy(ensure(&name, "uid-1", 2, IMAGE), "netwrok: none\n");
        let err = d.ensure(&typo).await.unwrap_err();
        assert!(matches!(err, DriverError::Invalid(_)), "{err}");
        assert_eq!(inventory_entry(&d, &name).await, running);
        assert!(policy_files(&data).is_empty());
    })
    .await;
}
