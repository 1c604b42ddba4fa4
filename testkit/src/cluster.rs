//! A cluster of real `berthd` processes on loopback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_proto::v1::cluster_service_client::ClusterServiceClient;
use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use berth_proto::v1::{ClusterStatus, GetStatusRequest};
use tempfile::TempDir;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::fronting::{Fronting, Peer};
use crate::process::{bin_path, free_port, NodeProcess};

struct NodeSlot {
    /// Where the process listens.
    addr: String,
    /// Where others reach it (the front's address, or `addr`).
    advertise: String,
    process: Option<NodeProcess>,
}

/// Control nodes `1..=n` of one cluster, plus any added later, and node
/// agents.
pub struct TestCluster {
    dir: TempDir,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    initial: String,
    nodes: BTreeMap<u64, NodeSlot>,
    /// Extra environment of single nodes (for example a chaos crash point).
    node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// Extra environment of every agent, and of single agents.
    agent_env: Vec<(String, String)>,
    agent_env_of: BTreeMap<String, Vec<(String, String)>>,
    /// Extra arguments of every agent (for example its `--tls-*` flags).
    agent_args: Vec<String>,
    /// Extra args of one agent (its own certificate, say).
    agent_args_of: BTreeMap<String, Vec<String>>,
    agents: BTreeMap<String, NodeSlot>,
    /// Sandboxes whose containers and volumes are purged on drop.
    sandboxes: Vec<String>,
    fronting: Option<Box<dyn Fronting>>,
    /// How the harness's own clients speak TLS to TLS-only nodes.
    client_tls: Option<ClientTlsConfig>,
}

impl TestCluster {
    /// Starts `n` nodes bootstrapped as one cluster and waits for a leader.
    pub async fn start(n: u64) -> anyhow::Result<Self> {
        Self::start_with(n, &[]).await
    }

    /// Like [`TestCluster::start`], passing `extra_args` to every `berthd`.
    pub async fn start_with(n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(n, extra_args, &[]).await
    }

    /// Like [`TestCluster::start_with`], with extra environment variables
    /// for every `berthd` (for example chaos crash points).
    pub async fn start_with_env(
        n: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_fronted(n, extra_args, env, None).await
    }

    /// Like [`TestCluster::start_with_env`], with `fronting` in front of
    /// every listener (nodes and agents advertise its addresses).
    pub async fn start_fronted(
        n: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
        fronting: Option<Box<dyn Fronting>>,
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, extra_args, env, fronting, None).await
    }

    /// Like [`TestCluster::start_with`] for nodes that serve TLS only
    /// (`extra_args` carries their `--tls-*` flags); the harness's own
    /// clients use `client_tls`.
    pub async fn start_tls(
        n: u64,
        extra_args: &[&str],
        client_tls: ClientTlsConfig,
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, extra_args, &[], None, Some(client_tls)).await
    }

    /// [`TestCluster::start_fronted`] for nodes that serve TLS only; the
    /// harness's own clients use `client_tls`.
    pub async fn start_fronted_tls(
        n: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
        fronting: Option<Box<dyn Fronting>>,
        client_tls: ClientTlsConfig,
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, extra_args, env, fronting, Some(client_tls)).await
    }

    /// The TLS settings the harness's clients use, if the nodes serve TLS.
    pub fn client_tls(&self) -> Option<&ClientTlsConfig> {
        self.client_tls.as_ref()
    }

    async fn start_inner(
        n: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
        mut fronting: Option<Box<dyn Fronting>>,
        client_tls: Option<ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, new_slot(fronting.as_mut(), Peer::Node(id))?);
        }
        let initial = nodes
            .iter()
            .map(|(id, slot)| format!("{id}={}", slot.advertise))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            initial,
            nodes,
            node_env: BTreeMap::new(),
            agent_env: Vec::new(),
            agent_env_of: BTreeMap::new(),
            agent_args: Vec::new(),
            agent_args_of: BTreeMap::new(),
            agents: BTreeMap::new(),
            sandboxes: Vec::new(),
            fronting,
            client_tls,
        };
        for id in 1..=n {
            cluster.spawn(id, None)?;
        }
        cluster.wait_for_leader(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn addr(&self, id: u64) -> &str {
        self.nodes.get(&id).map(|s| s.addr.as_str()).unwrap_or("")
    }

    /// Ids of nodes that run and are not paused: the ones that answer.
    pub fn responsive(&mut self) -> Vec<u64> {
        let running = self.running();
        running
            .into_iter()
            .filter(|id| {
                self.nodes
                    .get(id)
                    .and_then(|s| s.process.as_ref())
                    .is_some_and(|p| !p.is_paused())
            })
            .collect()
    }

    /// Ids of nodes whose process is running.
    pub fn running(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|(id, s)| {
                s.process
                    .as_mut()
                    .is_some_and(NodeProcess::is_running)
                    .then_some(*id)
            })
            .collect()
    }

    /// Comma-separated addresses of all nodes as they advertise them, for
    /// `--control`.
    pub fn control_addrs(&self) -> String {
        self.nodes
            .values()
            .map(|s| s.advertise.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn process(&mut self, id: u64) -> Option<&mut NodeProcess> {
        self.nodes.get_mut(&id).and_then(|s| s.process.as_mut())
    }

    fn spawn(&mut self, id: u64, join: Option<String>) -> anyhow::Result<()> {
        let data_dir = self.data_dir(id);
        let log = self.dir.path().join(format!("node-{id}.log"));
        let slot = self.nodes.get_mut(&id).context("unknown node")?;
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".to_string(),
            slot.addr.clone(),
            "--advertise".to_string(),
            slot.advertise.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        if let Some(ip) = self
            .fronting
            .as_ref()
            .and_then(|f| f.source_ip(&Peer::Node(id)))
        {
            args.extend(["--source-ip".to_string(), ip.to_string()]);
        }
        match join {
            Some(join) => args.extend(["--join".to_string(), join]),
            None => args.extend(["--initial-cluster".to_string(), self.initial.clone()]),
        }
        args.extend(self.extra_args.iter().cloned());
        if !args.iter().any(|a| a == "--tls-cert") {
            args.push("--insecure".to_string());
        }
        let mut env = self.env.clone();
        env.extend(self.node_env.get(&id).cloned().unwrap_or_default());
        slot.process = Some(NodeProcess::spawn_with_env(
            &format!("berthd-{id}"),
            &bin_path("berthd"),
            &args,
            &env,
            &log,
        )?);
        Ok(())
    }

    /// Extra environment for node `id` from its next (re)start on.
    pub fn set_node_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.node_env.insert(id, env);
    }

    /// Extra environment for every agent started from now on.
    pub fn set_agent_env(&mut self, env: &[(&str, &str)]) {
        self.agent_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Extra arguments for every agent started from now on.
    pub fn set_agent_args_of(&mut self, name: &str, args: &[String]) {
        self.agent_args_of.insert(name.to_string(), args.to_vec());
    }

    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Extra environment for agent `name` from its next (re)start on.
    pub fn set_agent_env_of(&mut self, name: &str, env: &[(&str, &str)]) {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.agent_env_of.insert(name.to_string(), env);
    }

    /// Ids of every control node, running or not.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Names of every agent, running or not.
    pub fn agent_names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// Log files of every control node.
    pub fn node_logs(&self) -> Vec<PathBuf> {
        self.nodes
            .keys()
            .map(|id| self.dir.path().join(format!("node-{id}.log")))
            .collect()
    }

    /// Log files of every agent.
    pub fn agent_logs(&self) -> Vec<PathBuf> {
        self.agents
            .keys()
            .map(|name| self.dir.path().join(format!("agent-{name}.log")))
            .collect()
    }

    /// Restarts a stopped node from its data dir.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id, None)
    }

    /// Starts a new node `id` that joins through the existing nodes.
    pub fn start_joining(&mut self, id: u64) -> anyhow::Result<()> {
        let join = self.control_addrs();
        let slot = new_slot(self.fronting.as_mut(), Peer::Node(id))?;
        self.nodes.insert(id, slot);
        self.spawn(id, Some(join))
    }

    /// `kill -9` a node.
    pub fn kill9(&mut self, id: u64) {
        if let Some(p) = self.process(id) {
            p.kill9();
        }
    }

    pub async fn channel(&self, id: u64) -> anyhow::Result<Channel> {
        let endpoint = match &self.client_tls {
            Some(tls) => Endpoint::from_shared(format!("https://{}", self.addr(id)))?
                .tls_config(tls.clone())?,
            None => Endpoint::from_shared(format!("http://{}", self.addr(id)))?,
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30));
        // Bounded as a whole: the TLS handshake with a paused node would
        // otherwise wait forever.
        Ok(tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await??)
    }

    pub async fn sandboxes(&self, id: u64) -> anyhow::Result<SandboxServiceClient<Channel>> {
        Ok(SandboxServiceClient::new(self.channel(id).await?))
    }

    pub async fn cluster_client(&self, id: u64) -> anyhow::Result<ClusterServiceClient<Channel>> {
        Ok(ClusterServiceClient::new(self.channel(id).await?))
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<ClusterStatus> {
        let mut client = self.cluster_client(id).await?;
        Ok(client.get_status(GetStatusRequest {}).await?.into_inner())
    }

    /// Waits until every running node agrees on one leader that is running.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let running = self.running();
        self.wait_for_leader_among(&running, timeout).await
    }

    /// Waits until nodes `among` agree on a leader that is one of them.
    pub async fn wait_for_leader_among(
        &mut self,
        among: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let running = among.to_vec();
            let mut leaders = Vec::new();
            for id in &running {
                if let Ok(status) = self.status(*id).await {
                    leaders.push(status.leader_id);
                }
            }
            if leaders.len() == running.len()
                && !leaders.is_empty()
                && leaders
                    .iter()
                    .all(|l| *l == leaders[0] && running.contains(l))
            {
                return Ok(leaders[0]);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?} (running {running:?}, leaders {leaders:?})\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<ClusterStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.status(id).await {
                if status.last_applied_index >= index {
                    return Ok(status);
                }
            }
            if Instant::now() > deadline {
                bail!("node {id} did not apply index {index} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts agent `name` with the container driver (or restarts it from
    /// its data dir).
    pub fn start_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let control = self.control_addrs();
        self.start_agent_with(name, &control, "container")
    }

    /// Starts agent `name` dialing `control` (for example a fake leader).
    pub fn start_agent_with_control(&mut self, name: &str, control: &str) -> anyhow::Result<()> {
        self.start_agent_with(name, control, "container")
    }

    /// Starts agent `name` dialing `control` with `driver` (container or memory).
    pub fn start_agent_with(
        &mut self,
        name: &str,
        control: &str,
        driver: &str,
    ) -> anyhow::Result<()> {
        self.start_agent_as(name, name, control, driver)
    }

    /// Starts an agent process tracked as `slot` (its data dir and log are
    /// named after the slot) that claims the node name `node_name`: two
    /// slots with one node name are two machines claiming one identity.
    pub fn start_agent_as(
        &mut self,
        slot: &str,
        node_name: &str,
        control: &str,
        driver: &str,
    ) -> anyhow::Result<()> {
        let name = slot;
        let peer = Peer::Agent(name.to_string());
        let (addr, advertise) = match self.agents.get(name) {
            Some(slot) => (slot.addr.clone(), slot.advertise.clone()),
            None => {
                let slot = new_slot(self.fronting.as_mut(), peer.clone())?;
                (slot.addr, slot.advertise)
            }
        };
        let mut args = vec![
            "--control".to_string(),
            control.to_string(),
            "--node-name".to_string(),
            node_name.to_string(),
            "--data-dir".to_string(),
            self.dir
                .path()
                .join(format!("agent-{name}"))
                .display()
                .to_string(),
            "--driver".to_string(),
            driver.to_string(),
            "--listen".to_string(),
            addr.clone(),
            "--advertise-addr".to_string(),
            advertise.clone(),
        ];
        if let Some(ip) = self.fronting.as_ref().and_then(|f| f.source_ip(&peer)) {
            args.extend(["--source-ip".to_string(), ip.to_string()]);
        }
        args.extend(self.agent_args.iter().cloned());
        args.extend(self.agent_args_of.get(name).cloned().unwrap_or_default());
        if !args.iter().any(|a| a == "--tls-cert") {
            args.push("--insecure".to_string());
        }
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let mut env = self.agent_env.clone();
        env.extend(self.agent_env_of.get(name).cloned().unwrap_or_default());
        let process = NodeProcess::spawn_with_env(
            &format!("agent-{name}"),
            &bin_path("berth-agent"),
            &args,
            &env,
            &log,
        )?;
        self.agents.insert(
            name.to_string(),
            NodeSlot {
                addr,
                advertise,
                process: Some(process),
            },
        );
        Ok(())
    }

    pub fn agent(&mut self, name: &str) -> Option<&mut NodeProcess> {
        self.agents.get_mut(name).and_then(|s| s.process.as_mut())
    }

    /// `kill -9` an agent.
    pub fn kill9_agent(&mut self, name: &str) {
        if let Some(p) = self.agent(name) {
            p.kill9();
        }
    }

    /// Registers a sandbox name whose containers and volumes are removed
    /// when the cluster drops, and returns it.
    pub fn track(&mut self, sandbox: &str) -> String {
        self.sandboxes.push(sandbox.to_string());
        sandbox.to_string()
    }

    /// The agent's data dir.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{name}"))
    }

    /// Tails of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (id, slot) in &self.nodes {
            if let Some(p) = &slot.process {
                out.push_str(&format!(
                    "--- node {id} ({}) ---\n{}\n",
                    p.log.display(),
                    p.log_tail(40)
                ));
            }
        }
        for (name, slot) in &self.agents {
            if let Some(p) = &slot.process {
                out.push_str(&format!(
                    "--- agent {name} ({}) ---\n{}\n",
                    p.log.display(),
                    p.log_tail(40)
                ));
            }
        }
        out
    }
}

/// A slot for `peer` on a free loopback port, behind `fronting` if any.
fn new_slot(fronting: Option<&mut Box<dyn Fronting>>, peer: Peer) -> anyhow::Result<NodeSlot> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let advertise = match fronting {
        Some(f) => f.front(&peer, &addr)?,
        None => addr.clone(),
    };
    Ok(NodeSlot {
        addr,
        advertise,
        process: None,
    })
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for slot in self.agents.values_mut().chain(self.nodes.values_mut()) {
            if let Some(mut p) = slot.process.take() {
                p.kill9();
            }
        }
        crate::podman::purge(&self.sandboxes);
    }
}
