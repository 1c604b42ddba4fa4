//! Certificates that reload from disk without a restart.
//!
//! [`Reloading`] holds a component's current [`Material`] and re-reads the
//! three files when any of them changes (checked every few seconds by
//! [`Reloading::watch`]). A change is taken only if the new files load and
//! still name the same identity; otherwise the old material stays and the
//! error is logged, so a half-copied or wrong certificate never takes a
//! component down. New connections use the new material: the server side
//! through [`incoming`], which runs each handshake with the current
//! configuration, and outgoing connections through `berth_proto::dial`,
//! which builds each endpoint from the current material.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Identity, Material, TlsError};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A component's TLS material, reloaded when its files change.
pub struct Reloading {
    files: [PathBuf; 3],
    identity: Identity,
    current: RwLock<Arc<Material>>,
    server: RwLock<Arc<rustls::ServerConfig>>,
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn stamp(files: &[PathBuf; 3]) -> Stamp {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

impl Reloading {
    /// Loads the CA, certificate and key; fails if they do not load.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let files = [ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()];
        let seen = stamp(&files);
        let material = Material::load(ca, cert, key)?;
        let identity = material.identity()?;
        let server = material.rustls_server()?;
        Ok(Arc::new(Self {
            files,
            identity,
            current: RwLock::new(Arc::new(material)),
            server: RwLock::new(server),
            seen: Mutex::new(seen),
        }))
    }

    /// The identity this component's certificate names (fixed).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The material new connections use.
    pub fn material(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        match self.server.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files if any changed since the last look. `Ok(true)`:
    /// new material is in use. An error leaves the old material in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let [ca, cert, key] = &self.files;
        let material = Material::load(ca, cert, key)?;
        let identity = material.identity()?;
        if identity != self.identity {
            return Err(TlsError::Invalid(format!(
                "the new certificate names {identity}, not {}; kept the old one",
                self.identity
            )));
        }
        let server = material.rustls_server()?;
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = server;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        Ok(true)
    }

    /// Checks the files every `every` for as long as the process runs.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = this.upgrade() else { return };
                match this.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(identity = %this.identity, "TLS certificates reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "TLS certificates not reloaded"),
                }
            }
        });
    }
}

impl Material {
    /// A rustls server configuration: this certificate; a client
    /// certificate optional, and checked against the CA when presented;
    /// HTTP/2 only.
    pub fn rustls_server(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Invalid(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            roots
                .add(ca.map_err(|e| bad("CA certificate", &e))?)
                .map_err(|e| bad("CA certificate", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client verifier", &e))?;
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad("key", &e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// TLS connections accepted on `listener`, each handshake run with the
/// configuration current when the connection arrived. TCP_NODELAY is set
/// on every accepted socket. A failed handshake drops that connection only.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = socket.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
