//! The simulated cluster: berthd nodes and agents as turmoil hosts, each
//! running the production code (`berth_control`'s server, Raft node and
//! leader actor tree; `berth_agent`'s session, fence and data server) over
//! the simulated network. What outlives a host crash lives here, outside
//! the host: a control node's [`MemDisk`] (unsynced writes are dropped on
//! crash) and an agent's "engine" (the memory driver) and data dir.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::driver::MemoryDriver;
use berth_agent::fence::Fence;
use berth_agent::session::{Session, SessionConfig};
use berth_control::auth::layer::Admission;
use berth_control::leader::Leadership;
use berth_raft::store::disk::MemDisk;
use berth_raft::{NodeConfig, RaftNode};
use openraft::BasicNode;

use super::world;

pub const CONTROL_PORT: u16 = 7000;
pub const AGENT_PORT: u16 = 7101;

/// The running control nodes, by host name (for finding the leader).
pub type Registry = Arc<Mutex<BTreeMap<String, Arc<RaftNode>>>>;

/// One control node and its disk.
#[derive(Clone)]
pub struct Control {
    pub id: u64,
    pub name: String,
    pub skew_ms: i64,
    pub disk: Arc<MemDisk>,
}

/// One agent, its engine and its data dir.
#[derive(Clone)]
pub struct Agent {
    pub name: String,
    pub skew_ms: i64,
    pub engine: Arc<MemoryDriver>,
    pub data_dir: PathBuf,
}

pub fn control_addr(name: &str) -> String {
    format!("{name}:{CONTROL_PORT}")
}

/// Adds control node `c` to the simulation (re-run from scratch on restart).
pub fn add_control(
    sim: &mut turmoil::Sim<'_>,
    c: &Control,
    members: &BTreeMap<u64, BasicNode>,
    registry: &Registry,
) {
    let (c, members, registry) = (c.clone(), members.clone(), registry.clone());
    sim.host(c.name.clone(), move || {
        let (c, members, registry) = (c.clone(), members.clone(), registry.clone());
        async move {
            world::enter_host(&c.name, c.skew_ms);
            let mut config = NodeConfig::new(c.id, control_addr(&c.name), "/nonexistent");
            config.disk = Some(c.disk.clone());
            // One deterministic runtime for every host.
            config.own_runtime = false;
            config.snapshot_every = 30;
            config.logs_to_keep = 10;
            let node = RaftNode::start(config).await?;
            let listener = berth_proto::net::bind(&format!("0.0.0.0:{CONTROL_PORT}")).await?;
            let leadership = Leadership::watch(node.clone());
            let server = tokio::spawn(berth_control::server::serve(
                node.clone(),
                leadership,
                listener,
                std::future::pending(),
                20,
                Admission::Insecure,
            ));
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.name.clone(), node.clone());
            if !node.is_initialized().await? {
                node.bootstrap(members).await?;
            }
            server.await??;
            Ok(())
        }
    });
}

/// Adds agent `a` to the simulation (re-run from scratch on restart; the
/// engine keeps its sandboxes, as a real one does when the agent dies).
pub fn add_agent(sim: &mut turmoil::Sim<'_>, a: &Agent, controls: &[String]) {
    let (a, controls) = (a.clone(), controls.to_vec());
    sim.host(a.name.clone(), move || {
        let (a, controls) = (a.clone(), controls.clone());
        async move {
            world::enter_host(&a.name, a.skew_ms);
            std::fs::create_dir_all(&a.data_dir)?;
            let fence = Arc::new(Fence::load(&a.data_dir)?);
            let instance_id = berth_agent::identity::instance_id(&a.data_dir)?;
            let listener = berth_proto::net::bind(&format!("0.0.0.0:{AGENT_PORT}")).await?;
            let driver: Arc<dyn berth_agent::driver::Driver> = a.engine.clone();
            tokio::spawn(berth_agent::data_server::serve(
                listener,
                driver.clone(),
                None,
                std::future::pending(),
            ));
            let cfg = SessionConfig {
                control: controls.iter().map(|c| control_addr(c)).collect(),
                node_name: a.name.clone(),
                instance_id,
                data_addr: format!("{}:{AGENT_PORT}", a.name),
                cpus: 4,
                memory_bytes: 8 << 30,
                control_identity: berth_tls::Identity::Server {
                    cluster: "berth".to_string(),
                },
            };
            Session::new(cfg, driver, fence).run().await;
            // The session loop only ends with the process.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });
}

/// The control node that leads now, if one does (by its own metrics).
pub fn leader(registry: &Registry) -> Option<String> {
    let nodes = registry.lock().unwrap_or_else(|p| p.into_inner());
    nodes
        .iter()
        .find(|(_, node)| {
            let m = node.metrics();
            m.current_leader == Some(node.id())
        })
        .map(|(name, _)| name.clone())
}
