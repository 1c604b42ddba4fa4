//! Who may do what, as the replicated state records it: API tokens (only a
//! hash of each secret), tenants with their quotas, and how a sandbox's
//! key in the state carries its tenant.
//!
//! Invariants kept here: a token's secret is never stored, only its
//! SHA-256; a revoked token stays revoked; sandbox names are unique per
//! tenant because the tenant is part of the key.

use serde::{Deserialize, Serialize};

use crate::model::command::is_zero;

/// The tenant of sandboxes created before tenancy existed, of `--insecure`
/// clusters, and of the bootstrap token.
pub const DEFAULT_TENANT: &str = "default";

/// Separates tenant and name in a sandbox's key. Neither a tenant nor a
/// sandbox name may contain it, so a key splits one way only.
const SEPARATOR: char = '.';

/// The key of sandbox `name` of `tenant` in the replicated state:
/// `name` in the default tenant, `tenant.name` in any other.
pub fn sandbox_key(tenant: &str, name: &str) -> String {
    if tenant == DEFAULT_TENANT {
        name.to_string()
    } else {
        format!("{tenant}{SEPARATOR}{name}")
    }
}

/// The tenant and the name a sandbox key stands for.
pub fn split_key(key: &str) -> (&str, &str) {
    match key.split_once(SEPARATOR) {
        Some((tenant, name)) => (tenant, name),
        None => (DEFAULT_TENANT, key),
    }
}

/// What a token may do. Ordered: each role may do what the ones before it
/// may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read its tenant's sandboxes, operations and logs.
    Reader,
    /// Also create, change, exec into and delete them.
    Member,
    /// Also manage its tenant's tokens.
    Admin,
    /// Everything, across tenants: cluster membership, nodes, quotas.
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Member, Role::Admin, Role::PlatformAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform-admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An API token. The secret is shown once, at creation; only its hash is
/// kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id, the first part of the token text.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub tenant: String,
    pub role: Role,
    #[serde(default)]
    pub description: String,
    pub created_at_ms: i64,
    /// Refused from this time on (None: never expires).
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
    /// The one token written to a data dir when the cluster started.
    #[serde(default)]
    pub bootstrap: bool,
}

impl TokenRecord {
    /// Usable at `now_ms`: not revoked and not expired.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// Limits on what one tenant's sandboxes may hold. `None`: unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default)]
    pub max_sandboxes: Option<u64>,
    /// Sum of `resources.cpus` of the current revisions, in thousandths.
    #[serde(default)]
    pub max_cpu_millis: Option<u64>,
    /// Sum of `resources.memory` of the current revisions.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
}

/// A tenant the platform has configured (a tenant without a record has
/// no quota).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub quota: Quota,
}

/// How many audit events the state keeps (oldest evicted first).
pub const AUDIT_WINDOW: usize = 10_000;

/// One client call that went through Raft, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Log index of the entry (orders events and eviction).
    pub index: u64,
    /// Place in the entry's batch (0 unless the entry carried several
    /// proposals; see `Command::Batch`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u32,
    pub at_ms: i64,
    /// `token:<id>`, `cert:<name>` or `insecure`.
    pub principal: String,
    /// The tenant the caller acted in.
    #[serde(default)]
    pub tenant: String,
    /// The sandbox's key, if the call named one.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// The command's kind and subject (`Command::subject`).
    pub action: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub request_id: Option<String>,
    /// `ok`, or the refusal (`NotFound: ...`).
    pub outcome: String,
}

/// What a tenant's sandboxes hold now, as the quota counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub sandboxes: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_tenant_and_name() {
        for (tenant, name) in [("default", "web"), ("team-a", "web"), ("t", "a-b")] {
            let key = sandbox_key(tenant, name);
            assert_eq!(split_key(&key), (tenant, name));
        }
        assert_eq!(sandbox_key("default", "web"), "web");
        assert_ne!(sandbox_key("a", "web"), sandbox_key("b", "web"));
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Reader < Role::Member && Role::Member < Role::Admin);
        assert!(Role::Admin < Role::PlatformAdmin);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn revoked_or_expired_tokens_are_not_valid() {
        let mut token = TokenRecord {
            id: "t".into(),
            secret_sha256: String::new(),
            tenant: "a".into(),
            role: Role::Reader,
            description: String::new(),
            created_at_ms: 0,
            expires_at_ms: Some(100),
            revoked_at_ms: None,
            bootstrap: false,
        };
        assert!(token.is_valid_at(99));
        assert!(!token.is_valid_at(100));
        token.expires_at_ms = None;
        assert!(token.is_valid_at(i64::MAX));
        token.revoked_at_ms = Some(5);
        assert!(!token.is_valid_at(0));
    }
}
