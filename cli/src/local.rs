//! `berth up` / `berth down`: a local cluster of `berthd` processes in the
//! background, with data and logs under one home directory.
//!
//! `up` on a home that already holds data resumes that cluster (nothing is
//! wiped); `down` stops the processes with SIGTERM and keeps the data.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::v1::GetStatusRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::client::Control;
use crate::Failure;

const STATE_FILE: &str = "cluster.json";

#[derive(Debug, Serialize, Deserialize)]
struct LocalNode {
    id: u64,
    addr: String,
    pid: i32,
    log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct LocalCluster {
    nodes: Vec<LocalNode>,
}

/// The `berthd` next to this `berth` binary, else the one on PATH.
fn berthd_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("berthd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("berthd"))
}

fn is_running_berthd(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("berthd"))
        .unwrap_or(false)
}

fn read_state(home: &Path) -> Option<LocalCluster> {
    let bytes = std::fs::read(home.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub async fn up(home: &Path, nodes: u64, base_port: u16) -> Result<(), Failure> {
    if !(1..=7).contains(&nodes) {
        return Err(Failure::usage("--nodes must be between 1 and 7"));
    }
    if let Some(state) = read_state(home) {
        if state.nodes.iter().any(|n| is_running_berthd(n.pid)) {
            return Err(Failure::usage(format!(
                "a local cluster is already running from {} (stop it with `berth down`)",
                home.display()
            )));
        }
    }
    std::fs::create_dir_all(home)
        .map_err(|e| Failure::other(format!("create {}: {e}", home.display())))?;
    let home = home
        .canonicalize()
        .map_err(|e| Failure::other(format!("resolve {}: {e}", home.display())))?;
    let addrs: Vec<(u64, String)> = (1..=nodes)
        .map(|id| (id, format!("127.0.0.1:{}", u64::from(base_port) + id - 1)))
        .collect();
    let initial: Vec<String> = addrs
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    let berthd = berthd_path();
    let mut started = Vec::new();
    for (id, addr) in &addrs {
        let log = home.join(format!("node-{id}.log"));
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Failure::other(format!("open {}: {e}", log.display())))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| Failure::other(format!("open {}: {e}", log.display())))?;
        let child = Command::new(&berthd)
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(home.join(format!("node-{id}")))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::other(format!("start {}: {e}", berthd.display())))?;
        started.push(LocalNode {
            id: *id,
            addr: addr.clone(),
            pid: child.id() as i32,
            log,
        });
    }
    let state = LocalCluster { nodes: started };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Failure::other(e.to_string()))?;
    std::fs::write(home.join(STATE_FILE), json)
        .map_err(|e| Failure::other(format!("write cluster state: {e}")))?;

    let control: Vec<&str> = addrs.iter().map(|(_, a)| a.as_str()).collect();
    let control = control.join(",");
    let leader = wait_for_leader(&control, Duration::from_secs(30)).await?;
    println!("berth: local cluster of {nodes} control node(s) is up; leader is node {leader}");
    for node in &state.nodes {
        println!(
            "  node {}  {}  pid {}  log {}",
            node.id,
            node.addr,
            node.pid,
            node.log.display()
        );
    }
    println!();
    println!("Try:");
    if control != crate::DEFAULT_CONTROL {
        println!("  export BERTH_CONTROL={control}");
    }
    println!("  berth cluster status");
    println!("  berth sandbox create demo --image localhost/berth-demo:v1");
    println!("  berth sandbox list");
    println!(
        "  berth down        # stops the cluster, keeps its data in {}",
        home.display()
    );
    Ok(())
}

async fn wait_for_leader(control: &str, timeout: Duration) -> Result<u64, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = Control::connect(control).await {
            if let Ok(status) = c.cluster().get_status(GetStatusRequest {}).await {
                let leader = status.into_inner().leader_id;
                if leader != 0 {
                    return Ok(leader);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Failure {
                message: format!("no leader elected within {timeout:?}; see the node logs"),
                code: 5,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn down(home: &Path) -> Result<(), Failure> {
    let Some(state) = read_state(home) else {
        println!("berth: no local cluster in {}", home.display());
        return Ok(());
    };
    let running: Vec<&LocalNode> = state
        .nodes
        .iter()
        .filter(|n| is_running_berthd(n.pid))
        .collect();
    for node in &running {
        let _ = kill(Pid::from_raw(node.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|n| is_running_berthd(n.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in running.iter().filter(|n| is_running_berthd(n.pid)) {
        let _ = kill(Pid::from_raw(node.pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(home.join(STATE_FILE));
    println!(
        "berth: stopped {} control node(s); data kept in {}",
        running.len(),
        home.display()
    );
    Ok(())
}
