//! The one place a gRPC channel to another berth process is configured:
//! every outgoing connection (Raft and forwarding between control nodes,
//! the leader to an agent's data plane, an agent's control session) starts
//! from [`endpoint`]. It sets TCP_NODELAY and, when the operator chose one
//! with `--source-ip`, the local address connections leave from, so that a
//! multi-homed host (or the chaos suite's partitioning proxy) sees which
//! component a connection comes from. With TLS material set ([`set_tls`]),
//! connections to other control nodes ([`peer_endpoint`]) are mutual TLS
//! and accept only a certificate naming this cluster's server identity.
//! [`connect`] and [`connect_lazy`] open the channel over TCP, or over the
//! network installed in `crate::net` (the deterministic simulator's).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use berth_tls::{Identity, Reloading};
use tonic::transport::{Channel, Endpoint};

use crate::net;

static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();
static TLS: OnceLock<Arc<Reloading>> = OnceLock::new();

/// Sets this process's certificate, key and CA (reloaded when their files
/// change) for every later connection (start-up only). Returns this
/// process's own identity, read from its certificate.
pub fn set_tls(tls: Arc<Reloading>) -> Result<Identity, String> {
    let own = tls.identity().clone();
    let set = TLS.get_or_init(|| tls);
    if *set.identity() == own {
        Ok(own)
    } else {
        Err(format!("TLS is already set up as {}", set.identity()))
    }
}

/// This process's TLS material, if TLS is on.
pub fn tls() -> Option<&'static Arc<Reloading>> {
    TLS.get()
}

/// An endpoint for another control node at `addr`: mutual TLS expecting
/// this cluster's server identity when TLS is on, plain otherwise.
pub fn peer_endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    match tls().map(|t| t.identity()) {
        Some(own @ Identity::Server { .. }) => endpoint_for(addr, own),
        _ => endpoint(addr),
    }
}

/// An endpoint for the component `peer` at `addr` (`host:port`): mutual
/// TLS accepting only a certificate that names `peer` when TLS is on,
/// plain otherwise.
pub fn endpoint_for(addr: &str, peer: &Identity) -> Result<Endpoint, tonic::transport::Error> {
    match tls() {
        Some(tls) => {
            let host = addr.rsplit_once("://").map_or(addr, |(_, rest)| rest);
            endpoint(&format!("https://{host}"))?.tls_config(tls.material().client(peer))
        }
        None => endpoint(addr),
    }
}

/// Sets the local address of every later outgoing connection (start-up
/// only; a second call with another address is refused).
pub fn set_source_ip(ip: IpAddr) -> Result<(), String> {
    let set = SOURCE_IP.get_or_init(|| ip);
    if *set == ip {
        Ok(())
    } else {
        Err(format!("the source address is already {set}"))
    }
}

/// The source address set with [`set_source_ip`], if any.
pub fn source_ip() -> Option<IpAddr> {
    SOURCE_IP.get().copied()
}

/// An endpoint for `addr` (`host:port`, or a URI with a scheme).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .local_address(source_ip()))
}

/// Connects `endpoint` now (bounded by its connect timeout, if any).
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match net::installed() {
        Some(installed) => {
            endpoint
                .connect_with_connector(connector(installed.clone()))
                .await
        }
        None => endpoint.connect().await,
    }
}

/// A channel to `endpoint` that connects on first use, and reconnects.
pub fn connect_lazy(endpoint: Endpoint) -> Channel {
    match net::installed() {
        Some(installed) => endpoint.connect_with_connector_lazy(connector(installed.clone())),
        None => endpoint.connect_lazy(),
    }
}

type Dialed = hyper_util::rt::TokioIo<net::Conn>;

/// Dials through an installed network (the URI's host and port).
fn connector(
    installed: std::sync::Arc<dyn net::Net>,
) -> impl tower::Service<
    http::Uri,
    Response = Dialed,
    Error = std::io::Error,
    Future = net::BoxFuture<std::io::Result<Dialed>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: http::Uri| -> net::BoxFuture<_> {
        let installed = installed.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let io = installed.dial(host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(net::Conn(io)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_takes_host_port_or_a_uri() {
        assert_eq!(
            endpoint("127.0.0.1:7000").unwrap().uri().to_string(),
            "http://127.0.0.1:7000/"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:7000").unwrap().uri().to_string(),
            "http://127.0.0.1:7000/"
        );
        assert!(endpoint("not a uri at all").is_err());
    }
}
