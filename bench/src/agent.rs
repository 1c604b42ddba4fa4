//! What an agent costs with many idle sandboxes: its CPU while nothing
//! changes and, with Podman, the engine's. With Podman it measures the
//! default inventory (inspect only what may have changed, a full resync
//! every 30 s) and then the agent as it was before, inspecting every
//! container on every heartbeat (`--inventory-resync 1ms`), on the same
//! containers.

use std::time::Duration;

use berth_proto::v1::Phase;
use berth_testkit::podman::{self, TEST_IMAGE_V1};
use berth_testkit::TestCluster;

use crate::proc::idle_cpu;
use crate::util::{create_all, wait_phase_count};

const AGENT: &str = "bench-agent";
const WINDOW: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(10);

/// `n` sandboxes on one agent with `driver` ("memory" or "podman").
pub async fn run(n: usize, driver: &str) -> anyhow::Result<()> {
    let on_podman = match driver {
        "memory" => false,
        "podman" => true,
        other => anyhow::bail!("unknown driver {other} (memory or podman)"),
    };
    let image = if on_podman {
        podman::ensure_test_image()?;
        TEST_IMAGE_V1
    } else {
        "localhost/berth-demo:v1"
    };
    let mut cluster = TestCluster::start(3).await?;
    let control = cluster.control_addrs();
    let kind = if on_podman { "container" } else { "memory" };
    cluster.start_agent_with(AGENT, &control, kind)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = (0..n)
        .map(|i| cluster.track(&format!("agentbench{i}-{}", std::process::id())))
        .collect();
    create_all(&cluster, leader, &names, image, 16).await?;
    wait_phase_count(
        &cluster,
        leader,
        Phase::Running,
        n,
        Duration::from_secs(1800),
    )
    .await?;
    println!("agent: {n} idle sandboxes on one agent ({driver} driver)");
    tokio::time::sleep(SETTLE).await;
    let (agent, engine) = measure(&mut cluster, on_podman).await?;
    report("inspect what changed (default)", agent, engine);
    if on_podman {
        cluster.kill9_agent(AGENT);
        cluster.set_agent_args(&["--inventory-resync", "1ms"]);
        cluster.start_agent_with(AGENT, &control, kind)?;
        tokio::time::sleep(SETTLE).await;
        let (agent, engine) = measure(&mut cluster, true).await?;
        report(
            "inspect every container every second (before)",
            agent,
            engine,
        );
    }
    Ok(())
}

/// CPU shares of the agent and (`with_engine`) of the engine's API
/// service over `WINDOW`.
async fn measure(
    cluster: &mut TestCluster,
    with_engine: bool,
) -> anyhow::Result<(f64, Option<f64>)> {
    let pid = cluster
        .agent(AGENT)
        .and_then(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    let engine = with_engine.then(engine_pid).flatten();
    let engine_cpu = async {
        match engine {
            Some(pid) => idle_cpu(pid, WINDOW).await.ok(),
            None => None,
        }
    };
    let (agent, engine) = tokio::join!(idle_cpu(pid, WINDOW), engine_cpu);
    Ok((agent?, engine))
}

fn report(mode: &str, agent: f64, engine: Option<f64>) {
    let engine = engine.map_or_else(String::new, |e| {
        format!(", Podman API service {:.1}%", e * 100.0)
    });
    println!(
        "agent: {mode}: agent CPU {:.1}% of one core{engine}",
        agent * 100.0
    );
}

/// The Podman API service (`podman system service`) serving the engine.
fn engine_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_service = args.first()?.ends_with(b"podman")
                && args
                    .windows(2)
                    .any(|w| w == [&b"system"[..], &b"service"[..]]);
            is_service.then_some(pid)
        })
}
