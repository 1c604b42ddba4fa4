//! Who may call the Raft transport (AppendEntries, Vote, InstallSnapshot,
//! Forward): with TLS on, only a peer whose certificate names this
//! cluster's server identity. A certificate from the same CA that names an
//! agent or a client is refused, as is a connection without one. Without
//! TLS, anyone who can reach the port (the operator chose that).

use berth_tls::{peer_identities, Identity};
use tonic::{Request, Status};

use crate::error::ApiError;

/// The interceptor in front of the Raft service; `server` is this
/// cluster's server identity when TLS is on.
pub fn raft_peers(
    server: Option<Identity>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(server) = &server else {
            return Ok(request);
        };
        let presented = peer_identities(&request);
        if presented.contains(server) {
            return Ok(request);
        }
        let err = match presented.first() {
            None => ApiError::Unauthenticated(format!(
                "the Raft transport needs a certificate naming {server}"
            )),
            Some(other) => ApiError::PermissionDenied(format!(
                "{other} may not use the Raft transport; only {server} may"
            )),
        };
        Err(err.into())
    }
}
