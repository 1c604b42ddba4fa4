//! The control plane's API errors, and the one place they become gRPC
//! statuses (invariant 8: bad input gets the right code and changes nothing).

use berth_raft::NodeError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request failed validation before anything was proposed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// No credential, or one that proves nothing.
    #[error("{0}")]
    Unauthenticated(String),
    /// A credential that does not allow this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The replicated operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A node agent answered with an error.
    #[error("node agent: {}", .0.message())]
    Agent(#[from] tonic::Status),
}

impl From<crate::secrets::SecretError> for ApiError {
    fn from(e: crate::secrets::SecretError) -> Self {
        ApiError::FailedPrecondition(e.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(msg) => Status::invalid_argument(msg),
            ApiError::NotFound(msg) => Status::not_found(msg),
            ApiError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ApiError::Unavailable(msg) => Status::unavailable(msg),
            ApiError::Unauthenticated(msg) => Status::unauthenticated(msg),
            ApiError::PermissionDenied(msg) => Status::permission_denied(msg),
            ApiError::Agent(status) => {
                let message = format!("node agent: {}", status.message());
                match status.code() {
                    tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded => Status::new(status.code(), message),
                    // The connection to the agent broke mid-call (the agent
                    // died or the network cut it): worth a retry.
                    tonic::Code::Unknown | tonic::Code::Cancelled => Status::unavailable(message),
                    _ => Status::internal(message),
                }
            }
            ApiError::Node(node) => match node {
                NodeError::NotLeader { .. } => Status::unavailable("no leader available"),
                NodeError::Unavailable(msg) | NodeError::NotSent(msg) => Status::unavailable(msg),
                // Only the leader's own actors propose with a term.
                NodeError::StaleTerm(msg) => Status::unavailable(msg),
                NodeError::InvalidArgument(msg) => Status::invalid_argument(msg),
                NodeError::NotFound(msg) => Status::not_found(msg),
                NodeError::AlreadyExists(msg) => Status::already_exists(msg),
                NodeError::FailedPrecondition(msg) => Status::failed_precondition(msg),
                NodeError::ResourceExhausted(msg) => Status::resource_exhausted(msg),
                NodeError::Internal(msg) => {
                    tracing::error!(error = %msg, "internal error");
                    Status::internal("internal error; see the control node's log")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(agent: Status) -> tonic::Code {
        Status::from(ApiError::Agent(agent)).code()
    }

    #[test]
    fn an_agent_call_cut_mid_way_is_worth_a_retry_and_a_real_failure_is_not() {
        assert_eq!(
            code_of(Status::unknown("transport error")),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code_of(Status::cancelled("stream reset")),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code_of(Status::not_found("no such sandbox")),
            tonic::Code::NotFound
        );
        assert_eq!(
            code_of(Status::deadline_exceeded("slow")),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            code_of(Status::internal("engine failed")),
            tonic::Code::Internal
        );
    }
}
