//! The TLS settings of a component, from its certificate, its key and the
//! cluster's CA: a server that requires a client certificate from the CA,
//! a client that checks the peer's identity name (not only the CA), and
//! the identities a request's peer certificate carries, for the
//! per-service checks (a Raft peer must be a server, an agent session the
//! agent of the node it registers as).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::{io, Identity, TlsError};

/// A component's certificate, key and CA, as PEM.
#[derive(Clone)]
pub struct Material {
    pub(crate) ca: Vec<u8>,
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl Material {
    /// Reads the CA certificate, this component's certificate and its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(io(p));
        Ok(Self {
            ca: read(ca)?,
            cert: read(cert)?,
            key: read(key)?,
        })
    }

    /// Serving: present this certificate; require one from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Serving a port that API clients without a certificate may use too
    /// (they present a token instead): a certificate, when presented, must
    /// come from the CA; what a service admits is checked per service from
    /// [`peer_identities`].
    pub fn server_optional_client(&self) -> ServerTlsConfig {
        self.server().client_auth_optional(true)
    }

    /// This certificate and key, to present as a tonic client.
    pub fn tonic_identity(&self) -> TlsIdentity {
        TlsIdentity::from_pem(&self.cert, &self.key)
    }

    /// The identity this material's own certificate speaks for.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        let der = first_pem_block(&self.cert).ok_or_else(|| {
            TlsError::Invalid("the certificate file holds no PEM certificate".into())
        })?;
        Identity::of_certificate(&der)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Invalid("the certificate names no berth identity".into()))
    }

    /// Dialing `peer`: present this certificate; accept only a certificate
    /// from the CA that names `peer`, whatever address was dialed.
    pub fn client(&self, peer: &Identity) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(TlsIdentity::from_pem(&self.cert, &self.key))
            .domain_name(peer.dns_name())
    }
}

/// An interceptor that admits only callers whose certificate names
/// `allowed` (when TLS is on, that is when `allowed` is Some): no
/// certificate is Unauthenticated, another identity PermissionDenied.
/// `service` names what is guarded, for the error.
pub fn only(
    allowed: Option<Identity>,
    service: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        let Some(allowed) = &allowed else {
            return Ok(request);
        };
        let presented = peer_identities(&request);
        if presented.contains(allowed) {
            return Ok(request);
        }
        Err(match presented.first() {
            None => tonic::Status::unauthenticated(format!(
                "{service} needs a certificate naming {allowed}"
            )),
            Some(other) => tonic::Status::permission_denied(format!(
                "{other} may not use {service}; only {allowed} may"
            )),
        })
    }
}

/// The DER bytes of the first PEM block of `pem`.
fn first_pem_block(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Some(parsed.contents)
}

/// The berth identities of the certificate the peer of `request`
/// presented (none without TLS or without a certificate).
pub fn peer_identities<T>(request: &tonic::Request<T>) -> Vec<Identity> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|c| Identity::of_certificate(c.as_ref())))
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// [`peer_identities`] of a request not yet decoded (a tower layer's view:
/// the connection info tonic stores in the HTTP request's extensions).
pub fn peer_identities_in(extensions: &tonic::codegen::http::Extensions) -> Vec<Identity> {
    peer_certificate_in(extensions)
        .and_then(|der| Identity::of_certificate(&der).ok())
        .unwrap_or_default()
}

/// The DER certificate the peer presented, from a request's extensions.
pub fn peer_certificate_in(extensions: &tonic::codegen::http::Extensions) -> Option<Vec<u8>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Channel, Endpoint, Server};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;
    use crate::{CertDir, Kind};

    struct Pki {
        _dir: tempfile::TempDir,
        ca: CertDir,
    }

    fn pki(cluster: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertDir::init(dir.path(), cluster).unwrap();
        Pki { _dir: dir, ca }
    }

    fn material(pki: &Pki, kind: Kind, name: &str) -> Material {
        let issued = pki
            .ca
            .issue(kind, name, &["127.0.0.1".to_string()], 1)
            .unwrap();
        Material::load(&pki.ca.ca_cert(), &issued.cert, &issued.key).unwrap()
    }

    /// A health service over TLS that admits only server identities of
    /// cluster `prod` (as the Raft port does); returns its address.
    async fn serve(material: &Material) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_, health) = tonic_health::server::health_reporter();
        let only_servers = only(
            Some(Identity::Server {
                cluster: "prod".into(),
            }),
            "this test service",
        );
        let router = Server::builder()
            .tls_config(material.server())
            .unwrap()
            .layer(tonic::service::InterceptorLayer::new(only_servers))
            .add_service(health);
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        addr
    }

    async fn call(addr: &str, tls: ClientTlsConfig) -> Result<(), String> {
        let channel: Channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    #[tokio::test]
    async fn peers_are_checked_by_ca_and_by_name() {
        let prod = pki("prod");
        let server = material(&prod, Kind::Server, "node-1");
        let addr = serve(&server).await;
        let server_id = Identity::Server {
            cluster: "prod".into(),
        };

        assert_eq!(server.identity().unwrap(), server_id);
        // Another server of the cluster: admitted.
        let peer = material(&prod, Kind::Server, "node-2");
        call(&addr, peer.client(&server_id)).await.unwrap();

        // An agent of the same CA: the handshake passes, the name does not.
        let agent = material(&prod, Kind::Agent, "worker-1");
        let err = call(&addr, agent.client(&server_id)).await.unwrap_err();
        assert!(err.starts_with("PermissionDenied"), "{err}");

        // A server certificate from another CA: refused at the handshake.
        let other = pki("prod");
        let stranger = material(&other, Kind::Server, "node-9");
        assert!(call(&addr, stranger.client(&server_id)).await.is_err());

        // A client expecting an agent refuses the server it reached.
        let agent_id = Identity::Agent {
            node: "worker-1".into(),
        };
        assert!(call(&addr, peer.client(&agent_id)).await.is_err());

        // No client certificate at all: refused.
        let anonymous = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(prod.ca.ca_cert()).unwrap(),
            ))
            .domain_name(server_id.dns_name());
        assert!(call(&addr, anonymous).await.is_err());
    }
}
