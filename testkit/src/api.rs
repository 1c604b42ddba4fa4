//! Client helpers for end-to-end tests: sandbox calls through any running
//! control node, and bounded waits on sandbox state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1::{
    exec_sandbox_output, CreateSandboxRequest, ExecSandboxRequest, GetSandboxRequest,
    ListAgentsRequest, Sandbox, SandboxSpec,
};

use crate::TestCluster;

/// A sandbox name unique to this test process and tag.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Any control node that runs and is not paused.
pub fn any_node(cluster: &mut TestCluster) -> u64 {
    cluster.responsive().first().copied().unwrap_or(1)
}

pub async fn create(cluster: &mut TestCluster, name: &str, image: &str) -> anyhow::Result<Sandbox> {
    let via = any_node(cluster);
    let mut client = cluster.sandboxes(via).await?;
    let spec = SandboxSpec {
        image: image.to_string(),
        policy: None,
        env: HashMap::from([("GREETING".to_string(), "hello".to_string())]),
        ..Default::default()
    };
    Ok(client
        .create_sandbox(CreateSandboxRequest {
            name: name.to_string(),
            spec: Some(spec),
            request_id: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

pub async fn get(cluster: &mut TestCluster, name: &str) -> anyhow::Result<Option<Sandbox>> {
    let via = any_node(cluster);
    let mut client = cluster.sandboxes(via).await?;
    let request = GetSandboxRequest {
        name: name.to_string(),
        consistency: 0,
    };
    match client.get_sandbox(request).await {
        Ok(s) => Ok(Some(s.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// Waits (at most a minute) until the sandbox is gone from the state machine.
pub async fn wait_gone(cluster: &mut TestCluster, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(cluster, name).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} never deleted\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Polls the sandbox until `done` holds (bounded by `timeout`).
pub async fn wait_until(
    cluster: &mut TestCluster,
    name: &str,
    timeout: Duration,
    done: impl Fn(&Sandbox) -> bool,
) -> anyhow::Result<Sandbox> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(s)) = get(cluster, name).await {
            if done(&s) {
                return Ok(s);
            }
            last = Some(s);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} never reached the expected state; last {last:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `command` in the sandbox; returns its exit code and stdout.
pub async fn exec(
    cluster: &mut TestCluster,
    name: &str,
    command: &[&str],
) -> anyhow::Result<(i32, String)> {
    let via = any_node(cluster);
    let mut client = cluster.sandboxes(via).await?;
    let request = ExecSandboxRequest {
        name: name.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
    };
    let mut stream = client.exec_sandbox(request).await?.into_inner();
    let mut out = Vec::new();
    let mut code = None;
    while let Some(msg) = stream.message().await? {
        match msg.out {
            Some(exec_sandbox_output::Out::Stdout(b)) => out.extend_from_slice(&b),
            Some(exec_sandbox_output::Out::Stderr(_)) | None => {}
            Some(exec_sandbox_output::Out::ExitCode(c)) => code = Some(c),
        }
    }
    let code = code.ok_or_else(|| anyhow::anyhow!("exec ended without an exit code"))?;
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

/// Writes `text` to /sandbox/data.txt.
pub async fn write_file(cluster: &mut TestCluster, name: &str, text: &str) -> anyhow::Result<()> {
    let script = format!("echo {text} > /sandbox/data.txt");
    let (code, _) = exec(cluster, name, &["sh", "-c", &script]).await?;
    anyhow::ensure!(code == 0, "write failed with {code}");
    Ok(())
}

/// Reads /sandbox/data.txt.
pub async fn read_file(cluster: &mut TestCluster, name: &str) -> anyhow::Result<String> {
    let (code, out) = exec(cluster, name, &["cat", "/sandbox/data.txt"]).await?;
    anyhow::ensure!(code == 0, "read failed with {code}");
    Ok(out.trim().to_string())
}

/// Three control nodes (with `env`) and a container-driver agent `node`
/// on Podman, Ready, with the test images built.
pub async fn cluster_with_agent(node: &str, env: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
    crate::podman::ensure_test_image()?;
    let mut cluster = TestCluster::start_with_env(3, &[], env).await?;
    cluster.start_agent(node)?;
    wait_agent_ready(&cluster, node, Duration::from_secs(30)).await?;
    Ok(cluster)
}

/// Waits until agent `agent` is Ready in the state machine.
pub async fn wait_agent_ready(
    cluster: &TestCluster,
    agent: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for id in 1..=3 {
            if let Ok(mut c) = cluster.cluster_client(id).await {
                if let Ok(list) = c.list_agents(ListAgentsRequest {}).await {
                    if list
                        .into_inner()
                        .agents
                        .iter()
                        .any(|a| a.name == agent && a.ready)
                    {
                        return Ok(());
                    }
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "agent {agent} never Ready\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
