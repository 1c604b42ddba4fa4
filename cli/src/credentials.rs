//! How the CLI reaches a control plane that serves TLS: the CA from `--ca`
//! (`BERTH_CA`), else from `$BERTH_HOME/tls` (default `./.berth/tls`, what
//! `berth up` wrote); a client certificate from `--cert`/`--key`
//! (`BERTH_CERT`/`BERTH_KEY`), else `berth up`'s `client-admin`. The
//! control nodes must present `server.<cluster>.berth`, the cluster from
//! `BERTH_CLUSTER`, else recorded beside the CA (`berth certs init` writes
//! it), else `berth`. Without a CA anywhere,
//! plaintext: a cluster started with `--insecure`.
//!
//! The API token comes from `--token` (`BERTH_TOKEN`), else from
//! `$BERTH_HOME/token`, which `berth up` writes.

use std::path::{Path, PathBuf};

use berth_tls::{CertDir, Identity};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

use crate::Failure;

/// The file `berth up` writes the cluster's bootstrap token to (mode 0600).
pub fn token_file(home: &Path) -> PathBuf {
    home.join("token")
}

/// The API token: `--token` (`BERTH_TOKEN`), else `$BERTH_HOME/token`.
pub fn token(flag: Option<&str>, home: &Path) -> Result<Option<String>, Failure> {
    if let Some(token) = flag {
        return Ok(Some(token.trim().to_string()));
    }
    let path = token_file(home);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The directory `berth up` keeps its CA and certificates in.
pub fn tls_dir(home: &Path) -> PathBuf {
    home.join("tls")
}

/// `berth up`'s client certificate name.
pub const LOCAL_CLIENT: &str = "admin";

/// The TLS settings for reaching the control plane, if TLS is configured.
pub fn client_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    home: &Path,
) -> Result<Option<ClientTlsConfig>, Failure> {
    let dir = tls_dir(home);
    let local_ca = dir.join("ca.pem");
    let ca = match ca {
        Some(ca) => ca.to_path_buf(),
        None if local_ca.exists() => local_ca,
        None => return Ok(None),
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
    };
    // The cluster name the servers' certificates carry: $BERTH_CLUSTER,
    // else the one recorded beside the CA (`berth certs init` writes it),
    // else beside `berth up`'s CA, else "berth".
    let beside = |d: &Path| CertDir::open(d).ok().map(|c| c.cluster().to_string());
    let cluster = std::env::var("BERTH_CLUSTER")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| ca.parent().and_then(beside))
        .or_else(|| beside(&dir))
        .unwrap_or_else(|| "berth".to_string());
    let server = Identity::Server { cluster };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca)?))
        .domain_name(server.dns_name());
    let local_cert = dir.join(format!("client-{LOCAL_CLIENT}.pem"));
    let local_key = dir.join(format!("client-{LOCAL_CLIENT}-key.pem"));
    match (cert, key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) if local_cert.exists() && local_key.exists() => {
            tls = tls.identity(TlsIdentity::from_pem(read(&local_cert)?, read(&local_key)?));
        }
        (None, None) => {}
        _ => return Err(Failure::usage("--cert and --key go together")),
    }
    Ok(Some(tls))
}
