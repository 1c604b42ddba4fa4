//! `berth up` / `berth down`: a local cluster of `berthd` processes in the
//! background, with data and logs under one home directory.
//!
//! `up` on a home that already holds data resumes that cluster (nothing is
//! wiped); `down` stops the processes with SIGTERM and keeps the data. With
//! an agent (the default), `up` also builds the demo images locally and
//! starts one `berth-agent` with the container driver, or, with `--driver
//! kube`, one agent whose sandboxes are Pods on a Kubernetes node (the
//! cluster's kubeconfig and the node's name given). Sandboxes are the
//! workload: `down` leaves them running, as a gateway crash would.

mod demo_image;
mod tls;
mod token;

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::v1::GetStatusRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tonic::transport::ClientTlsConfig;

use crate::client::{Control, Credentials};
use crate::Failure;

const STATE_FILE: &str = "cluster.json";

#[derive(Debug, Serialize, Deserialize)]
struct LocalNode {
    id: u64,
    /// An agent's node name.
    #[serde(default)]
    name: String,
    addr: String,
    pid: i32,
    log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct LocalCluster {
    nodes: Vec<LocalNode>,
    #[serde(default)]
    agents: Vec<LocalNode>,
}

/// Name of the agent `berth up` starts (container driver).
pub const LOCAL_NODE: &str = "local-1";

/// How the local agent runs sandboxes.
#[derive(Debug, Clone)]
pub enum LocalDriver {
    /// Containers through the local Podman/Docker engine.
    Container,
    /// Pods on node `node` of the cluster `kubeconfig` reaches.
    Kube {
        kubeconfig: PathBuf,
        node: String,
        namespace: String,
    },
}

impl LocalDriver {
    /// The agent's node name.
    pub fn node(&self) -> &str {
        match self {
            Self::Container => LOCAL_NODE,
            Self::Kube { node, .. } => node,
        }
    }

    /// The agent's driver flags.
    fn args(&self) -> Result<Vec<String>, Failure> {
        Ok(match self {
            Self::Container => vec!["--driver".into(), "container".into()],
            Self::Kube {
                kubeconfig,
                namespace,
                ..
            } => {
                let path = kubeconfig.canonicalize().map_err(|e| {
                    Failure::usage(format!("--kubeconfig {}: {e}", kubeconfig.display()))
                })?;
                vec![
                    "--driver".into(),
                    "kube".into(),
                    "--kubeconfig".into(),
                    path.display().to_string(),
                    "--namespace".into(),
                    namespace.clone(),
                ]
            }
        })
    }
}

/// A berth binary next to this `berth` binary, else the one on PATH.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether `pid` is still one of our processes (not a reused pid).
fn is_running_berth(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("berth"))
        .unwrap_or(false)
}

/// Starts `program args` in the background with output appended to `log`.
fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<i32, Failure> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Failure::other(format!("open {}: {e}", log.display())))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| Failure::other(format!("open {}: {e}", log.display())))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::other(format!("start {}: {e}", program.display())))?;
    Ok(child.id() as i32)
}

fn read_state(home: &Path) -> Option<LocalCluster> {
    let bytes = std::fs::read(home.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub async fn up(
    home: &Path,
    nodes: u64,
    base_port: u16,
    agent: Option<LocalDriver>,
    secure: bool,
) -> Result<(), Failure> {
    if !(1..=7).contains(&nodes) {
        return Err(Failure::usage("--nodes must be between 1 and 7"));
    }
    let agent_args = agent.as_ref().map(LocalDriver::args).transpose()?;
    if let Some(state) = read_state(home) {
        if state
            .nodes
            .iter()
            .chain(&state.agents)
            .any(|n| is_running_berth(n.pid))
        {
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
    let pki = if secure {
        let node = agent.as_ref().map_or(LOCAL_NODE, LocalDriver::node);
        Some(tls::ensure(&home, node)?)
    } else {
        eprintln!("berth: WARNING: --insecure: no TLS; anyone who can reach these ports can act as a control node, an agent or a client");
        None
    };
    let client_tls = crate::credentials::client_tls(None, None, None, &home)?.filter(|_| secure);
    let berthd = sibling("berthd");
    let mut started = Vec::new();
    for (id, addr) in &addrs {
        let log = home.join(format!("node-{id}.log"));
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            home.join(format!("node-{id}")).display().to_string(),
            "--initial-cluster".into(),
            initial.join(","),
        ];
        match &pki {
            Some(pki) => args.extend(pki.node_args()?),
            None => args.push("--insecure".into()),
        }
        let pid = spawn_logged(&berthd, &args, &log)?;
        started.push(LocalNode {
            id: *id,
            name: String::new(),
            addr: addr.clone(),
            pid,
            log,
        });
    }
    let mut state = LocalCluster {
        nodes: started,
        agents: vec![],
    };
    write_state(&home, &state)?;

    let control: Vec<&str> = addrs.iter().map(|(_, a)| a.as_str()).collect();
    let control = control.join(",");
    let credentials = if secure {
        let dirs: Vec<PathBuf> = addrs
            .iter()
            .map(|(id, _)| home.join(format!("node-{id}")))
            .collect();
        token::adopt(
            &home,
            &dirs,
            &control,
            client_tls.as_ref(),
            Duration::from_secs(30),
        )
        .await?
    } else {
        Credentials::default()
    };
    let leader = wait_for_leader(
        &control,
        client_tls.as_ref(),
        &credentials,
        Duration::from_secs(30),
    )
    .await?;
    if let (Some(driver), Some(driver_args)) = (&agent, agent_args) {
        let node = driver.node();
        match driver {
            LocalDriver::Container => demo_image::ensure_demo_images(&home)?,
            LocalDriver::Kube { .. } => eprintln!(
                "berth: --driver kube: sandbox images are pulled by the cluster's nodes; load or push them there"
            ),
        }
        let addr = format!("127.0.0.1:{}", u32::from(base_port) + 100);
        let log = home.join(format!("agent-{node}.log"));
        let mut args: Vec<String> = vec![
            "--control".into(),
            control.clone(),
            "--node-name".into(),
            node.into(),
            "--data-dir".into(),
            home.join(format!("agent-{node}")).display().to_string(),
            "--listen".into(),
            addr.clone(),
        ];
        args.extend(driver_args);
        match &pki {
            Some(pki) => args.extend(pki.agent_args()),
            None => args.push("--insecure".into()),
        }
        let pid = spawn_logged(&sibling("berth-agent"), &args, &log)?;
        state.agents.push(LocalNode {
            id: 1,
            name: node.to_string(),
            addr,
            pid,
            log,
        });
        write_state(&home, &state)?;
        wait_for_agent(
            &control,
            node,
            client_tls.as_ref(),
            &credentials,
            Duration::from_secs(60),
        )
        .await?;
    }
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
    for agent in &state.agents {
        println!(
            "  agent {}  {}  pid {}  log {}",
            agent.name,
            agent.addr,
            agent.pid,
            agent.log.display()
        );
    }
    match &pki {
        Some(pki) => {
            println!(
                "  TLS: every link is mutual TLS; CA and certificates in {}",
                pki.dir().display()
            );
            println!(
                "  API token: platform admin, in {} (the CLI reads it from there)",
                crate::credentials::token_file(&home).display()
            );
        }
        None => println!("  TLS and authentication: off (--insecure)"),
    }
    println!();
    println!("Try:");
    if control != crate::DEFAULT_CONTROL {
        println!("  export BERTH_CONTROL={control}");
    }
    if home != Path::new(".berth").canonicalize().unwrap_or_default() {
        println!("  export BERTH_HOME={}", home.display());
    }
    println!("  berth cluster status");
    println!(
        "  berth sandbox create demo --image {}",
        demo_image::DEMO_V1
    );
    println!("  berth sandbox exec demo -- sh -c 'echo hello > /sandbox/hello.txt'");
    println!("  berth sandbox list");
    println!(
        "  berth down        # stops the cluster, keeps its data in {}",
        home.display()
    );
    Ok(())
}

fn write_state(home: &Path, state: &LocalCluster) -> Result<(), Failure> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| Failure::other(e.to_string()))?;
    std::fs::write(home.join(STATE_FILE), json)
        .map_err(|e| Failure::other(format!("write cluster state: {e}")))
}

async fn wait_for_agent(
    control: &str,
    node: &str,
    tls: Option<&ClientTlsConfig>,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = Control::connect(control, tls, credentials).await {
            let request = berth_proto::v1::ListAgentsRequest {};
            if let Ok(list) = c.cluster().list_agents(request).await {
                if list
                    .into_inner()
                    .agents
                    .iter()
                    .any(|a| a.name == node && a.ready)
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Failure {
                message: format!("agent {node} not Ready within {timeout:?}; see its log"),
                code: 5,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_leader(
    control: &str,
    tls: Option<&ClientTlsConfig>,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<u64, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = Control::connect(control, tls, credentials).await {
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
        .agents
        .iter()
        .chain(&state.nodes)
        .filter(|n| is_running_berth(n.pid))
        .collect();
    for node in &running {
        let _ = kill(Pid::from_raw(node.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|n| is_running_berth(n.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in running.iter().filter(|n| is_running_berth(n.pid)) {
        let _ = kill(Pid::from_raw(node.pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(home.join(STATE_FILE));
    println!(
        "berth: stopped {} process(es) ({} control node(s), {} agent(s)); data kept in {}; sandbox containers keep running",
        running.len(),
        state.nodes.len(),
        state.agents.len(),
        home.display()
    );
    Ok(())
}
