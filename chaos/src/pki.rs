//! The chaos cluster's certificates: a CA, one server certificate every
//! node shares, one agent certificate per agent, and a platform admin's
//! client certificate for the workload and the checker, so the suite runs
//! berth as teams do (mutual TLS on every link, every call authenticated
//! and authorized) unless `--insecure` is asked for.

use std::path::Path;

use anyhow::Context;
use berth_tls::{CertDir, ClientGrant, Identity, Issued, Kind, Material};
use tonic::transport::ClientTlsConfig;

const CLUSTER: &str = "chaos";
const DAYS: u32 = 2;

pub struct Pki {
    ca: CertDir,
    nodes: Issued,
    client: ClientTlsConfig,
}

fn tls_args(ca: &CertDir, issued: &Issued) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        ca.ca_cert().display().to_string(),
        "--tls-cert".into(),
        issued.cert.display().to_string(),
        "--tls-key".into(),
        issued.key.display().to_string(),
    ]
}

impl Pki {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = CertDir::init(dir, CLUSTER).context("chaos CA")?;
        let nodes = ca.issue(Kind::Server, "nodes", &[], DAYS)?;
        let grant = ClientGrant {
            tenant: "default".into(),
            role: "platform-admin".into(),
        };
        let admin = ca.issue_client("chaos", &grant, &[], DAYS)?;
        let material = Material::load(&ca.ca_cert(), &admin.cert, &admin.key)?;
        let client = material.client(&Identity::Server {
            cluster: CLUSTER.into(),
        });
        Ok(Self { ca, nodes, client })
    }

    /// The flags of every control node.
    pub fn node_args(&self) -> Vec<String> {
        tls_args(&self.ca, &self.nodes)
    }

    /// The flags of agent `name` (its own certificate, made here).
    pub fn agent_args(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let issued = self.ca.issue(Kind::Agent, name, &[], DAYS)?;
        let mut args = tls_args(&self.ca, &issued);
        args.extend(["--tls-cluster".into(), CLUSTER.into()]);
        Ok(args)
    }

    /// What the workload and the checker dial with.
    pub fn client(&self) -> ClientTlsConfig {
        self.client.clone()
    }
}
