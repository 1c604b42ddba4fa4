//! Serves every gRPC service of a control node on one address: the public
//! `berth.v1` API, the internal Raft transport, health and reflection.
//! With TLS material, the port speaks TLS only; a client certificate is
//! optional at the handshake (API clients may use a token). Every call then
//! passes the auth layer (`crate::auth`): the Raft transport admits only
//! this cluster's servers, the agent session only agents, the API only
//! clients whose role the method's entry in the table allows.

use std::future::Future;
use std::sync::Arc;

use crate::api::{AccessApi, AgentSessions, ClusterApi, SandboxApi};
use crate::auth::layer::{Admission, AuthLayer};
use crate::leader::Leadership;
use anyhow::Context;
use berth_proto::agent_v1::agent_control_server::AgentControlServer;
use berth_proto::net::Listener;
use berth_proto::raft_v1::raft_service_server::RaftServiceServer;
use berth_proto::v1::access_service_server::AccessServiceServer;
use berth_proto::v1::cluster_service_server::ClusterServiceServer;
use berth_proto::v1::sandbox_service_server::SandboxServiceServer;
use berth_raft::network::server::RaftServer;
use berth_raft::RaftNode;

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    node: Arc<RaftNode>,
    leadership: Leadership,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    keep_revisions: u32,
    admission: Admission,
) -> anyhow::Result<()> {
    let tls = berth_proto::dial::tls();
    let builder = tonic::transport::Server::builder();
    let raft = RaftServiceServer::new(RaftServer::new(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
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

    // Every request continues its caller's trace and is counted, then
    // passes authentication and authorization.
    let layers = tower::ServiceBuilder::new()
        .layer(berth_telemetry::grpc::TraceLayer)
        .layer(AuthLayer::new(admission));
    let router = builder
        .layer(layers)
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
        .add_service(AccessServiceServer::new(AccessApi::new(node.clone())))
        // An agent's register and full heartbeats carry its whole
        // inventory: past 4 MiB (tonic's default) at about 60,000
        // sandboxes on one node, which left such an agent unable to
        // heartbeat or register at all.
        .add_service(
            AgentControlServer::new(AgentSessions::new(node.clone(), leadership))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(raft);
    // With TLS, each handshake uses the certificates current when the
    // connection arrives (they reload from disk without a restart).
    // A simulated network (the deterministic simulator's) carries no TLS.
    match (listener, tls) {
        (Listener::Tcp(listener), Some(tls)) => {
            router
                .serve_with_incoming_shutdown(berth_tls::incoming(listener, tls.clone()), shutdown)
                .await
        }
        (Listener::Tcp(listener), None) => {
            router
                .serve_with_incoming_shutdown(berth_proto::net::tcp_incoming(listener), shutdown)
                .await
        }
        (Listener::Simulated(incoming), _) => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
    .context("gRPC server failed")
}
