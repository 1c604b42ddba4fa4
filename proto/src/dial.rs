//! The one place a gRPC channel to another berth process is configured:
//! every outgoing connection (Raft and forwarding between control nodes,
//! the leader to an agent's data plane, an agent's control session) starts
//! from [`endpoint`]. It sets TCP_NODELAY and, when the operator chose one
//! with `--source-ip`, the local address connections leave from, so that a
//! multi-homed host (or the chaos suite's partitioning proxy) sees which
//! component a connection comes from.

use std::net::IpAddr;
use std::sync::OnceLock;

use tonic::transport::Endpoint;

static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();

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
