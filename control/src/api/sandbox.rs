//! `berth.v1.SandboxService`: create, get, list and delete sandbox records.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::v1::sandbox_service_server::SandboxService;
use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, DeleteSandboxResponse, GetSandboxRequest,
    ListSandboxesRequest, ListSandboxesResponse, ReadConsistency, Sandbox,
};
use berth_raft::{Command, CommandResponse, NodeError, RaftNode};
use tonic::{Request, Response, Status};

use super::convert::{sandbox_to_proto, spec_from_proto};
use crate::error::ApiError;
use crate::validate::{validate_env, validate_image, validate_name, validate_policy};

pub struct SandboxApi {
    node: Arc<RaftNode>,
}

impl SandboxApi {
    pub fn new(node: Arc<RaftNode>) -> Self {
        Self { node }
    }

    /// Waits for a linearizable read point unless the caller accepts a
    /// local, possibly stale, read.
    async fn read_point(&self, consistency: i32) -> Result<(), ApiError> {
        match ReadConsistency::try_from(consistency) {
            Ok(ReadConsistency::Local) => Ok(()),
            Ok(ReadConsistency::Unspecified | ReadConsistency::Linearizable) => {
                Ok(self.node.read_barrier().await?)
            }
            Err(_) => Err(ApiError::Invalid(format!(
                "unknown read consistency {consistency}"
            ))),
        }
    }

    async fn create(&self, request: CreateSandboxRequest) -> Result<Sandbox, ApiError> {
        validate_name(&request.name)?;
        let spec = request
            .spec
            .ok_or_else(|| ApiError::Invalid("spec is required".to_string()))?;
        let spec = spec_from_proto(spec);
        validate_image(&spec.image)?;
        if let Some(policy) = &spec.policy {
            validate_policy(policy)?;
        }
        validate_env(&spec.env)?;
        let command = Command::CreateSandbox {
            name: request.name,
            uid: uuid::Uuid::new_v4().to_string(),
            spec,
            created_at_ms: now_ms(),
        };
        match self.node.write(command).await? {
            CommandResponse::Sandbox { record } => Ok(sandbox_to_proto(&record)),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: GetSandboxRequest) -> Result<Sandbox, ApiError> {
        validate_name(&request.name)?;
        self.read_point(request.consistency).await?;
        let state = self.node.state().read();
        state
            .table
            .get(&request.name)
            .map(sandbox_to_proto)
            .ok_or_else(|| {
                NodeError::NotFound(format!("sandbox {:?} not found", request.name)).into()
            })
    }

    async fn list(&self, request: ListSandboxesRequest) -> Result<ListSandboxesResponse, ApiError> {
        self.read_point(request.consistency).await?;
        let state = self.node.state().read();
        Ok(ListSandboxesResponse {
            sandboxes: state.table.iter().map(sandbox_to_proto).collect(),
        })
    }

    async fn delete(
        &self,
        request: DeleteSandboxRequest,
    ) -> Result<DeleteSandboxResponse, ApiError> {
        validate_name(&request.name)?;
        match self
            .node
            .write(Command::DeleteSandbox { name: request.name })
            .await?
        {
            CommandResponse::Deleted { .. } => Ok(DeleteSandboxResponse {}),
            other => Err(unexpected(other)),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn unexpected(response: CommandResponse) -> ApiError {
    NodeError::Internal(format!("unexpected command response {response:?}")).into()
}

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_sandbox(
        &self,
        request: Request<CreateSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let sandbox = self.create(request.into_inner()).await?;
        tracing::info!(uid = %sandbox.uid, "sandbox created");
        Ok(Response::new(sandbox))
    }

    async fn get_sandbox(
        &self,
        request: Request<GetSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn list_sandboxes(
        &self,
        request: Request<ListSandboxesRequest>,
    ) -> Result<Response<ListSandboxesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn delete_sandbox(
        &self,
        request: Request<DeleteSandboxRequest>,
    ) -> Result<Response<DeleteSandboxResponse>, Status> {
        let response = self.delete(request.into_inner()).await?;
        tracing::info!("sandbox deleted");
        Ok(Response::new(response))
    }
}
