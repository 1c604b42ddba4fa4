//! The local cluster's certificates: `berth up` makes a CA under
//! `HOME/tls` on first use and issues what is missing: one server
//! certificate every node shares (`server.berth.berth`, also valid for
//! 127.0.0.1 and localhost), the local agent's (`agent.local-1.berth`) and
//! an `admin` client certificate the CLI finds there. A resumed cluster
//! keeps its CA and certificates.

use std::path::{Path, PathBuf};

use berth_tls::{CertDir, Issued, Kind};

use crate::credentials::{tls_dir, LOCAL_CLIENT};
use crate::Failure;

const CLUSTER: &str = "berth";
const SERVER: &str = "local";
const DAYS: u32 = 365;

pub struct LocalPki {
    ca: CertDir,
    server: Issued,
    agent: Issued,
}

/// The local CA and certificates, made where missing.
pub fn ensure(home: &Path, agent_node: &str) -> Result<LocalPki, Failure> {
    let dir = tls_dir(home);
    let ca = if dir.join("ca.pem").exists() {
        CertDir::open(&dir)?
    } else {
        CertDir::init(&dir, CLUSTER)?
    };
    let local_sans = ["127.0.0.1".to_string(), "localhost".to_string()];
    let issue = |kind, name: &str| -> Result<Issued, Failure> {
        let prefix = match kind {
            Kind::Server => "server",
            Kind::Agent => "agent",
            Kind::Client => "client",
        };
        let cert = dir.join(format!("{prefix}-{name}.pem"));
        let key = dir.join(format!("{prefix}-{name}-key.pem"));
        if cert.exists() && key.exists() {
            return Ok(Issued {
                identity: ca.identity(kind, name),
                cert,
                key,
            });
        }
        Ok(ca.issue(kind, name, &local_sans, DAYS)?)
    };
    let server = issue(Kind::Server, SERVER)?;
    let agent = issue(Kind::Agent, agent_node)?;
    issue(Kind::Client, LOCAL_CLIENT)?;
    Ok(LocalPki { ca, server, agent })
}

impl LocalPki {
    pub fn dir(&self) -> PathBuf {
        self.ca
            .ca_cert()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The flags of every control node: TLS, and the cluster data key
    /// (made once, next to the CA) that seals secret env.
    pub fn node_args(&self) -> Result<Vec<String>, Failure> {
        let mut args = self.server_args();
        let key = self.ca.ensure_data_key()?;
        args.extend(["--data-key-file".into(), key.display().to_string()]);
        Ok(args)
    }

    fn args(&self, issued: &Issued) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.ca.ca_cert().display().to_string(),
            "--tls-cert".into(),
            issued.cert.display().to_string(),
            "--tls-key".into(),
            issued.key.display().to_string(),
        ]
    }

    /// The `--tls-*` flags of every control node.
    pub fn server_args(&self) -> Vec<String> {
        self.args(&self.server)
    }

    /// The `--tls-*` flags of the local agent.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = self.args(&self.agent);
        args.extend(["--tls-cluster".into(), self.ca.cluster().to_string()]);
        args
    }
}
