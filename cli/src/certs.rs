//! `berth certs ...`: a cluster CA and the certificates it issues, each
//! naming the identity it speaks for (`berth_tls`): every control node's
//! `server.<cluster>.berth`, each agent's `agent.<node>.berth`, clients'
//! `client.<name>.berth`.

use std::path::PathBuf;

use berth_tls::{CertDir, ClientGrant, Kind, TlsError};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::output::Format;
use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA in DIR (refuses to replace one).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, part of every server identity.
        #[arg(long, default_value = "berth")]
        cluster: String,
    },
    /// Issue a certificate from the CA in DIR.
    Issue {
        kind: CertKind,
        /// A control node's label (server), the agent's node name (agent)
        /// or the client's name (client).
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// Extra host names or IP addresses the component is dialed at.
        #[arg(long)]
        san: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Client certificates: the tenant it acts in (with --role, the
        /// certificate is then a credential like a token).
        #[arg(long, requires = "role")]
        tenant: Option<String>,
        /// Client certificates: reader, member, admin or platform-admin.
        #[arg(long, requires = "tenant")]
        role: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CertKind {
    Server,
    Agent,
    Client,
}

impl From<CertKind> for Kind {
    fn from(k: CertKind) -> Self {
        match k {
            CertKind::Server => Kind::Server,
            CertKind::Agent => Kind::Agent,
            CertKind::Client => Kind::Client,
        }
    }
}

impl From<TlsError> for Failure {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Invalid(_) => Failure::usage(e.to_string()),
            TlsError::Exists { .. } => Failure {
                message: e.to_string(),
                code: 4,
            },
            TlsError::Io { .. } | TlsError::Generate(_) => Failure::other(e.to_string()),
        }
    }
}

pub fn run(format: Format, command: CertsCommand) -> Result<u8, Failure> {
    match command {
        CertsCommand::Init { dir, cluster } => {
            let ca = CertDir::init(&dir, &cluster)?;
            match format {
                Format::Json => {
                    println!("{}", json!({"cluster": ca.cluster(), "ca": ca.ca_cert()}))
                }
                Format::Table => println!(
                    "cluster CA for {:?} in {} (keep ca-key.pem secret)",
                    ca.cluster(),
                    ca.ca_cert().display()
                ),
            }
        }
        CertsCommand::Issue {
            kind,
            name,
            dir,
            san,
            days,
            tenant,
            role,
        } => {
            let ca = CertDir::open(&dir)?;
            let issued = match (kind, tenant, role) {
                (CertKind::Client, Some(tenant), Some(role)) => {
                    if !["reader", "member", "admin", "platform-admin"].contains(&role.as_str()) {
                        return Err(Failure::usage(format!(
                            "--role {role:?} is not one of reader, member, admin, platform-admin"
                        )));
                    }
                    ca.issue_client(&name, &ClientGrant { tenant, role }, &san, days)?
                }
                (_, Some(_), _) | (_, _, Some(_)) => {
                    return Err(Failure::usage(
                        "--tenant and --role are for client certificates",
                    ))
                }
                _ => ca.issue(kind.into(), &name, &san, days)?,
            };
            match format {
                Format::Json => println!(
                    "{}",
                    json!({
                        "identity": issued.identity.to_string(),
                        "cert": issued.cert,
                        "key": issued.key,
                    })
                ),
                Format::Table => println!(
                    "{} for {}: {} (key {})",
                    kind_name(kind),
                    issued.identity,
                    issued.cert.display(),
                    issued.key.display()
                ),
            }
        }
    }
    Ok(0)
}

fn kind_name(kind: CertKind) -> &'static str {
    match kind {
        CertKind::Server => "server certificate",
        CertKind::Agent => "agent certificate",
        CertKind::Client => "client certificate",
    }
}
