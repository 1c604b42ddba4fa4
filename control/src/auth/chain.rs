//! The authenticator chain: each authenticator recognises one kind of
//! credential. Adding one (OIDC, say: a JWT in `authorization`, checked
//! against an issuer's keys) means adding a type here and a line in
//! [`Chain::standard`]; no handler changes.
//!
//! Each authenticator answers one of three things: a principal, "no
//! credential of my kind", or "a credential of my kind, and it is bad".
//! The chain returns the first principal and fails closed: a bad
//! credential is refused even when a later authenticator would pass.

use std::sync::Arc;

use berth_raft::model::Role;
use berth_raft::RaftNode;
use berth_tls::{ClientGrant, Identity};
use http::{Extensions, HeaderMap};

use super::{token, Principal};
use crate::clock::now_ms;

/// Why a presented credential was not accepted (the reason never
/// contains the credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It proves nothing.
    Bad(String),
    /// It names something this node has not heard of: it may have been
    /// made through another node and not applied here yet, so the caller
    /// asks again after catching up with the cluster (read-your-writes).
    Unknown(String),
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Refusal::Bad(m) | Refusal::Unknown(m) => m,
        }
    }
}

/// One kind of credential.
pub trait Authenticator: Send + Sync {
    /// `Ok(None)`: no credential of this kind. `Err`: one was presented
    /// and was not accepted.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Option<Principal>, Refusal>;
}

/// Authenticators in order.
#[derive(Clone)]
pub struct Chain(Vec<Arc<dyn Authenticator>>);

impl Chain {
    /// Bearer tokens, then certificates (components' and clients').
    pub fn standard(node: Arc<RaftNode>, cluster: String) -> Self {
        Chain(vec![
            Arc::new(BearerToken { node }),
            Arc::new(Certificate { cluster }),
        ])
    }

    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Option<Principal>, Refusal> {
        for authenticator in &self.0 {
            if let Some(principal) = authenticator.authenticate(headers, extensions)? {
                return Ok(Some(principal));
            }
        }
        Ok(None)
    }
}

/// `authorization: Bearer berth_<id>_<secret>`, checked against the
/// replicated token table as this node has applied it.
struct BearerToken {
    node: Arc<RaftNode>,
}

impl Authenticator for BearerToken {
    fn authenticate(
        &self,
        headers: &HeaderMap,
        _extensions: &Extensions,
    ) -> Result<Option<Principal>, Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let bad = |m: &str| Refusal::Bad(m.to_string());
        let text = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| bad("the authorization header is not `Bearer <token>`"))?;
        let (id, secret) =
            token::parse(text.trim()).ok_or_else(|| bad("the bearer token is malformed"))?;
        let state = self.node.state().read();
        let record = state
            .table
            .token(id)
            .ok_or_else(|| Refusal::Unknown("the token is not known to this cluster".into()))?;
        if !token::matches(record, secret) {
            return Err(bad("the token is not known to this cluster"));
        }
        if let Some(at) = record.revoked_at_ms {
            return Err(Refusal::Bad(format!("token {id} was revoked (at {at} ms)")));
        }
        if !record.is_valid_at(now_ms()) {
            return Err(Refusal::Bad(format!("token {id} has expired")));
        }
        Ok(Some(Principal::Client {
            subject: format!("token:{id}"),
            tenant: record.tenant.clone(),
            role: record.role,
        }))
    }
}

/// The certificate the TLS handshake verified against the cluster CA.
/// A server certificate of this cluster is a control node, an agent
/// certificate that node's agent, a client certificate the tenant and role
/// its subject grants.
struct Certificate {
    cluster: String,
}

impl Authenticator for Certificate {
    fn authenticate(
        &self,
        _headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Option<Principal>, Refusal> {
        let Some(der) = berth_tls::peer_certificate_in(extensions) else {
            return Ok(None);
        };
        let identities = Identity::of_certificate(&der).map_err(|e| Refusal::Bad(e.to_string()))?;
        let Some(identity) = identities.first() else {
            return Err(Refusal::Bad(
                "the client certificate names no berth identity".to_string(),
            ));
        };
        match identity {
            Identity::Server { cluster } if *cluster == self.cluster => Ok(Some(Principal::Server)),
            Identity::Server { cluster } => Err(Refusal::Bad(format!(
                "the certificate is for cluster {cluster:?}, not {:?}",
                self.cluster
            ))),
            Identity::Agent { node } => Ok(Some(Principal::Agent { node: node.clone() })),
            Identity::Client { name } => {
                // A client certificate without a grant only got through the
                // handshake; it proves no tenant or role.
                let Some(grant) = ClientGrant::of_certificate(&der) else {
                    return Ok(None);
                };
                let role = Role::parse(&grant.role).ok_or_else(|| {
                    Refusal::Bad(format!(
                        "client certificate {name:?} grants an unknown role {:?}",
                        grant.role
                    ))
                })?;
                Ok(Some(Principal::Client {
                    subject: format!("cert:{name}"),
                    tenant: grant.tenant,
                    role,
                }))
            }
        }
    }
}
