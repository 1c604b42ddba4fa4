//! Dialing a node agent's data-plane service (`AgentData`), shared by the
//! exec/logs proxy and the update readiness probe.

use std::time::Duration;

use berth_proto::agent_v1::agent_data_client::AgentDataClient;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the agent of node `node` at `addr` (host:port); with TLS
/// on, only a certificate naming that node's agent is accepted. The error
/// is one line.
pub async fn connect(node: &str, addr: &str) -> Result<AgentDataClient<Channel>, String> {
    let peer = berth_tls::Identity::Agent {
        node: node.to_string(),
    };
    let endpoint = berth_proto::dial::endpoint_for(addr, &peer)
        .map_err(|e| format!("bad agent address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = berth_proto::dial::connect(endpoint)
        .await
        .map_err(|e| format!("node agent at {addr} unreachable: {e}"))?;
    Ok(AgentDataClient::new(channel))
}
