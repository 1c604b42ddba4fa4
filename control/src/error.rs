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
    /// The replicated operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A node agent answered with an error.
    #[error("node agent: {}", .0.message())]
    Agent(#[from] tonic::Status),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(msg) => Status::invalid_argument(msg),
            ApiError::NotFound(msg) => Status::not_found(msg),
            ApiError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ApiError::Unavailable(msg) => Status::unavailable(msg),
            ApiError::Agent(status) => {
                let message = format!("node agent: {}", status.message());
                match status.code() {
                    tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::Unavailable => Status::new(status.code(), message),
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
                NodeError::Internal(msg) => {
                    tracing::error!(error = %msg, "internal error");
                    Status::internal("internal error; see the control node's log")
                }
            },
        }
    }
}
