//! `berth token ...`, `berth tenant ...` and `berth whoami`: API tokens and
//! tenant quotas. A token's secret is printed once, by `token create`
//! (`-o json`: under the key `token`); nothing else ever shows it.

use berth_proto::v1::{
    CreateTokenRequest, GetTenantRequest, ListTokensRequest, Quota, RevokeTokenRequest,
    SetQuotaRequest, Tenant, Token, WhoAmIRequest,
};
use clap::Subcommand;
use serde_json::json;

use crate::client::{request_id, Control};
use crate::output::{print_table, Format};
use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is shown once.
    Create {
        /// Tenant of the token (default: your own).
        #[arg(long)]
        tenant: Option<String>,
        /// reader, member, admin or platform-admin (at most your own role).
        #[arg(long)]
        role: String,
        /// Lifetime, like 30s, 15m, 12h or 90d (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Tokens of your tenant (every tenant's for a platform admin).
    List,
    /// Revoke a token by id; it stops working on every node.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Set a tenant's quota (platform admins); 0 or absent: unlimited.
    SetQuota {
        tenant: String,
        #[arg(long)]
        max_sandboxes: Option<u64>,
        /// Total CPUs of the sandboxes' policies (resources.cpus), e.g. 4 or 0.5.
        #[arg(long)]
        max_cpus: Option<f64>,
        /// Total memory of the sandboxes' policies, e.g. 8Gi.
        #[arg(long)]
        max_memory: Option<String>,
    },
    /// A tenant's quota and usage (default: your own).
    Get { tenant: Option<String> },
}

/// Parses `30s`, `15m`, `12h`, `90d` into seconds.
pub fn parse_ttl(text: &str) -> Result<u64, Failure> {
    let bad = || {
        Failure::usage(format!(
            "--ttl {text:?} is not a duration like 30s, 15m, 12h or 90d"
        ))
    };
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(bad()),
        Some(seconds) => Ok(seconds),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn token_json(t: &Token) -> serde_json::Value {
    json!({
        "id": t.id,
        "tenant": t.tenant,
        "role": t.role,
        "description": t.description,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": (t.expires_at_ms != 0).then_some(t.expires_at_ms),
        "revoked_at_ms": (t.revoked_at_ms != 0).then_some(t.revoked_at_ms),
        "bootstrap": t.bootstrap,
    })
}

fn tenant_json(t: &Tenant) -> serde_json::Value {
    let q = t.quota.unwrap_or_default();
    let limit = |v: u64| (v != 0).then_some(v);
    json!({
        "name": t.name,
        "quota": {
            "max_sandboxes": limit(q.max_sandboxes),
            "max_cpu_millis": limit(q.max_cpu_millis),
            "max_memory_bytes": limit(q.max_memory_bytes),
        },
        "usage": {
            "sandboxes": t.sandboxes,
            "cpu_millis": t.cpu_millis,
            "memory_bytes": t.memory_bytes,
        },
    })
}

fn print_tenant(format: Format, t: &Tenant) {
    if let Format::Json = format {
        println!("{}", tenant_json(t));
        return;
    }
    let q = t.quota.unwrap_or_default();
    let limit = |v: u64, show: &dyn Fn(u64) -> String| {
        if v == 0 {
            "unlimited".to_string()
        } else {
            show(v)
        }
    };
    let cpus = |m: u64| format!("{}", m as f64 / 1000.0);
    let mib = |b: u64| format!("{}Mi", b / (1 << 20));
    print_table(&[
        vec!["TENANT".into(), "".into(), "USED".into(), "QUOTA".into()],
        vec![
            t.name.clone(),
            "sandboxes".into(),
            t.sandboxes.to_string(),
            limit(q.max_sandboxes, &|v| v.to_string()),
        ],
        vec![
            "".into(),
            "cpus".into(),
            cpus(t.cpu_millis),
            limit(q.max_cpu_millis, &cpus),
        ],
        vec![
            "".into(),
            "memory".into(),
            mib(t.memory_bytes),
            limit(q.max_memory_bytes, &mib),
        ],
    ]);
}

pub async fn token(control: Control, format: Format, command: TokenCommand) -> Result<u8, Failure> {
    let mut client = control.access();
    match command {
        TokenCommand::Create {
            tenant,
            role,
            ttl,
            description,
        } => {
            let ttl_seconds = ttl.as_deref().map(parse_ttl).transpose()?.unwrap_or(0);
            let made = client
                .create_token(CreateTokenRequest {
                    tenant: tenant.unwrap_or_default(),
                    role,
                    ttl_seconds,
                    description,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            let token = made.token.unwrap_or_default();
            match format {
                Format::Json => {
                    let mut value = token_json(&token);
                    value["token"] = json!(made.secret);
                    println!("{value}");
                }
                Format::Table => {
                    println!("{}", made.secret);
                    eprintln!(
                        "token {} ({} of tenant {}): shown once; keep it secret",
                        token.id, token.role, token.tenant
                    );
                }
            }
        }
        TokenCommand::List => {
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            match format {
                Format::Json => println!(
                    "{}",
                    json!(tokens.iter().map(token_json).collect::<Vec<_>>())
                ),
                Format::Table => {
                    let mut rows = vec![vec![
                        "ID".into(),
                        "TENANT".into(),
                        "ROLE".into(),
                        "STATE".into(),
                        "DESCRIPTION".into(),
                    ]];
                    let now = now_ms();
                    for t in &tokens {
                        let state = if t.revoked_at_ms != 0 {
                            "revoked"
                        } else if t.expires_at_ms != 0 && t.expires_at_ms <= now {
                            "expired"
                        } else {
                            "valid"
                        };
                        rows.push(vec![
                            t.id.clone(),
                            t.tenant.clone(),
                            t.role.clone(),
                            state.into(),
                            t.description.clone(),
                        ]);
                    }
                    print_table(&rows);
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let token = client
                .revoke_token(RevokeTokenRequest {
                    id,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            match format {
                Format::Json => println!("{}", token_json(&token)),
                Format::Table => println!("token {} revoked", token.id),
            }
        }
    }
    Ok(0)
}

pub async fn tenant(
    control: Control,
    format: Format,
    command: TenantCommand,
) -> Result<u8, Failure> {
    let mut client = control.access();
    let tenant = match command {
        TenantCommand::SetQuota {
            tenant,
            max_sandboxes,
            max_cpus,
            max_memory,
        } => {
            let max_cpu_millis = match max_cpus {
                Some(c) if !(c >= 0.0 && c.is_finite()) => {
                    return Err(Failure::usage(format!(
                        "--max-cpus {c} must be a number >= 0"
                    )))
                }
                Some(c) => (c * 1000.0).round() as u64,
                None => 0,
            };
            let max_memory_bytes = match max_memory.as_deref() {
                Some(m) => berth_proto::policy::parse_memory(m)
                    .and_then(|b| u64::try_from(b).ok())
                    .ok_or_else(|| {
                        Failure::usage(format!("--max-memory {m:?} is not a size like 8Gi"))
                    })?,
                None => 0,
            };
            client
                .set_quota(SetQuotaRequest {
                    tenant,
                    quota: Some(Quota {
                        max_sandboxes: max_sandboxes.unwrap_or(0),
                        max_cpu_millis,
                        max_memory_bytes,
                    }),
                    request_id: request_id(),
                })
                .await?
                .into_inner()
        }
        TenantCommand::Get { tenant } => client
            .get_tenant(GetTenantRequest {
                tenant: tenant.unwrap_or_default(),
            })
            .await?
            .into_inner(),
    };
    print_tenant(format, &tenant);
    Ok(0)
}

pub async fn whoami(control: Control, format: Format) -> Result<u8, Failure> {
    let me = control
        .access()
        .who_am_i(WhoAmIRequest {})
        .await?
        .into_inner();
    match format {
        Format::Json => println!(
            "{}",
            json!({"tenant": me.tenant, "role": me.role, "subject": me.subject})
        ),
        Format::Table => println!("{} ({} of tenant {})", me.subject, me.role, me.tenant),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_ttl("30s").unwrap(), 30);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("2h").unwrap(), 7200);
        assert_eq!(parse_ttl("90d").unwrap(), 90 * 86_400);
        for bad in ["", "10", "0s", "h", "5w", "-1s", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
