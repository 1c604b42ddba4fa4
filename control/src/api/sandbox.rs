//! `berth.v1.SandboxService`: sandbox lifecycle, data-plane streams, and
//! updates and rollbacks (delegated to `operations.rs`).

use std::sync::Arc;

use berth_proto::v1::sandbox_service_server::SandboxService;
use berth_proto::v1::{AuditEvent, SandboxEventsRequest, SandboxEventsResponse};
use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, DeleteSandboxResponse, ExecSandboxOutput,
    ExecSandboxRequest, GetSandboxRequest, ListSandboxesRequest, ListSandboxesResponse,
    ReadConsistency, Sandbox, SandboxLogChunk, SandboxLogsRequest, StartSandboxRequest,
    StopSandboxRequest, WatchSandboxRequest,
};
use berth_proto::v1::{
    DeleteVolumeRequest, GetOperationRequest, KeptVolume, ListRevisionsRequest,
    ListRevisionsResponse, ListVolumesRequest, ListVolumesResponse, Operation,
    RollbackSandboxRequest, UpdateSandboxRequest,
};
use berth_raft::{Command, CommandResponse, Desired, NodeError, RaftNode};
use tonic::{Request, Response, Status};

use super::convert::{sandbox_to_proto, spec_from_proto};
use super::data_plane::{self, BoxStream};
use super::{operations, volumes};
use crate::auth::audit;
use crate::auth::scope::Scope;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::validate::{
    client_proposal, validate_env, validate_image, validate_policy, validate_secret_env,
    validate_volume_name,
};

pub struct SandboxApi {
    node: Arc<RaftNode>,
    /// Unstable revisions kept per sandbox (0: all).
    keep_revisions: u32,
}

impl SandboxApi {
    pub fn new(node: Arc<RaftNode>, keep_revisions: u32) -> Self {
        Self {
            node,
            keep_revisions,
        }
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

    /// `request.name` is already a key ([`Scope::key`]).
    async fn create(
        &self,
        caller: &Scope,
        request: CreateSandboxRequest,
    ) -> Result<Sandbox, ApiError> {
        let spec = request
            .spec
            .ok_or_else(|| ApiError::Invalid("spec is required".to_string()))?;
        let (mut spec, secrets) = spec_from_proto(spec);
        validate_image(&spec.image)?;
        if let Some(policy) = &spec.policy {
            validate_policy(policy)?;
        }
        validate_env(&spec.env)?;
        validate_secret_env(&spec.env, &secrets)?;
        let uid = berth_proto::entropy::uuid().to_string();
        for (name, value) in &secrets {
            let sealed = crate::secrets::seal(&uid, name, value)?;
            spec.secret_env.insert(name.clone(), sealed);
        }
        let adopt_volume = match request.volume.as_str() {
            "" => None,
            volume => {
                validate_volume_name(volume)?;
                Some(volume.to_string())
            }
        };
        let command = Command::CreateSandbox {
            name: request.name,
            uid,
            spec,
            created_at_ms: now_ms(),
            adopt_volume,
        };
        let proposal = client_proposal(command, request.request_id, caller)?;
        match audit::propose(&self.node, proposal).await? {
            CommandResponse::Sandbox { record } => Ok(sandbox_to_proto(&record)),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: GetSandboxRequest) -> Result<Sandbox, ApiError> {
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

    async fn list(
        &self,
        scope: &Scope,
        request: ListSandboxesRequest,
    ) -> Result<ListSandboxesResponse, ApiError> {
        let after = super::page::start_after(&request.page_token)?;
        self.read_point(request.consistency).await?;
        let state = self.node.state().read();
        let visible = state
            .table
            .iter_after(after.as_deref())
            .filter(|r| scope.sees(&r.name));
        let (page, more) = super::page::take(visible, request.page_size);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => super::page::token_after(&last.name),
            _ => String::new(),
        };
        Ok(ListSandboxesResponse {
            sandboxes: page.into_iter().map(sandbox_to_proto).collect(),
            next_page_token,
        })
    }

    async fn delete(
        &self,
        caller: &Scope,
        request: DeleteSandboxRequest,
    ) -> Result<DeleteSandboxResponse, ApiError> {
        let command = Command::DeleteSandbox {
            name: request.name,
            keep_volume: request.keep_volume,
        };
        let proposal = client_proposal(command, request.request_id, caller)?;
        match audit::propose(&self.node, proposal).await? {
            CommandResponse::Deleted { .. } => Ok(DeleteSandboxResponse { sandbox: None }),
            CommandResponse::Sandbox { record } => Ok(DeleteSandboxResponse {
                sandbox: Some(sandbox_to_proto(&record)),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn set_desired(
        &self,
        caller: &Scope,
        name: String,
        desired: Desired,
        request_id: String,
    ) -> Result<Sandbox, ApiError> {
        let proposal = client_proposal(Command::SetDesired { name, desired }, request_id, caller)?;
        match audit::propose(&self.node, proposal).await? {
            CommandResponse::Sandbox { record } => Ok(sandbox_to_proto(&record)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(response: CommandResponse) -> ApiError {
    NodeError::Internal(format!("unexpected command response {response:?}")).into()
}

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    type ExecSandboxStream = BoxStream<ExecSandboxOutput>;
    type SandboxLogsStream = BoxStream<SandboxLogChunk>;
    type WatchSandboxStream = BoxStream<Sandbox>;
    type WatchEventsStream = BoxStream<berth_proto::v1::LifecycleEvent>;

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_sandbox(
        &self,
        request: Request<CreateSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        let sandbox = self.create(&scope, request).await?;
        tracing::info!(uid = %sandbox.uid, "sandbox created");
        Ok(Response::new(sandbox))
    }

    async fn get_sandbox(
        &self,
        request: Request<GetSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        Ok(Response::new(self.get(request).await?))
    }

    async fn list_sandboxes(
        &self,
        request: Request<ListSandboxesRequest>,
    ) -> Result<Response<ListSandboxesResponse>, Status> {
        let scope = Scope::of(&request)?;
        Ok(Response::new(
            self.list(&scope, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn delete_sandbox(
        &self,
        request: Request<DeleteSandboxRequest>,
    ) -> Result<Response<DeleteSandboxResponse>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        let response = self.delete(&scope, request).await?;
        tracing::info!("sandbox deleted");
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn stop_sandbox(
        &self,
        request: Request<StopSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let scope = Scope::of(&request)?;
        let StopSandboxRequest { name, request_id } = request.into_inner();
        let name = scope.key(&name)?;
        let sandbox = self
            .set_desired(&scope, name, Desired::Stopped, request_id)
            .await?;
        tracing::info!("sandbox stop requested");
        Ok(Response::new(sandbox))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn start_sandbox(
        &self,
        request: Request<StartSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let scope = Scope::of(&request)?;
        let StartSandboxRequest { name, request_id } = request.into_inner();
        let name = scope.key(&name)?;
        let sandbox = self
            .set_desired(&scope, name, Desired::Running, request_id)
            .await?;
        tracing::info!("sandbox start requested");
        Ok(Response::new(sandbox))
    }

    async fn exec_sandbox(
        &self,
        request: Request<ExecSandboxRequest>,
    ) -> Result<Response<Self::ExecSandboxStream>, Status> {
        let scope = Scope::of(&request)?;
        let ExecSandboxRequest { name, command } = request.into_inner();
        let name = scope.key(&name)?;
        // Recorded before it runs; an exec that cannot be recorded does not run.
        let record = Command::RecordExec {
            name: name.clone(),
            command: command.clone(),
        };
        audit::propose(&self.node, client_proposal(record, String::new(), &scope)?)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(
            data_plane::exec(&self.node, &name, command).await?,
        ))
    }

    async fn sandbox_logs(
        &self,
        request: Request<SandboxLogsRequest>,
    ) -> Result<Response<Self::SandboxLogsStream>, Status> {
        let scope = Scope::of(&request)?;
        let SandboxLogsRequest { name, follow } = request.into_inner();
        let name = scope.key(&name)?;
        Ok(Response::new(
            data_plane::logs(&self.node, &name, follow).await?,
        ))
    }

    async fn watch_events(
        &self,
        request: Request<berth_proto::v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let scope = Scope::of(&request)?;
        let request = request.into_inner();
        let key = scope.key(&request.name)?;
        Ok(Response::new(
            super::events::watch(self.node.clone(), key, request.after_seq).await?,
        ))
    }

    async fn watch_sandbox(
        &self,
        request: Request<WatchSandboxRequest>,
    ) -> Result<Response<Self::WatchSandboxStream>, Status> {
        let scope = Scope::of(&request)?;
        let name = scope.key(&request.into_inner().name)?;
        Ok(Response::new(
            data_plane::watch(self.node.clone(), name).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn update_sandbox(
        &self,
        request: Request<UpdateSandboxRequest>,
    ) -> Result<Response<Operation>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        let op = operations::update(&self.node, &scope, request, self.keep_revisions).await?;
        tracing::info!(operation = %op.id, to = op.to_revision, "update started");
        Ok(Response::new(op))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn rollback_sandbox(
        &self,
        request: Request<RollbackSandboxRequest>,
    ) -> Result<Response<Operation>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        let op = operations::rollback(&self.node, &scope, request).await?;
        tracing::info!(operation = %op.id, to = op.to_revision, "rollback requested");
        Ok(Response::new(op))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        Ok(Response::new(
            operations::get_operation(&self.node, request).await?,
        ))
    }

    async fn list_revisions(
        &self,
        request: Request<ListRevisionsRequest>,
    ) -> Result<Response<ListRevisionsResponse>, Status> {
        let scope = Scope::of(&request)?;
        let mut request = request.into_inner();
        request.name = scope.key(&request.name)?;
        Ok(Response::new(
            operations::list_revisions(&self.node, request).await?,
        ))
    }

    async fn sandbox_events(
        &self,
        request: Request<SandboxEventsRequest>,
    ) -> Result<Response<SandboxEventsResponse>, Status> {
        let scope = Scope::of(&request)?;
        let key = scope.key(&request.into_inner().name)?;
        self.node.read_barrier().await.map_err(ApiError::from)?;
        let state = self.node.state().read();
        let events = state
            .table
            .audit_of(&key)
            .map(|e| AuditEvent {
                index: e.index,
                at_unix_ms: e.at_ms,
                principal: e.principal.clone(),
                tenant: e.tenant.clone(),
                action: e.action.clone(),
                detail: e.detail.clone(),
                request_id: e.request_id.clone().unwrap_or_default(),
                outcome: e.outcome.clone(),
            })
            .collect();
        drop(state);
        let lifecycle = super::events::list(&self.node, &key);
        Ok(Response::new(SandboxEventsResponse { events, lifecycle }))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let scope = Scope::of(&request)?;
        Ok(Response::new(volumes::list(&self.node, &scope).await?))
    }

    #[tracing::instrument(skip_all, fields(volume = %request.get_ref().volume))]
    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<KeptVolume>, Status> {
        let scope = Scope::of(&request)?;
        let volume = volumes::delete(&self.node, &scope, request.into_inner()).await?;
        tracing::info!("kept volume deletion requested");
        Ok(Response::new(volume))
    }
}
