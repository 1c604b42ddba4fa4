//! Raft transport between control nodes over gRPC (`berth.raft.v1`):
//! [`client`] is openraft's network to peers, [`server`] the service that
//! receives Raft messages and forwarded leader operations.

pub mod client;
pub mod server;

use std::time::Duration;

use berth_proto::raft_v1::raft_service_client::RaftServiceClient;
use tonic::transport::Channel;

use crate::NodeError;

/// A lazily connecting client for a peer's `host:port` (mutual TLS when
/// this node has TLS material). Only ever dials the addresses in the
/// cluster membership.
pub(crate) fn peer_client(addr: &str) -> Result<RaftServiceClient<Channel>, NodeError> {
    let endpoint = berth_proto::dial::peer_endpoint(addr)
        .map_err(|e| NodeError::InvalidArgument(format!("bad peer address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_millis(500));
    Ok(
        RaftServiceClient::new(berth_proto::dial::connect_lazy(endpoint))
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024),
    )
}
