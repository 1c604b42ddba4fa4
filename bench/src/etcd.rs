//! A 3-member etcd cluster on loopback (Debian's `etcd-server`, fsync on,
//! default settings but for berth's election timeouts), for side-by-side
//! figures. Members are killed when the value drops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_testkit::{free_port, NodeProcess};
use tonic::transport::Channel;

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

/// The etcd binary, if installed.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    })
}

pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    _members: Vec<NodeProcess>,
    clients: Vec<String>,
}

impl EtcdCluster {
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.path().join(format!("e{i}"));
            let args: Vec<String> = [
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &data.display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "berth-bench",
                // 100 ms heartbeats, 500 ms election timeout (etcd wants
                // at least 5 heartbeats per timeout); timing does not
                // change write throughput.
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.path().join(format!("e{i}.log"));
            members.push(NodeProcess::spawn(
                &format!("etcd-{i}"),
                binary,
                &args,
                &log,
            )?);
            clients.push(format!("http://127.0.0.1:{client}"));
        }
        Ok(Self {
            _dir: dir,
            _members: members,
            clients,
        })
    }

    /// A KV client connected to the current leader (so neither system pays
    /// for forwarding), once the cluster has one.
    pub async fn leader_kv(&self, timeout: Duration) -> anyhow::Result<KvClient<Channel>> {
        let started = Instant::now();
        loop {
            for url in &self.clients {
                let Ok(channel) = Channel::from_shared(url.clone())?.connect().await else {
                    continue;
                };
                let status = MaintenanceClient::new(channel.clone())
                    .status(pb::StatusRequest {})
                    .await;
                if let Ok(status) = status {
                    let status = status.into_inner();
                    let member = status.header.map(|h| h.member_id);
                    if status.leader != 0 && member == Some(status.leader) {
                        return Ok(KvClient::new(channel));
                    }
                }
            }
            anyhow::ensure!(started.elapsed() < timeout, "etcd elected no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
