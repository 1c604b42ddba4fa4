//! Finding (or starting) the container engine.
//!
//! Order: the `--engine` flag; else an existing Podman socket; else an
//! existing Docker socket; else, with a `podman` binary on PATH, a Podman API
//! service started here as a detached process (own process group, so it
//! outlives the agent and keeps containers reachable across agent restarts).
//! Failing all that, start-up fails with one line naming what was tried.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::{ClientVersion, Docker};

/// Socket the agent starts a Podman service on when no engine is running.
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// Docker's default socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// API version spoken: Podman 4.3's Docker-compatible API and Docker.
pub const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Per-request timeout of the engine client, in seconds.
const REQUEST_TIMEOUT_SECS: u64 = 120;
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// No engine could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no container engine reachable (tried: {})", tried.join("; "))]
pub struct EngineError {
    pub tried: Vec<String>,
}

/// Connect to a unix-socket engine (`unix:///path` or `/path`) and ping it.
pub async fn connect_unix(addr: &str) -> Result<Docker, String> {
    let path = addr.strip_prefix("unix://").unwrap_or(addr);
    let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, &API_VERSION)
        .map_err(|e| format!("{path}: {e}"))?;
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(e)) => Err(format!("{path}: ping failed: {e}")),
        Err(_) => Err(format!("{path}: ping timed out")),
    }
}

/// Find the engine as described in the module docs: the client and the
/// socket path it talks to.
pub async fn discover(
    flag: Option<&str>,
    data_dir: &Path,
) -> Result<(Docker, PathBuf), EngineError> {
    let mut tried = Vec::new();
    if let Some(addr) = flag {
        let path = PathBuf::from(addr.strip_prefix("unix://").unwrap_or(addr));
        return match connect_unix(addr).await {
            Ok(d) => Ok((d, path)),
            Err(e) => Err(EngineError {
                tried: vec![format!("--engine {e}")],
            }),
        };
    }
    for sock in [PODMAN_SOCKET, DOCKER_SOCKET] {
        if !Path::new(sock).exists() {
            tried.push(format!("{sock}: no such socket"));
            continue;
        }
        match connect_unix(sock).await {
            Ok(d) => return Ok((d, PathBuf::from(sock))),
            Err(e) => tried.push(e),
        }
    }
    let Some(podman) = find_on_path("podman") else {
        tried.push("podman: not on PATH".to_string());
        return Err(EngineError { tried });
    };
    if let Err(e) = start_podman_service(&podman, data_dir) {
        tried.push(format!("starting {}: {e}", podman.display()));
        return Err(EngineError { tried });
    }
    let deadline = tokio::time::Instant::now() + SERVICE_START_TIMEOUT;
    loop {
        match connect_unix(PODMAN_SOCKET).await {
            Ok(d) => return Ok((d, PathBuf::from(PODMAN_SOCKET))),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tried.push(format!("podman service started, but {e}"));
                return Err(EngineError { tried });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Start `podman system service` detached, logging to the data dir.
fn start_podman_service(podman: &Path, data_dir: &Path) -> std::io::Result<()> {
    let socket_dir = Path::new(PODMAN_SOCKET).parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(socket_dir)?;
    fs::create_dir_all(data_dir)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("podman-service.log"))?;
    let mut cmd = Command::new(podman);
    // crun fails on hybrid cgroups; runc works (see design notes).
    if Path::new("/usr/sbin/runc").exists() {
        cmd.args(["--runtime", "/usr/sbin/runc"]);
    }
    cmd.args(["system", "service", "--time=0"])
        .arg(format!("unix://{PODMAN_SOCKET}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn()?;
    tracing::info!(
        pid = child.id(),
        socket = PODMAN_SOCKET,
        "started podman API service"
    );
    Ok(())
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}
