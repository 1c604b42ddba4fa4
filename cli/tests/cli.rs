//! CLI end to end: the real `berth` binary against real `berthd` processes.
//! Every bad input gets a one-line error, a non-zero exit, and changes
//! nothing (invariant 8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use berth_testkit::{bin_path, TestCluster};
use serde_json::Value;

mod common;
use common::{berth, berth_home, free_base_port, json, Down, Run};

/// Asserts a one-line error with the given exit code and message fragment.
fn assert_refused(run: &Run, code: i32, fragment: &str) {
    assert_eq!(
        run.code, code,
        "stdout: {} stderr: {}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line, got: {}",
        run.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(fragment),
        "{:?} does not mention {fragment:?}",
        lines[0]
    );
}

/// Polls `sandbox get` until the sandbox's message is `want` (bounded).
fn wait_for_message(control: &str, name: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = json(&berth(control, &["-o", "json", "sandbox", "get", name]));
        if got["message"] == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message never became {want:?}: {got}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn list(control: &str) -> Value {
    json(&berth(control, &["-o", "json", "sandbox", "list"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_and_cluster_status() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();

    let created = json(&berth(
        &control,
        &[
            "-o",
            "json",
            "sandbox",
            "create",
            "demo",
            "--image",
            "localhost/berth-demo:v1",
            "--env",
            "A=1",
        ],
    ));
    assert_eq!(created["name"], "demo");
    assert_eq!(created["image"], "localhost/berth-demo:v1");
    assert_eq!(created["revision"], 1);
    assert_eq!(created["phase"], "Pending");
    // No agent has registered: the record says so from the start.
    assert_eq!(created["message"], "no node available");
    wait_for_message(&control, "demo", "no node available");
    assert_eq!(created["env"]["A"], "1");

    let got = json(&berth(&control, &["-o", "json", "sandbox", "get", "demo"]));
    assert_eq!(got["uid"], created["uid"]);
    let table = berth(&control, &["sandbox", "list"]);
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("demo") && table.stdout.contains("Pending"));

    let status = json(&berth(&control, &["-o", "json", "cluster", "status"]));
    let leader = status["leader"].as_u64().expect("leader id");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(status["term"].as_u64().is_some_and(|t| t > 0));
    let roles: Vec<(u64, String)> = members
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&(leader, "leader".to_string())), "{roles:?}");
    assert!(members.iter().all(|m| m["addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:"))));

    // An unreachable address first: the CLI moves on to the next.
    let with_dead = format!("127.0.0.1:1,{control}");
    assert_eq!(
        json(&berth(
            &with_dead,
            &["-o", "json", "sandbox", "get", "demo"]
        ))["name"],
        "demo"
    );

    let deleted = berth(&control, &["sandbox", "delete", "demo"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(list(&control), Value::Array(vec![]));
    Ok(())
}

/// `sandbox list` pages through the API: more sandboxes than one page
/// holds are all listed, once each, in name order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_longer_than_a_page_is_whole() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await?;
    let client = cluster.sandboxes(leader).await?;
    let creates = (0..1_234).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .create_sandbox(berth_proto::v1::CreateSandboxRequest {
                    name: format!("l{i:04}"),
                    spec: Some(berth_proto::v1::SandboxSpec {
                        image: "localhost/berth-demo:v1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        })
    });
    let creates: Vec<_> = creates.collect();
    for create in creates {
        create.await??;
    }
    let listed = list(&cluster.control_addrs());
    let names: Vec<&str> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["name"].as_str().expect("a name"))
        .collect();
    let expected: Vec<String> = (0..1_234).map(|i| format!("l{i:04}")).collect();
    assert_eq!(names, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_one_line_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    let ok = berth(
        &control,
        &["sandbox", "create", "keep", "--image", "busybox"],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // Let the sandbox actor settle the record first, so `before` is stable.
    wait_for_message(&control, "keep", "no node available");
    let before = list(&control);

    let dir = tempfile::tempdir()?;
    let big_policy = dir.path().join("big.yaml");
    std::fs::write(&big_policy, format!("k: \"{}\"\n", "x".repeat(70 * 1024)))?;
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::File::create(&bad_yaml)?.write_all(b"network: [unclosed\n")?;
    let big = big_policy.to_string_lossy().to_string();
    let bad = bad_yaml.to_string_lossy().to_string();

    let long_name = "a".repeat(64);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["sandbox", "create", "Bad_Name", "--image", "busybox"],
            2,
            "invalid sandbox name",
        ),
        (
            vec!["sandbox", "create", &long_name, "--image", "busybox"],
            2,
            "at most 63",
        ),
        (
            vec!["sandbox", "create", "x1", "--image", "Not A/Ref"],
            2,
            "invalid image reference",
        ),
        (
            vec!["sandbox", "create", "x2", "--image", "busybox@sha256:abc"],
            2,
            "invalid image reference",
        ),
        (
            vec![
                "sandbox", "create", "x3", "--image", "busybox", "--policy", &big,
            ],
            2,
            "64 KiB",
        ),
        (
            vec![
                "sandbox", "create", "x4", "--image", "busybox", "--policy", &bad,
            ],
            2,
            "not valid YAML",
        ),
        (
            vec![
                "sandbox",
                "create",
                "x5",
                "--image",
                "busybox",
                "--policy",
                "/nonexistent.yaml",
            ],
            2,
            "policy file",
        ),
        (
            vec![
                "sandbox", "create", "x6", "--image", "busybox", "--env", "1BAD=x",
            ],
            2,
            "environment variable",
        ),
        (
            vec![
                "sandbox", "create", "x7", "--image", "busybox", "--env", "NOEQUALS",
            ],
            2,
            "K=V",
        ),
        (
            vec!["sandbox", "create", "keep", "--image", "busybox"],
            4,
            "already exists",
        ),
        (vec!["sandbox", "get", "missing"], 3, "not found"),
        (vec!["sandbox", "delete", "missing"], 3, "not found"),
        (vec!["cluster", "remove-node", "42"], 3, "not a member"),
        (
            vec!["cluster", "add-node", "0", "127.0.0.1:9"],
            2,
            "positive",
        ),
        (vec!["cluster", "add-node", "9", "no-port"], 2, "host:port"),
    ];
    for (args, code, fragment) in cases {
        let run = berth(&control, &args);
        assert_refused(&run, code, fragment);
    }
    assert_eq!(list(&control), before, "bad input changed the state");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_oversized_policy_sent_directly() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    let mut client = cluster.sandboxes(1).await?;
    let err = client
        .create_sandbox(berth_proto::v1::CreateSandboxRequest {
            name: "p".into(),
            spec: Some(berth_proto::v1::SandboxSpec {
                image: "busybox".into(),
                policy: Some(format!("k: \"{}\"\n", "x".repeat(65 * 1024))),
                env: Default::default(),
                secret_env: Default::default(),
            }),
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("64 KiB"), "{}", err.message());
    let missing_spec = client
        .create_sandbox(berth_proto::v1::CreateSandboxRequest {
            name: "p".into(),
            spec: None,
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing_spec.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quorum_is_unavailable_and_no_control_node_is_a_clear_error() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(3, &["--request-timeout-ms", "2000"]).await?;
    let control = cluster.control_addrs();
    cluster.kill9(2);
    cluster.kill9(3);
    let run = berth(
        &control,
        &["sandbox", "create", "never", "--image", "busybox"],
    );
    assert_refused(&run, 5, "quorum");
    cluster.kill9(1);
    let run = berth(&control, &["sandbox", "list"]);
    assert_refused(&run, 5, "no control node reachable");
    Ok(())
}

#[test]
fn up_starts_a_local_cluster_and_down_stops_it_keeping_data() {
    let home = tempfile::tempdir().expect("tempdir");
    let base = free_base_port();
    let control = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let up = |home: &std::path::Path| {
        Command::new(bin_path("berth"))
            .args(["up", "--home"])
            .arg(home)
            .args(["--base-port", &base.to_string(), "--no-agent"])
            .output()
            .expect("berth up")
    };
    let _down = Down(home.path());
    let out = up(home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader is node"));
    let again = up(home.path());
    assert!(
        !again.status.success(),
        "a second `up` must refuse while running"
    );

    // TLS by default: the CLI finds the CA and its certificate in the
    // home; without them, nothing is served.
    let created = berth_home(
        home.path(),
        &control,
        &["sandbox", "create", "kept", "--image", "busybox"],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert_eq!(berth(&control, &["sandbox", "list"]).code, 5);
    let key = home.path().join("tls/ca-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let down = Command::new(bin_path("berth"))
        .arg("down")
        .arg("--home")
        .arg(home.path())
        .output()
        .expect("down");
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("3 control node(s)"),
        "{}",
        String::from_utf8_lossy(&down.stdout)
    );
    let gone = berth_home(home.path(), &control, &["sandbox", "list"]);
    assert_eq!(gone.code, 5);

    let out = up(home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = json(&berth_home(
        home.path(),
        &control,
        &["-o", "json", "sandbox", "list"],
    ))
    .as_array()
    .map(|a| {
        a.iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect()
    })
    .unwrap_or_default();
    assert_eq!(names, vec!["kept".to_string()]);
}
