//! Podman helpers for container tests: a locally built test image, looking
//! at containers and volumes behind berth's back, and cleanup of everything
//! a test's sandboxes left, also when the test fails.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The image tests run sandboxes from (busybox on scratch, built locally).
pub const TEST_IMAGE_V1: &str = "localhost/berth-e2e:v1";
/// The same with `/etc/berth-demo-version` saying v2.
pub const TEST_IMAGE_V2: &str = "localhost/berth-e2e:v2";
/// An image whose process exits at once (code 3).
pub const TEST_IMAGE_CRASH: &str = "localhost/berth-e2e:crash";

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() {
        cmd.args(["--runtime", "/usr/sbin/runc"]);
    }
    cmd
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = podman()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run podman")?;
    Ok(out)
}

fn stdout(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args)?;
    if !out.status.success() {
        bail!(
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the test image once per test process (a no-op when it exists).
pub fn ensure_test_image() -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build(TEST_IMAGE_V1, "v1")
                .and_then(|()| build(TEST_IMAGE_V2, "v2"))
                .and_then(|()| build_crash())
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build(image: &str, version: &str) -> anyhow::Result<()> {
    if run(&["image", "exists", image])?.status.success() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-image/Containerfile");
    std::fs::copy(&root, dir.path().join("Containerfile")).context("copy Containerfile")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is not installed")?;
    std::fs::copy(busybox, dir.path().join("busybox"))?;
    let context = dir.path().display().to_string();
    let arg = format!("VERSION={version}");
    stdout(&["build", "-q", "-t", image, "--build-arg", &arg, &context])?;
    Ok(())
}

fn build_crash() -> anyhow::Result<()> {
    if run(&["image", "exists", TEST_IMAGE_CRASH])?
        .status
        .success()
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let containerfile = format!("FROM {TEST_IMAGE_V1}\nCMD [\"/bin/sh\", \"-c\", \"exit 3\"]\n");
    std::fs::write(dir.path().join("Containerfile"), containerfile)?;
    let context = dir.path().display().to_string();
    stdout(&["build", "-q", "-t", TEST_IMAGE_CRASH, &context])?;
    Ok(())
}

/// A sandbox's container as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub started_at: String,
    pub running: bool,
}

/// Inspects `berth-<sandbox>`; None when there is no such container.
pub fn container(sandbox: &str) -> anyhow::Result<Option<ContainerInfo>> {
    let name = format!("berth-{sandbox}");
    let out = run(&[
        "inspect",
        "--type",
        "container",
        "--format",
        "{{.Id}} {{.State.StartedAt}} {{.State.Running}}",
        &name,
    ])?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (id, rest) = text.split_once(' ').context("unexpected inspect output")?;
    let (started_at, running) = rest.rsplit_once(' ').context("unexpected inspect output")?;
    Ok(Some(ContainerInfo {
        id: id.to_string(),
        started_at: started_at.to_string(),
        running: running == "true",
    }))
}

/// Containers (all states) carrying `berth.sandbox=<sandbox>`.
pub fn containers_of(sandbox: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label=berth.sandbox={sandbox}");
    let out = stdout(&["ps", "-a", "--filter", &filter, "--format", "{{.ID}}"])?;
    Ok(out
        .lines()
        .map(String::from)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Volumes carrying `berth.sandbox=<sandbox>`.
pub fn volumes_of(sandbox: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label=berth.sandbox={sandbox}");
    let out = stdout(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"])?;
    Ok(out
        .lines()
        .map(String::from)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Removes the sandbox's container behind berth's back.
pub fn remove_container(sandbox: &str) -> anyhow::Result<()> {
    stdout(&["rm", "-f", "-t", "0", &format!("berth-{sandbox}")])?;
    Ok(())
}

/// Removes every container and volume of these sandboxes.
pub fn purge(sandboxes: &[String]) {
    for sandbox in sandboxes {
        if let Ok(ids) = containers_of(sandbox) {
            for id in ids {
                let _ = run(&["rm", "-f", "-t", "0", &id]);
            }
        }
        if let Ok(volumes) = volumes_of(sandbox) {
            for v in volumes {
                let _ = run(&["volume", "rm", "-f", &v]);
            }
        }
    }
}

/// Removes a volume by name.
pub fn remove_volume(volume: &str) {
    let _ = run(&["volume", "rm", "-f", volume]);
}
