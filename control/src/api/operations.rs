//! Update, rollback, operation and revision history requests.

use berth_proto::v1::{
    GetOperationRequest, ListRevisionsRequest, ListRevisionsResponse, Operation,
    RollbackSandboxRequest, UpdateSandboxRequest,
};
use berth_raft::model::update::UpdatePolicy;
use berth_raft::{Command, CommandResponse, NodeError, RaftNode, SandboxRecord};

use super::convert::{operation_to_proto, revision_to_proto};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::validate::{validate_env, validate_image, validate_name, validate_policy};

/// Upper bounds that keep a mistyped duration from parking an update.
const MAX_HEALTH_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

fn gate(request: &UpdateSandboxRequest) -> Result<UpdatePolicy, ApiError> {
    let defaults = UpdatePolicy::default();
    let policy = UpdatePolicy {
        health_timeout_ms: request
            .health_timeout_ms
            .unwrap_or(defaults.health_timeout_ms),
        min_healthy_ms: request.min_healthy_ms.unwrap_or(defaults.min_healthy_ms),
        auto_rollback: !request.no_auto_rollback,
    };
    if policy.health_timeout_ms == 0 || policy.health_timeout_ms > MAX_HEALTH_TIMEOUT_MS {
        return Err(ApiError::Invalid(
            "health timeout must be between 1ms and 24h".to_string(),
        ));
    }
    if policy.min_healthy_ms >= policy.health_timeout_ms {
        return Err(ApiError::Invalid(format!(
            "min-healthy ({} ms) must be shorter than the health timeout ({} ms)",
            policy.min_healthy_ms, policy.health_timeout_ms
        )));
    }
    Ok(policy)
}

fn operation_of(response: CommandResponse) -> Result<Operation, ApiError> {
    match response {
        CommandResponse::Sandbox { record } => record
            .operation
            .as_ref()
            .map(|op| operation_to_proto(&record.name, op))
            .ok_or_else(|| {
                NodeError::Internal("operation missing after commit".to_string()).into()
            }),
        other => Err(NodeError::Internal(format!("unexpected command response {other:?}")).into()),
    }
}

async fn read(node: &RaftNode, name: &str) -> Result<SandboxRecord, ApiError> {
    validate_name(name)?;
    node.read_barrier().await?;
    let state = node.state().read();
    state
        .table
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {name:?} not found")))
}

pub async fn update(node: &RaftNode, request: UpdateSandboxRequest) -> Result<Operation, ApiError> {
    let gate = gate(&request)?;
    if request.image.is_none() && request.policy.is_none() && request.env.is_empty() {
        return Err(ApiError::Invalid(
            "nothing to update: give a new image, policy or env".to_string(),
        ));
    }
    let current = read(node, &request.name).await?;
    let mut spec = current.spec.clone();
    if let Some(image) = &request.image {
        validate_image(image)?;
        spec.image = image.clone();
    }
    if let Some(policy) = &request.policy {
        validate_policy(policy)?;
        spec.policy = Some(policy.clone());
    }
    spec.env.extend(request.env.clone());
    validate_env(&spec.env)?;
    let command = Command::UpdateSandbox {
        name: request.name,
        operation_id: uuid::Uuid::new_v4().to_string(),
        spec,
        expected_revision: request.expected_revision,
        policy: gate,
        at_ms: now_ms(),
    };
    operation_of(node.write(command).await?)
}

pub async fn rollback(
    node: &RaftNode,
    request: RollbackSandboxRequest,
) -> Result<Operation, ApiError> {
    validate_name(&request.name)?;
    let command = Command::RollbackSandbox {
        name: request.name,
        operation_id: uuid::Uuid::new_v4().to_string(),
        to_revision: request.to_revision,
        policy: UpdatePolicy::default(),
        at_ms: now_ms(),
    };
    operation_of(node.write(command).await?)
}

pub async fn get_operation(
    node: &RaftNode,
    request: GetOperationRequest,
) -> Result<Operation, ApiError> {
    let record = read(node, &request.name).await?;
    record
        .operation
        .as_ref()
        .map(|op| operation_to_proto(&record.name, op))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "sandbox {:?} has had no update or rollback",
                request.name
            ))
        })
}

pub async fn list_revisions(
    node: &RaftNode,
    request: ListRevisionsRequest,
) -> Result<ListRevisionsResponse, ApiError> {
    let record = read(node, &request.name).await?;
    Ok(ListRevisionsResponse {
        revisions: record
            .revisions
            .iter()
            .map(|r| revision_to_proto(r, record.revision))
            .collect(),
        current: record.revision,
        stable_revision: record.stable_revision,
    })
}
