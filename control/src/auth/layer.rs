//! The tower layer in front of every service of a control node: it
//! authenticates the caller, checks the method's entry in the table, and
//! passes the [`Principal`] to the handler in the request's extensions, or
//! answers the call itself with Unauthenticated or PermissionDenied.
//!
//! Read-your-writes for credentials: a token this node has not heard of may
//! have just been made through another node, so before calling it unknown
//! the layer waits for a linearizable read point and looks again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use berth_raft::model::Role;
use berth_raft::RaftNode;
use http::{Request, Response};
use tonic::Status;

use super::chain::{Chain, Refusal};
use super::table::{self, Required};
use super::Principal;

/// How a node admits callers.
#[derive(Clone)]
pub enum Admission {
    /// `--insecure`: every caller is a platform admin of the default tenant.
    Insecure,
    /// Authenticate with the chain, then authorize with the table; `node`
    /// gives the read point a credential unknown here is looked up after.
    Checked { chain: Chain, node: Arc<RaftNode> },
}

/// Why a call was not admitted at once.
enum Denial {
    Refused(Status),
    /// A credential this node has not applied yet: catch up, ask again.
    CatchUp,
}

impl From<Status> for Denial {
    fn from(status: Status) -> Self {
        Denial::Refused(status)
    }
}

impl Admission {
    /// The caller of the method at `path`, if it may call it. After
    /// `caught_up`, an unknown credential is refused.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        caught_up: bool,
    ) -> Result<Option<Principal>, Denial> {
        let required = table::required(path).ok_or_else(|| {
            Status::permission_denied(format!("{path} is not in the authorization table"))
        })?;
        let chain = match self {
            Admission::Insecure => return Ok(Some(Principal::insecure())),
            Admission::Checked { chain, .. } => chain,
        };
        let principal = match chain.authenticate(headers, extensions) {
            Ok(principal) => principal,
            Err(Refusal::Unknown(_)) if !caught_up => return Err(Denial::CatchUp),
            Err(refusal) => return Err(Status::unauthenticated(refusal.message()).into()),
        };
        if required == Required::Anyone {
            return Ok(principal);
        }
        let Some(principal) = principal else {
            return Err(Status::unauthenticated(
                "no credential: pass a token (--token or BERTH_TOKEN) or a client certificate",
            )
            .into());
        };
        let allowed = match (required, &principal) {
            (
                Required::Role(needed) | Required::RoleOrServer(needed),
                Principal::Client { role, .. },
            ) => *role >= needed,
            (Required::RoleOrServer(_), Principal::Server) => true,
            (Required::Server, Principal::Server) | (Required::Agent, Principal::Agent { .. }) => {
                true
            }
            _ => false,
        };
        if allowed {
            return Ok(Some(principal));
        }
        let needs = match required {
            Required::Role(role) => format!("the {} role", role.as_str()),
            Required::RoleOrServer(role) => {
                format!("the {} role or a control node's certificate", role.as_str())
            }
            Required::Server => "a control node's certificate".to_string(),
            Required::Agent => "a node agent's certificate".to_string(),
            Required::Anyone => "nothing".to_string(),
        };
        let has = match &principal {
            Principal::Client { role, tenant, .. } => {
                format!("{} of tenant {tenant}", display_role(*role))
            }
            other => other.subject(),
        };
        Err(Status::permission_denied(format!("{path} needs {needs}; the caller is {has}")).into())
    }

    /// Waits (bounded by the node's request timeout) until this node has
    /// applied everything committed before now.
    async fn catch_up(&self) {
        if let Admission::Checked { node, .. } = self {
            if let Err(e) = node.read_barrier().await {
                tracing::debug!(error = %e, "could not catch up to check a credential");
            }
        }
    }
}

fn display_role(role: Role) -> &'static str {
    match role {
        Role::Reader => "a reader",
        Role::Member => "a member",
        Role::Admin => "an admin",
        Role::PlatformAdmin => "a platform admin",
    }
}

/// The answer to a refused call, logged on the audit target.
fn refused<R: Default>(path: &str, status: Status) -> Response<R> {
    tracing::info!(
        target: "berth::audit",
        method = path,
        outcome = ?status.code(),
        reason = status.message(),
        "call refused"
    );
    status.into_http()
}

/// The layer; see the module doc.
#[derive(Clone)]
pub struct AuthLayer {
    admission: Arc<Admission>,
}

impl AuthLayer {
    pub fn new(admission: Admission) -> Self {
        Self {
            admission: Arc::new(admission),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    admission: Arc<Admission>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for AuthService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready; the ready one serves this call.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_string();
        let admitted = self
            .admission
            .admit(&path, request.headers(), request.extensions(), false);
        match admitted {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Box::pin(ready.call(request))
            }
            Err(Denial::Refused(status)) => Box::pin(async move { Ok(refused(&path, status)) }),
            Err(Denial::CatchUp) => {
                let admission = self.admission.clone();
                Box::pin(async move {
                    admission.catch_up().await;
                    let again =
                        admission.admit(&path, request.headers(), request.extensions(), true);
                    match again {
                        Ok(principal) => {
                            if let Some(principal) = principal {
                                request.extensions_mut().insert(principal);
                            }
                            ready.call(request).await
                        }
                        Err(Denial::Refused(status)) => Ok(refused(&path, status)),
                        Err(Denial::CatchUp) => Ok(refused(
                            &path,
                            Status::unauthenticated("the credential is not known to this cluster"),
                        )),
                    }
                })
            }
        }
    }
}
