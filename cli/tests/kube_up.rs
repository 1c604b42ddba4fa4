//! `berth up --driver kube` end to end: real berthd processes and a real
//! `berth-agent --driver kube`, driven by the real CLI, with sandboxes as
//! Pods in an in-process Kubernetes API (berth-kubefake). Create, exec,
//! update with the workspace kept, rollback, delete with the claim kept
//! and then for good; the agent's node name is the one given, and every
//! Pod is pinned to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use berth_kubefake::{FakeApi, Image, Resource};
use berth_testkit::bin_path;
use common::{berth_home, free_base_port, json, Down};

const NS: &str = "berth-sandboxes";
const NODE: &str = "k3s-worker-1";

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_up_with_the_kube_driver_runs_sandboxes_as_pods() {
    let api = FakeApi::start().await.unwrap();
    for (image, version) in [("localhost/demo:v1", "v1"), ("localhost/demo:v2", "v2")] {
        api.add_image(
            image,
            Image {
                sandbox: vec![("README".into(), format!("seeded by {version}\n"))],
                exit_code: None,
            },
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(NS)).unwrap();
    let home = dir.path().join("home");
    let base = free_base_port();
    let _down = Down(&home);
    let kubeconfig_arg = kubeconfig.display().to_string();
    let up = tokio::task::spawn_blocking({
        let home = home.clone();
        move || {
            Command::new(bin_path("berth"))
                .args(["up", "--home"])
                .arg(&home)
                .args(["--base-port", &base.to_string(), "--driver", "kube"])
                .args(["--kubeconfig", &kubeconfig_arg, "--kube-node", NODE])
                .env_remove("KUBECONFIG")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let control = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 1,
        base + 2
    );
    let run = |args: &[&str]| berth_home(&home, &control, args);
    let blocking = |args: Vec<&'static str>| {
        let (home, control) = (home.clone(), control.clone());
        tokio::task::spawn_blocking(move || berth_home(&home, &control, &args))
    };

    let agents = json(&run(&["-o", "json", "node", "list"]));
    assert!(agents.to_string().contains(NODE), "{agents}");

    let made = blocking(vec![
        "sandbox",
        "create",
        "web",
        "--image",
        "localhost/demo:v1",
    ])
    .await
    .unwrap();
    assert_eq!(made.code, 0, "{}", made.stderr);
    let control2 = control.clone();
    let phase = move |home: &std::path::Path| {
        let got = berth_home(home, &control2, &["-o", "json", "sandbox", "get", "web"]);
        serde_json::from_str::<serde_json::Value>(got.stdout.trim()).unwrap_or_default()
    };
    let home2 = home.clone();
    let phase2 = phase.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("web running", Duration::from_secs(60), || {
            phase2(&home2)["phase"].as_str() == Some("Running")
        })
    })
    .await
    .unwrap();
    let pod = api
        .get(Resource::Pods, NS, "berth-web-r1")
        .expect("the sandbox's pod");
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let wrote = blocking(vec![
        "sandbox",
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo precious > /sandbox/note",
    ])
    .await
    .unwrap();
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);

    // Update to v2: a new Pod on the same claim, the note still there.
    let updated = blocking(vec![
        "sandbox",
        "update",
        "web",
        "--image",
        "localhost/demo:v2",
        "--wait",
    ])
    .await
    .unwrap();
    assert_eq!(updated.code, 0, "{}{}", updated.stdout, updated.stderr);
    assert!(api.get(Resource::Pods, NS, "berth-web-r1").is_none());
    assert!(api.get(Resource::Pods, NS, "berth-web-r2").is_some());
    let read = blocking(vec![
        "sandbox",
        "exec",
        "web",
        "--",
        "cat",
        "/sandbox/note",
        "/sandbox/README",
    ])
    .await
    .unwrap();
    assert_eq!(read.stdout, "precious\nseeded by v1\n", "{}", read.stderr);
    assert_eq!(api.claim_overlaps(), Vec::<String>::new());

    // describe and events: the human view of what happened.
    let described = blocking(vec!["sandbox", "describe", "web"]).await.unwrap();
    assert_eq!(described.code, 0, "{}", described.stderr);
    for wanted in [
        "Phase",
        "Running",
        "k3s-worker-1 (Ready)",
        "r2 localhost/demo:v2 (current",
        "Events (last",
    ] {
        assert!(
            described.stdout.contains(wanted),
            "no {wanted:?} in\n{}",
            described.stdout
        );
    }
    assert!(
        !described.stdout.contains("Not running"),
        "{}",
        described.stdout
    );
    let events = blocking(vec!["sandbox", "events", "web"]).await.unwrap();
    assert_eq!(events.code, 0, "{}", events.stderr);
    for wanted in [
        "Created",
        "Scheduled",
        "Started",
        "Running",
        "Update",
        "Restarted",
    ] {
        assert!(
            events.stdout.contains(wanted),
            "no {wanted:?} in\n{}",
            events.stdout
        );
    }

    // Delete keeping the workspace: the claim stays; then delete it.
    let volume = phase(&home)["volume"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!volume.is_empty());
    let kept = blocking(vec!["sandbox", "delete", "web", "--keep-volume"])
        .await
        .unwrap();
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    assert!(api.list(Resource::Pods, NS).is_empty());
    assert!(api
        .get(Resource::PersistentVolumeClaims, NS, &volume)
        .is_some());
    let claim_deletes = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("DELETE") && r.contains("persistentvolumeclaims"))
        .count();
    assert_eq!(claim_deletes, 0);
}
