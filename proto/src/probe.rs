//! The probe port: `grpc.health.v1` alone, in plaintext, on its own
//! address (`--health-listen`), for probes that cannot speak mutual TLS
//! (the kubelet's native gRPC probes). It answers SERVING while the
//! process serves and reveals nothing else: no API, no reflection, no
//! data. Every other port stays TLS only.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Serve the health service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (_reporter, service) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Bind `addr` and serve the probe port in the background, for the life
/// of the process.
pub async fn spawn(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, std::future::pending()).await {
            eprintln!("health probe server failed: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    #[tokio::test]
    async fn the_probe_port_answers_serving_in_plaintext() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async move {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
        // Nothing else is served here.
        let other = client
            .check(HealthCheckRequest {
                service: "berth.v1.SandboxService".into(),
            })
            .await;
        assert_eq!(other.unwrap_err().code(), tonic::Code::NotFound);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
