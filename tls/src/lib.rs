//! berth's certificates. A cluster has one CA ([`CertDir`]); every
//! component's certificate names what it is as a DNS name
//! ([`Identity`]): `server.<cluster>.berth` for control nodes,
//! `agent.<node>.berth` for node agents, `client.<name>.berth` for API
//! clients. Peers check these names, not only the CA's signature, so an
//! agent's certificate can never pass for a server's, nor for another
//! node's agent.

mod certdir;
mod identity;
mod reload;
mod settings;

pub use certdir::{write_file, CertDir, Issued, Kind};
pub use identity::{ClientGrant, Identity};
pub use reload::{incoming, Reloading};
pub use settings::{only, peer_certificate_in, peer_identities, peer_identities_in, Material};

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{dir} already holds a CA ({file}); refusing to overwrite it")]
    Exists { dir: String, file: String },
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}
