//! Dialing a node agent's data-plane service (`AgentData`), shared by the
//! exec/logs proxy and the update readiness probe.

use std::time::Duration;

use berth_proto::agent_v1::agent_data_client::AgentDataClient;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the agent at `addr` (host:port); the error is one line.
pub async fn connect(addr: &str) -> Result<AgentDataClient<Channel>, String> {
    let endpoint = berth_proto::dial::endpoint(addr)
        .map_err(|e| format!("bad agent address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("node agent at {addr} unreachable: {e}"))?;
    Ok(AgentDataClient::new(channel))
}
