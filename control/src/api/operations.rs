//! Update, rollback, operation and revision history requests.

use std::collections::BTreeMap;

use berth_proto::v1::{
    GetOperationRequest, ListRevisionsRequest, ListRevisionsResponse, Operation,
    RollbackSandboxRequest, UpdateSandboxRequest,
};
use berth_raft::model::update::UpdatePolicy;
use berth_raft::{Command, CommandResponse, NodeError, RaftNode, SandboxRecord};

use super::convert::{operation_to_proto, revision_to_proto};
use crate::auth::audit;
use crate::auth::scope::Scope;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::validate::{
    client_proposal, validate_env, validate_image, validate_policy, validate_secret_env,
};
use berth_raft::model::auth::split_key;

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
        ..defaults
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
    // The old revision gets as long to come back as the new one had.
    Ok(UpdatePolicy {
        rollback_timeout_ms: policy.health_timeout_ms,
        ..policy
    })
}

fn operation_of(response: CommandResponse) -> Result<Operation, ApiError> {
    match response {
        CommandResponse::Sandbox { record } => record
            .operation
            .as_ref()
            .map(|op| operation_to_proto(split_key(&record.name).1, op))
            .ok_or_else(|| {
                NodeError::Internal("operation missing after commit".to_string()).into()
            }),
        other => Err(NodeError::Internal(format!("unexpected command response {other:?}")).into()),
    }
}

/// `name` is a key ([`crate::auth::scope::Scope::key`]).
async fn read(node: &RaftNode, name: &str) -> Result<SandboxRecord, ApiError> {
    node.read_barrier().await?;
    let state = node.state().read();
    state
        .table
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {name:?} not found")))
}

pub async fn update(
    node: &RaftNode,
    caller: &Scope,
    request: UpdateSandboxRequest,
    keep_revisions: u32,
) -> Result<Operation, ApiError> {
    let gate = gate(&request)?;
    let nothing = request.image.is_none()
        && request.policy.is_none()
        && request.env.is_empty()
        && request.secret_env.is_empty()
        && request.unset_env.is_empty();
    if nothing {
        return Err(ApiError::Invalid(
            "nothing to update: give a new image, policy, env or env to unset".to_string(),
        ));
    }
    for key in &request.unset_env {
        if request.env.contains_key(key) || request.secret_env.contains_key(key) {
            return Err(ApiError::Invalid(format!(
                "env {key:?} is both set and unset"
            )));
        }
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
    let env: BTreeMap<String, String> = request.env.clone().into_iter().collect();
    let secrets: BTreeMap<String, String> = request.secret_env.clone().into_iter().collect();
    validate_env(&env)?;
    validate_secret_env(&env, &secrets)?;
    // A name set as plain env stops being secret, and the other way round.
    for (name, value) in env {
        spec.secret_env.remove(&name);
        spec.env.insert(name, value);
    }
    for (name, value) in &secrets {
        spec.env.remove(name);
        let sealed = crate::secrets::seal(&current.uid, name, value)?;
        spec.secret_env.insert(name.clone(), sealed);
    }
    for key in &request.unset_env {
        let plain = spec.env.remove(key).is_some();
        let secret = spec.secret_env.remove(key).is_some();
        if !plain && !secret {
            return Err(ApiError::Invalid(format!(
                "env {key:?} is not set on sandbox {:?}",
                request.name
            )));
        }
    }
    validate_env(&spec.env)?;
    let command = Command::UpdateSandbox {
        name: request.name,
        operation_id: berth_proto::entropy::uuid().to_string(),
        spec,
        expected_revision: request.expected_revision,
        policy: gate,
        at_ms: now_ms(),
        keep_revisions,
    };
    operation_of(audit::propose(node, client_proposal(command, request.request_id, caller)?).await?)
}

pub async fn rollback(
    node: &RaftNode,
    caller: &Scope,
    request: RollbackSandboxRequest,
) -> Result<Operation, ApiError> {
    let command = Command::RollbackSandbox {
        name: request.name,
        operation_id: berth_proto::entropy::uuid().to_string(),
        to_revision: request.to_revision,
        policy: UpdatePolicy::default(),
        at_ms: now_ms(),
    };
    operation_of(audit::propose(node, client_proposal(command, request.request_id, caller)?).await?)
}

pub async fn get_operation(
    node: &RaftNode,
    request: GetOperationRequest,
) -> Result<Operation, ApiError> {
    let record = read(node, &request.name).await?;
    record
        .operation
        .as_ref()
        .map(|op| operation_to_proto(split_key(&record.name).1, op))
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
