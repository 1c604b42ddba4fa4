//! The tenant a request acts in. A sandbox name from a request becomes a
//! key in the replicated state only through [`Scope::key`], so the tenant
//! always comes from the credential, never from the request body; another
//! tenant's sandbox is simply not found.
//!
//! A platform admin acts in its own tenant, or in the one named by the
//! `berth-tenant` metadata; listing without it shows every tenant.

use berth_raft::model::auth::{sandbox_key, split_key};
use berth_raft::model::Role;

use super::{Principal, TENANT_HEADER};
use crate::error::ApiError;
use crate::validate::validate_name;

#[derive(Debug, Clone)]
pub struct Scope {
    tenant: String,
    role: Role,
    /// A platform admin that named no tenant: lists show every tenant.
    every_tenant: bool,
    subject: String,
}

impl Scope {
    /// The scope of a request the auth layer admitted. Fails closed: a
    /// request with no client principal is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Scope, ApiError> {
        let Some(Principal::Client {
            subject,
            tenant,
            role,
        }) = request.extensions().get::<Principal>()
        else {
            return Err(ApiError::PermissionDenied(
                "this call needs an API client's credential".to_string(),
            ));
        };
        let asked = request
            .metadata()
            .get(TENANT_HEADER)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| ApiError::Invalid(format!("{TENANT_HEADER} is not text")))
            })
            .transpose()?;
        let platform = *role == Role::PlatformAdmin;
        let (tenant, every_tenant) = match asked {
            Some(asked) if asked == *tenant => (asked, false),
            Some(asked) if platform => {
                validate_tenant(&asked)?;
                (asked, false)
            }
            Some(asked) => {
                return Err(ApiError::PermissionDenied(format!(
                    "a token of tenant {tenant} cannot act in tenant {asked}"
                )))
            }
            None => (tenant.clone(), platform),
        };
        Ok(Scope {
            tenant,
            role: *role,
            every_tenant,
            subject: subject.clone(),
        })
    }

    /// The state key of sandbox `name` in this scope's tenant.
    pub fn key(&self, name: &str) -> Result<String, ApiError> {
        validate_name(name)?;
        Ok(sandbox_key(&self.tenant, name))
    }

    /// Whether a listing in this scope shows the sandbox keyed `key`.
    pub fn sees(&self, key: &str) -> bool {
        self.every_tenant || split_key(key).0 == self.tenant
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Whether a listing in this scope shows `tenant`'s tokens.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.every_tenant || tenant == self.tenant
    }

    /// Whether this caller may manage `tenant`'s tokens and read its quota:
    /// its own tenant, or any for a platform admin.
    pub fn may_manage(&self, tenant: &str) -> bool {
        self.role == Role::PlatformAdmin || tenant == self.tenant
    }
}

/// Tenant names follow sandbox names: a DNS label (so a key splits one
/// way only).
pub fn validate_tenant(tenant: &str) -> Result<(), ApiError> {
    validate_name(tenant).map_err(|_| {
        ApiError::Invalid(format!(
            "tenant {tenant:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
        ))
    })
}
