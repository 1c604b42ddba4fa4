//! Serves every gRPC service of a control node on one address: the public
//! `berth.v1` API, the internal Raft transport, health and reflection.
//! With TLS material, the port speaks TLS only; a client certificate is
//! optional at the handshake (API clients may use a token) and required,
//! naming this cluster's servers, by the Raft transport: an agent's or a
//! client's certificate from the same CA may not speak Raft.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use berth_proto::agent_v1::agent_control_server::AgentControlServer;
use berth_proto::raft_v1::raft_service_server::RaftServiceServer;
use berth_proto::v1::cluster_service_server::ClusterServiceServer;
use berth_proto::v1::sandbox_service_server::SandboxServiceServer;
use berth_raft::network::server::RaftServer;
use berth_raft::RaftNode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

use crate::api::{AgentSessions, ClusterApi, SandboxApi};
use crate::leader::Leadership;

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    node: Arc<RaftNode>,
    leadership: Leadership,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    keep_revisions: u32,
) -> anyhow::Result<()> {
    let tls = berth_proto::dial::tls();
    let mut builder = tonic::transport::Server::builder();
    if let Some((material, _)) = tls {
        builder = builder
            .tls_config(material.server_optional_client())
            .context("TLS settings")?;
    }
    let raft = RaftServiceServer::new(RaftServer::new(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let raft = InterceptedService::new(
        raft,
        berth_tls::only(tls.map(|(_, own)| own.clone()), "the Raft transport"),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SandboxServiceServer<SandboxApi>>()
        .await;
    health
        .set_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build reflection service")?;

    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(SandboxServiceServer::new(SandboxApi::new(
            node.clone(),
            keep_revisions,
        )))
        .add_service(ClusterServiceServer::new(ClusterApi::new(
            node.clone(),
            leadership.clone(),
        )))
        .add_service(AgentControlServer::new(AgentSessions::new(
            node.clone(),
            leadership,
        )))
        .add_service(raft)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .context("gRPC server failed")
}
