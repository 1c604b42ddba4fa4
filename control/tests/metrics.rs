//! Prometheus metrics from real processes: a one-node berthd and an agent
//! (in-memory driver) serve `/metrics`; after a create and an update the
//! values have moved (requests by method and code, sandboxes by phase,
//! time to Running, operations by outcome, phase durations, Raft gauges,
//! agent commands and sessions), and both expositions pass `promtool
//! check metrics` (Debian's prometheus package, installed by
//! scripts/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_proto::v1::{
    CreateSandboxRequest, OperationPhase, Phase, SandboxSpec, UpdateSandboxRequest,
};
use berth_testkit::api::{wait_agent_ready, wait_until};
use berth_testkit::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "mem1";

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `name{labels}` (exact series text).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free() -> String {
    format!("127.0.0.1:{}", berth_testkit::free_port().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_a_create_and_an_update_and_pass_promtool() {
    let (control_metrics, agent_metrics) = (free(), free());
    let mut cluster = TestCluster::start_with(1, &["--metrics-listen", &control_metrics])
        .await
        .unwrap();
    cluster.set_agent_args(&["--metrics-listen", &agent_metrics]);
    let control = cluster.control_addrs();
    cluster.start_agent_with(NODE, &control, "memory").unwrap();
    wait_agent_ready(&cluster, NODE, Duration::from_secs(30))
        .await
        .unwrap();

    let mut client = cluster.sandboxes(1).await.unwrap();
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
            image: Some("img:v2".into()),
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
    assert_eq!(phase, Some(OperationPhase::Succeeded as i32), "{done:?}");
    // The supervisor refreshes the phase gauges every 500 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let text = scrape(&control_metrics).await;
    promtool(&text);
    let create = "berth_grpc_server_requests_total{method=\"/berth.v1.SandboxService/CreateSandbox\",code=\"Ok\"}";
    assert_eq!(value(&text, create), 1.0);
    assert_eq!(value(&text, "berth_sandboxes{phase=\"Running\"}"), 1.0);
    assert_eq!(
        value(&text, "berth_sandbox_time_to_running_seconds_count"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "berth_operations_total{kind=\"update\",outcome=\"Succeeded\"}"
        ),
        1.0
    );
    assert!(
        value(
            &text,
            "berth_operation_phase_duration_seconds_count{phase=\"Verifying\"}"
        ) >= 1.0
    );
    assert_eq!(value(&text, "berth_raft_is_leader"), 1.0);
    assert!(value(&text, "berth_raft_term") >= 1.0);
    assert!(value(&text, "berth_raft_applied_index") >= 5.0);
    assert!(
        value(&text, "berth_raft_commit_index") >= value(&text, "berth_raft_applied_index") - 1.0
    );
    assert!(value(&text, "berth_raft_append_duration_seconds_count") >= 1.0);
    assert_eq!(value(&text, "berth_leader_changes_total"), 1.0);
    assert_eq!(value(&text, "berth_failover_duration_seconds_count"), 1.0);
    assert!(!text.contains("sandbox=\""), "no sandbox name as a label");

    let agent = scrape(&agent_metrics).await;
    promtool(&agent);
    assert!(
        value(
            &agent,
            "berth_agent_commands_total{kind=\"ensure\",result=\"ok\"}"
        ) >= 2.0
    );
    assert!(
        value(
            &agent,
            "berth_agent_commands_total{kind=\"pull\",result=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(value(&agent, "berth_agent_session_connected"), 1.0);
    assert_eq!(value(&agent, "berth_agent_sessions_total"), 1.0);
    assert!(
        value(
            &agent,
            "berth_agent_engine_call_duration_seconds_count{call=\"ensure\"}"
        ) >= 2.0
    );
    assert_eq!(value(&agent, "berth_agent_fence_refusals_total"), 0.0);
}
