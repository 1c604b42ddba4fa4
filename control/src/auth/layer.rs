//! The tower layer in front of every service of a control node: it
//! authenticates the caller, checks the method's entry in the table, and
//! passes the [`Principal`] to the handler in the request's extensions, or
//! answers the call itself with Unauthenticated or PermissionDenied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use berth_raft::model::Role;
use http::{Request, Response};
use tonic::Status;

use super::chain::Chain;
use super::table::{self, Required};
use super::Principal;

/// How a node admits callers.
#[derive(Clone)]
pub enum Admission {
    /// `--insecure`: every caller is a platform admin of the default tenant.
    Insecure,
    /// Authenticate with the chain, then authorize with the table.
    Checked(Chain),
}

impl Admission {
    /// The caller of the method at `path`, if it may call it.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Principal>, Status> {
        let required = table::required(path).ok_or_else(|| {
            Status::permission_denied(format!("{path} is not in the authorization table"))
        })?;
        let chain = match self {
            Admission::Insecure => return Ok(Some(Principal::insecure())),
            Admission::Checked(chain) => chain,
        };
        let principal = chain
            .authenticate(headers, extensions)
            .map_err(Status::unauthenticated)?;
        if required == Required::Anyone {
            return Ok(principal);
        }
        let Some(principal) = principal else {
            return Err(Status::unauthenticated(
                "no credential: pass a token (--token or BERTH_TOKEN) or a client certificate",
            ));
        };
        let allowed = match (required, &principal) {
            (Required::Role(needed), Principal::Client { role, .. }) => *role >= needed,
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
        Err(Status::permission_denied(format!(
            "{path} needs {needs}; the caller is {has}"
        )))
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
        let admitted = self.admission.admit(
            request.uri().path(),
            request.headers(),
            request.extensions(),
        );
        match admitted {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                // The clone is not ready; the ready one serves this call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Err(status) => {
                tracing::info!(
                    target: "berth::audit",
                    method = request.uri().path(),
                    outcome = ?status.code(),
                    reason = status.message(),
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
