//! Node identity and cluster formation: the id persisted in the data dir,
//! `--initial-cluster` parsing, and joining a running cluster.
//!
//! Invariant kept here: a node's identity is configured and persisted, never
//! derived from anything that changes when a machine is recreated
//! (invariant 7); a data dir refuses to start under another id.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_proto::v1::cluster_service_client::ClusterServiceClient;
use berth_proto::v1::AddNodeRequest;
use berth_raft::NodeId;
use openraft::BasicNode;

const ID_FILE: &str = "node-id";

/// Checks `host:port` syntax without resolving it.
pub fn parse_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address {addr:?} must be host:port"));
    };
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!("address {addr:?} has an invalid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("address {addr:?} has an invalid port")),
    }
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_initial_cluster(spec: &str) -> anyhow::Result<BTreeMap<NodeId, BasicNode>> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} must be ID=HOST:PORT"))?;
        let id: NodeId = id.parse().ok().filter(|id| *id > 0).with_context(|| {
            format!("--initial-cluster entry {part:?}: id must be a positive integer")
        })?;
        parse_addr(addr).map_err(anyhow::Error::msg)?;
        if members.insert(id, BasicNode::new(addr)).is_some() {
            bail!("--initial-cluster names node {id} twice");
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(members)
}

/// Persists the node id in the data dir on first start; later starts must
/// use the same id.
pub fn claim_identity(data_dir: &Path, id: NodeId) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("create data dir {}", data_dir.display()))?;
    let path = data_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let existing: NodeId = existing
                .trim()
                .parse()
                .with_context(|| format!("{} is corrupt", path.display()))?;
            if existing != id {
                bail!(
                    "data dir {} belongs to node {existing}, not node {id}; use --id {existing} or another data dir",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = data_dir.join(format!("{ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Asks a running cluster (through any of `join`'s addresses) to add this
/// node, retrying until it succeeds or the deadline passes.
pub async fn join(join: &str, id: NodeId, addr: &str, deadline: Duration) -> anyhow::Result<()> {
    let targets: Vec<&str> = join
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let started = tokio::time::Instant::now();
    let mut last_error = String::from("no address given");
    while started.elapsed() < deadline {
        for target in &targets {
            match try_join(target, id, addr).await {
                Ok(()) => return Ok(()),
                Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    bail!("joining via {target} refused: {}", status.message())
                }
                Err(status) => last_error = format!("{target}: {}", status.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("could not join the cluster within {deadline:?}: {last_error}")
}

async fn try_join(target: &str, id: NodeId, addr: &str) -> Result<(), tonic::Status> {
    // As a control node: over mutual TLS with this node's server
    // certificate when TLS is on (the cluster admits a server to join).
    let channel = berth_proto::dial::peer_endpoint(target)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30));
    let channel = tokio::time::timeout(Duration::from_secs(5), berth_proto::dial::connect(channel))
        .await
        .map_err(|_| tonic::Status::unavailable("no answer"))?
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = ClusterServiceClient::new(channel);
    client
        .add_node(AddNodeRequest {
            id,
            addr: addr.to_string(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let members = parse_initial_cluster("1=127.0.0.1:7001, 2=localhost:7002").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[&2].addr, "localhost:7002");
        for bad in [
            "",
            "1",
            "0=a:1",
            "x=a:1",
            "1=a",
            "1=a:0",
            "1=a:1,1=b:2",
            "1=:80",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_is_persisted_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        claim_identity(dir.path(), 3).unwrap();
        claim_identity(dir.path(), 3).unwrap();
        let err = claim_identity(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("belongs to node 3"), "{err}");
    }
}
