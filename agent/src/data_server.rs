//! The AgentData gRPC service: exec and logs streams straight from the
//! driver, which the control plane proxies to clients, and volume sizes.
//! Read-only with respect to sandbox lifecycle: it never creates, stops or
//! deletes. Names are validated and, when the caller gives the sandbox's
//! uid, only that sandbox's container is reached (never another sandbox
//! that has the name now).

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::agent_v1::agent_data_server::{AgentData, AgentDataServer};
use berth_proto::agent_v1::{
    ExecOutput, ExecRequest, LogChunk, LogsRequest, VolumeSizeRequest, VolumeSizeResponse,
};
use berth_proto::net::Listener;
use futures::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::driver::Driver;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// AgentData over a driver.
pub struct DataService {
    driver: Arc<dyn Driver>,
}

impl DataService {
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl AgentData for DataService {
    type ExecStream = Streamed<ExecOutput>;
    type LogsStream = Streamed<LogChunk>;

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let ExecRequest { name, command, uid } = req.into_inner();
        let out = self.driver.exec(&name, &uid, command).await?;
        Ok(Response::new(Box::pin(
            out.map(|i| i.map_err(Status::from)),
        )))
    }

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let LogsRequest { name, follow, uid } = req.into_inner();
        let out = self.driver.logs(&name, &uid, follow).await?;
        Ok(Response::new(Box::pin(
            out.map(|i| i.map_err(Status::from)),
        )))
    }

    async fn volume_size(
        &self,
        req: Request<VolumeSizeRequest>,
    ) -> Result<Response<VolumeSizeResponse>, Status> {
        let bytes = self.driver.volume_size(&req.into_inner().volume).await?;
        Ok(Response::new(VolumeSizeResponse { bytes }))
    }
}

/// Serve AgentData (plus gRPC health) on `listener` until `shutdown`.
/// With `tls` (the server settings and the control plane's identity), the
/// data plane serves TLS only and admits only control nodes (a simulated
/// network carries no TLS).
pub async fn serve(
    listener: Listener,
    driver: Arc<dyn Driver>,
    tls: Option<(Arc<berth_tls::Reloading>, berth_tls::Identity)>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentDataServer<DataService>>().await;
    let allowed = tls.as_ref().map(|(_, control)| control.clone());
    let data = InterceptedService::new(
        AgentDataServer::new(DataService::new(driver)),
        berth_tls::only(allowed, "the agent's data plane"),
    );
    let router = tonic::transport::Server::builder()
        .layer(berth_telemetry::grpc::TraceLayer)
        .add_service(health_service)
        .add_service(data);
    // With TLS, each handshake uses the certificates current when the
    // connection arrives (they reload from disk without a restart).
    match (listener, tls) {
        (Listener::Tcp(listener), Some((tls, _))) => {
            router
                .serve_with_incoming_shutdown(berth_tls::incoming(listener, tls), shutdown)
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
}
