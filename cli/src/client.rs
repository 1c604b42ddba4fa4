//! Connecting to the control plane: try each address in order and use the
//! first that answers. Any control node serves any request.

use std::time::Duration;

use berth_proto::v1::cluster_service_client::ClusterServiceClient;
use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::Failure;

/// Request deadline: a little over the server's own bound, so the server's
/// answer (for example "no quorum") arrives before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// A fresh idempotency key for one mutating request: the control plane
/// applies a request id at most once, whoever retries it.
pub fn request_id() -> String {
    format!("cli-{}", uuid::Uuid::new_v4())
}

pub struct Control {
    channel: Channel,
}

impl Control {
    /// Connects to the first of `addrs` that answers, over TLS with `tls`.
    pub async fn connect(addrs: &str, tls: Option<&ClientTlsConfig>) -> Result<Self, Failure> {
        let addrs: Vec<&str> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(Failure::usage("--control names no address"));
        }
        let mut errors = Vec::new();
        for addr in &addrs {
            let invalid = |e: tonic::transport::Error| {
                Failure::usage(format!("invalid control address {addr:?}: {e}"))
            };
            let endpoint = match tls {
                Some(tls) => berth_proto::dial::endpoint(&format!("https://{addr}"))
                    .and_then(|e| e.tls_config(tls.clone()))
                    .map_err(invalid)?,
                None => berth_proto::dial::endpoint(addr).map_err(invalid)?,
            }
            .connect_timeout(Duration::from_secs(1))
            .timeout(REQUEST_TIMEOUT);
            match endpoint.connect().await {
                Ok(channel) => return Ok(Self { channel }),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(Failure {
            message: format!("no control node reachable ({})", errors.join("; ")),
            code: 5,
        })
    }

    pub fn sandboxes(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(self.channel.clone())
    }

    pub fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel.clone())
    }
}
