//! End-to-end update time (v1 -> v2, Running and verified) through berth,
//! next to the same stop-and-replace done directly with Podman on the same
//! machine in the same run, so the control plane's overhead shows as a
//! ratio. The health gate's minimum healthy time is set to 0 here (it is a
//! deliberate wait, 5 s by default, not overhead).

use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::v1::{OperationPhase, Phase, UpdateSandboxRequest};
use berth_testkit::api::{create, wait_agent_ready, wait_until};
use berth_testkit::podman::{self, TEST_IMAGE_V1, TEST_IMAGE_V2};
use berth_testkit::TestCluster;

const AGENT: &str = "bench-1";

fn podman(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("podman")
        .args(["--runtime", "/usr/sbin/runc"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts container `name` from `image` with `volume` at /sandbox.
fn run_with_volume(name: &str, volume: &str, image: &str) -> anyhow::Result<()> {
    let mount = format!("{volume}:/sandbox");
    let mut args = vec!["run", "-d", "--name", name, "--ulimit", "nofile=1024:1024"];
    args.extend(["--ulimit", "nproc=4096:4096", "-v", &mount, image]);
    podman(&args)
}

/// Stop, remove and recreate a container on the same volume with `image`,
/// the way an operator would by hand.
fn direct_replace(name: &str, volume: &str, image: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    podman(&["stop", "-t", "10", name])?;
    podman(&["rm", name])?;
    run_with_volume(name, volume, image)?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn run(rounds: usize) -> anyhow::Result<()> {
    podman::ensure_test_image()?;
    let mut cluster = TestCluster::start(3).await?;
    cluster.start_agent(AGENT)?;
    wait_agent_ready(&cluster, AGENT, Duration::from_secs(30)).await?;
    let name = cluster.track(&format!("bench-upd-{}", std::process::id()));
    create(&mut cluster, &name, TEST_IMAGE_V1).await?;
    wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.phase == Phase::Running as i32
    })
    .await?;

    let mut berth_times = Vec::new();
    for round in 0..rounds {
        let image = if round % 2 == 0 {
            TEST_IMAGE_V2
        } else {
            TEST_IMAGE_V1
        };
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let mut client = cluster.sandboxes(leader).await?;
        let started = Instant::now();
        let op = client
            .update_sandbox(UpdateSandboxRequest {
                name: name.clone(),
                image: Some(image.to_string()),
                policy: None,
                env: Default::default(),
                expected_revision: None,
                health_timeout_ms: Some(60_000),
                min_healthy_ms: Some(0),
                no_auto_rollback: false,
                request_id: String::new(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let done = wait_until(&mut cluster, &name, Duration::from_secs(120), |s| {
            s.operation
                .as_ref()
                .is_some_and(|o| o.id == op.id && o.terminal)
        })
        .await?;
        let phase = done.operation.as_ref().map(|o| o.phase).unwrap_or(0);
        anyhow::ensure!(
            phase == OperationPhase::Succeeded as i32,
            "update did not succeed: {done:?}"
        );
        berth_times.push(started.elapsed());
    }

    // The same replacement by hand, on a container of its own.
    let direct = format!("berth-bench-direct-{}", std::process::id());
    let volume = format!("{direct}-vol");
    podman(&["volume", "create", &volume])?;
    run_with_volume(&direct, &volume, TEST_IMAGE_V1)?;
    let mut direct_times = Vec::new();
    for round in 0..rounds {
        let image = if round % 2 == 0 {
            TEST_IMAGE_V2
        } else {
            TEST_IMAGE_V1
        };
        direct_times.push(direct_replace(&direct, &volume, image)?);
    }
    let _ = podman(&["rm", "-f", "-t", "0", &direct]);
    let _ = podman(&["volume", "rm", "-f", &volume]);

    let b = median(berth_times.clone());
    let d = median(direct_times.clone());
    println!("update: berth update v1<->v2 (pull check, stop, start on the same volume, verify), median of {rounds}: {} ms", b.as_millis());
    println!("update: podman stop + rm + run on the same volume by hand,                median of {rounds}: {} ms", d.as_millis());
    println!(
        "update: ratio berth / direct = {:.2}",
        b.as_secs_f64() / d.as_secs_f64().max(1e-9)
    );
    println!(
        "update: all berth rounds (ms): {:?}",
        berth_times
            .iter()
            .map(|t| t.as_millis())
            .collect::<Vec<_>>()
    );
    println!(
        "update: all direct rounds (ms): {:?}",
        direct_times
            .iter()
            .map(|t| t.as_millis())
            .collect::<Vec<_>>()
    );
    Ok(())
}
