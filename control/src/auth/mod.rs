//! Who is calling, and may they: authentication and authorization of every
//! gRPC call a control node serves.
//!
//! One tower layer ([`layer::AuthLayer`]) sits in front of every service.
//! It asks the authenticator chain ([`chain`]) who the caller is, looks the
//! method up in the one authorization table ([`table`]), and either
//! refuses the call or hands the handler the [`Principal`]. Handlers then
//! scope every sandbox name to the caller's tenant ([`scope::Scope`]).
//!
//! Invariants kept here: fail closed. A method missing from the table is
//! denied; a credential that is presented but bad is refused even if
//! another would have passed; a handler that finds no principal refuses.

pub mod audit;
pub mod bootstrap;
pub mod chain;
pub mod layer;
pub mod scope;
pub mod table;
pub mod token;

use berth_raft::model::{Role, DEFAULT_TENANT};

/// gRPC metadata a platform admin sets to act on another tenant.
pub const TENANT_HEADER: &str = "berth-tenant";

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API client: a bearer token, or a client certificate.
    Client {
        /// `token:<id>` or `cert:<name>` (never a secret).
        subject: String,
        tenant: String,
        role: Role,
    },
    /// Another control node of this cluster (`server.<cluster>.berth`).
    Server,
    /// The node agent of `node` (`agent.<node>.berth`).
    Agent { node: String },
}

impl Principal {
    /// What every caller is on an `--insecure` node.
    pub fn insecure() -> Self {
        Principal::Client {
            subject: "insecure".to_string(),
            tenant: DEFAULT_TENANT.to_string(),
            role: Role::PlatformAdmin,
        }
    }

    /// For logs and audit records.
    pub fn subject(&self) -> String {
        match self {
            Principal::Client { subject, .. } => subject.clone(),
            Principal::Server => "server".to_string(),
            Principal::Agent { node } => format!("agent:{node}"),
        }
    }
}
