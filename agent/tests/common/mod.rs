//! Helpers shared by the container driver tests (real engine): the test
//! image, podman, cleanup on drop, and exec in a sandbox.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use berth_agent::driver::{ContainerDriver, Driver};
use berth_proto::agent_v1::{exec_output::Out, ContainerState, Ensure, Observed};
use futures::StreamExt;

pub const IMAGE: &str = "localhost/berth-agent-test:v1";
pub const TEST_TIMEOUT: Duration = Duration::from_secs(240);
static IMAGE_BUILT: Mutex<bool> = Mutex::new(false);

pub fn podman(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() {
        cmd.args(["--runtime", "/usr/sbin/runc"]);
    }
    cmd.args(args).output().expect("run podman")
}

pub fn engine_available() -> bool {
    let any_socket = ["/run/podman/podman.sock", "/var/run/docker.sock"]
        .iter()
        .any(|p| Path::new(p).exists());
    let has_podman = Command::new("podman").arg("--version").output().is_ok();
    if !any_socket && !has_podman {
        eprintln!(
            "NOTICE: no container engine socket and no podman; skipping container driver tests"
        );
    }
    any_socket || has_podman
}

pub fn build_image() {
    let mut built = IMAGE_BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).expect("copy /bin/busybox");
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /sandbox && echo seeded > /sandbox/README\n\
         CMD [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    )
    .unwrap();
    let out = podman(&["build", "-q", "-t", IMAGE, &dir.path().to_string_lossy()]);
    assert!(
        out.status.success(),
        "podman build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    *built = true;
}

/// Force-removes the test's containers and volumes, also on failure.
pub struct Cleanup {
    pub names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            podman(&["rm", "-f", "-t", "0", &format!("berth-{name}")]);
            podman(&["volume", "rm", "-f", &volume_of(name)]);
        }
    }
}

pub fn volume_of(name: &str) -> String {
    format!("{name}-ws")
}

pub fn ensure(name: &str, uid: &str, revision: u64, image: &str) -> Ensure {
    Ensure {
        name: name.into(),
        uid: uid.into(),
        revision,
        image: image.into(),
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        policy: None,
        volume: volume_of(name),
        ..Default::default()
    }
}

pub fn volume_exists(volume: &str) -> bool {
    podman(&["volume", "exists", volume]).status.success()
}

/// Run `sh -c script` in the sandbox: (stdout, stderr, exit code).
pub async fn sh(d: &ContainerDriver, name: &str, script: &str) -> (String, String, i32) {
    let cmd = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let mut stream = d.exec(name, "", cmd).await.unwrap();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(item) = stream.next().await {
        match item.unwrap().out.unwrap() {
            Out::Stdout(b) => out.extend(b),
            Out::Stderr(b) => err.extend(b),
            Out::ExitCode(c) => code = Some(c),
        }
    }
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (text(out), text(err), code.expect("exit code is sent last"))
}

pub fn assert_running(o: &Observed) {
    assert_eq!(o.state, ContainerState::Running as i32, "{o:?}");
    assert!(o.volume_present, "{o:?}");
    assert!(
        !o.container_id.is_empty() && !o.started_at.is_empty(),
        "{o:?}"
    );
}

pub async fn inventory_entry(d: &ContainerDriver, name: &str) -> Observed {
    let inv = d.inventory().await.unwrap();
    let mine: Vec<_> = inv.into_iter().filter(|o| o.name == name).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    mine.into_iter().next().unwrap()
}
