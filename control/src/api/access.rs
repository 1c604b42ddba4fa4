//! `berth.v1.AccessService`: API tokens and tenant quotas. The table in
//! `auth::table` decides who may call each method; this file decides which
//! tenants a caller may touch: its own, or any for a platform admin.
//!
//! Invariants kept here: a secret is returned once, by the call that made
//! it, and never stored; nobody makes a token with more rights than their
//! own; another tenant's token is not found.

use std::sync::Arc;

use berth_proto::v1::access_service_server::AccessService;
use berth_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, GetTenantRequest, ListTokensRequest,
    ListTokensResponse, Quota as QuotaProto, RevokeTokenRequest, SetQuotaRequest, Tenant, Token,
    WhoAmIRequest, WhoAmIResponse,
};
use berth_raft::model::{Quota, Role, TokenRecord};
use berth_raft::{Command, CommandResponse, NodeError, RaftNode};
use tonic::{Request, Response, Status};

use crate::auth::audit;
use crate::auth::scope::{validate_tenant, Scope};
use crate::auth::token;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::validate::client_proposal;

/// Longest token description.
const MAX_DESCRIPTION: usize = 256;

pub struct AccessApi {
    node: Arc<RaftNode>,
}

impl AccessApi {
    pub fn new(node: Arc<RaftNode>) -> Self {
        Self { node }
    }

    async fn create(
        &self,
        scope: &Scope,
        request: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ApiError> {
        let tenant = match request.tenant.as_str() {
            "" => scope.tenant().to_string(),
            tenant => tenant.to_string(),
        };
        validate_tenant(&tenant)?;
        if !scope.may_manage(&tenant) {
            return Err(ApiError::PermissionDenied(format!(
                "a token of tenant {} cannot make tokens for tenant {tenant}",
                scope.tenant()
            )));
        }
        let role = Role::parse(&request.role).ok_or_else(|| {
            ApiError::Invalid(format!(
                "role {:?} is not one of reader, member, admin, platform-admin",
                request.role
            ))
        })?;
        if role > scope.role() {
            return Err(ApiError::PermissionDenied(format!(
                "a {} cannot make a {} token",
                scope.role().as_str(),
                role.as_str()
            )));
        }
        if request.description.len() > MAX_DESCRIPTION {
            return Err(ApiError::Invalid(format!(
                "description is longer than {MAX_DESCRIPTION} bytes"
            )));
        }
        let now = now_ms();
        let expires = match request.ttl_seconds {
            0 => None,
            ttl => Some(
                i64::try_from(ttl)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .and_then(|ms| now.checked_add(ms))
                    .ok_or_else(|| ApiError::Invalid(format!("ttl of {ttl} s is too long")))?,
            ),
        };
        let (secret, record) = token::mint(&tenant, role, &request.description, now, expires);
        let command = Command::CreateToken {
            record: record.clone(),
        };
        match audit::propose(
            &self.node,
            client_proposal(command, request.request_id, scope)?,
        )
        .await?
        {
            CommandResponse::Token { record: made } if made.id == record.id => {
                Ok(CreateTokenResponse {
                    token: Some(token_to_proto(&made)),
                    secret,
                })
            }
            CommandResponse::Token { record: made } => Err(ApiError::FailedPrecondition(format!(
                "this request id already made token {}; its secret was shown once and cannot be shown again (revoke it if it was lost)",
                made.id
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn revoke(&self, scope: &Scope, request: RevokeTokenRequest) -> Result<Token, ApiError> {
        self.node.read_barrier().await?;
        let visible = self
            .node
            .state()
            .read()
            .table
            .token(&request.id)
            .is_some_and(|t| scope.may_manage(&t.tenant));
        if !visible {
            return Err(ApiError::NotFound(format!(
                "no token {:?} (see `berth token list`)",
                request.id
            )));
        }
        let command = Command::RevokeToken {
            id: request.id,
            at_ms: now_ms(),
        };
        match audit::propose(
            &self.node,
            client_proposal(command, request.request_id, scope)?,
        )
        .await?
        {
            CommandResponse::Token { record } => Ok(token_to_proto(&record)),
            other => Err(unexpected(other)),
        }
    }

    async fn tenant(&self, scope: &Scope, tenant: &str) -> Result<Tenant, ApiError> {
        let tenant = if tenant.is_empty() {
            scope.tenant()
        } else {
            tenant
        };
        validate_tenant(tenant)?;
        if !scope.may_manage(tenant) {
            return Err(ApiError::PermissionDenied(format!(
                "a token of tenant {} cannot read tenant {tenant}",
                scope.tenant()
            )));
        }
        self.node.read_barrier().await?;
        let state = self.node.state().read();
        let quota = state
            .table
            .tenant(tenant)
            .map(|t| t.quota.clone())
            .unwrap_or_default();
        let usage = state.table.usage(tenant);
        Ok(Tenant {
            name: tenant.to_string(),
            quota: Some(quota_to_proto(&quota)),
            sandboxes: usage.sandboxes,
            cpu_millis: usage.cpu_millis,
            memory_bytes: usage.memory_bytes,
        })
    }
}

fn unexpected(response: CommandResponse) -> ApiError {
    NodeError::Internal(format!("unexpected command response {response:?}")).into()
}

fn token_to_proto(t: &TokenRecord) -> Token {
    Token {
        id: t.id.clone(),
        tenant: t.tenant.clone(),
        role: t.role.as_str().to_string(),
        description: t.description.clone(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms.unwrap_or(0),
        revoked_at_ms: t.revoked_at_ms.unwrap_or(0),
        bootstrap: t.bootstrap,
    }
}

fn quota_to_proto(q: &Quota) -> QuotaProto {
    QuotaProto {
        max_sandboxes: q.max_sandboxes.unwrap_or(0),
        max_cpu_millis: q.max_cpu_millis.unwrap_or(0),
        max_memory_bytes: q.max_memory_bytes.unwrap_or(0),
    }
}

fn quota_from_proto(q: &QuotaProto) -> Quota {
    let limit = |v: u64| (v > 0).then_some(v);
    Quota {
        max_sandboxes: limit(q.max_sandboxes),
        max_cpu_millis: limit(q.max_cpu_millis),
        max_memory_bytes: limit(q.max_memory_bytes),
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let scope = Scope::of(&request)?;
        Ok(Response::new(
            self.create(&scope, request.into_inner()).await?,
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let scope = Scope::of(&request)?;
        self.node.read_barrier().await.map_err(ApiError::from)?;
        let state = self.node.state().read();
        let tokens = state
            .table
            .tokens()
            .filter(|t| scope.sees_tenant(&t.tenant))
            .map(token_to_proto)
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let scope = Scope::of(&request)?;
        Ok(Response::new(
            self.revoke(&scope, request.into_inner()).await?,
        ))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let scope = Scope::of(&request)?;
        Ok(Response::new(WhoAmIResponse {
            tenant: scope.tenant().to_string(),
            role: scope.role().as_str().to_string(),
            subject: scope.subject().to_string(),
        }))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let scope = Scope::of(&request)?;
        let SetQuotaRequest {
            tenant,
            quota,
            request_id,
        } = request.into_inner();
        validate_tenant(&tenant)?;
        let quota = quota_from_proto(&quota.unwrap_or_default());
        let command = Command::SetQuota {
            tenant: tenant.clone(),
            quota,
        };
        match audit::propose(&self.node, client_proposal(command, request_id, &scope)?)
            .await
            .map_err(ApiError::from)?
        {
            CommandResponse::Tenant { .. } => {
                Ok(Response::new(self.tenant(&scope, &tenant).await?))
            }
            other => Err(unexpected(other).into()),
        }
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let scope = Scope::of(&request)?;
        let tenant = request.into_inner().tenant;
        Ok(Response::new(self.tenant(&scope, &tenant).await?))
    }
}
