//! Applying token and quota commands, and the quota check at admission.
//!
//! Invariants kept here: at most one bootstrap token ever exists; a
//! revoked token is never un-revoked; a tenant's sandboxes never exceed
//! its quota, because the check runs in the state machine, in log order,
//! so two concurrent creates cannot both pass on a stale count.

use super::{not_found, Applied, Change, LogPos, State};
use crate::model::auth::{split_key, AuditEvent, TenantRecord, TokenRecord, Usage, AUDIT_WINDOW};
use crate::model::command::RejectionKind::{AlreadyExists, NotFound, ResourceExhausted};
use crate::model::{AuditStamp, Proposal};
use crate::model::{Command, CommandResponse, SandboxRecord, SandboxSpec};

/// What a spec's policy asks for: (cpu thousandths, memory bytes). A spec
/// without a policy or without resources asks for nothing it declares.
pub(super) fn resources(spec: &SandboxSpec) -> (Option<u64>, Option<u64>) {
    let Some(policy) = spec
        .policy
        .as_deref()
        .and_then(|p| berth_proto::policy::Policy::parse(p).ok())
    else {
        return (None, None);
    };
    let cpu = policy
        .resources
        .cpus
        .map(|c| (c * 1000.0).ceil().max(0.0) as u64);
    let memory = policy
        .resources
        .memory
        .as_deref()
        .and_then(berth_proto::policy::parse_memory)
        .and_then(|m| u64::try_from(m).ok());
    (cpu, memory)
}

impl State {
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// Every token, revoked ones too, ordered by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn insert_token(&mut self, token: TokenRecord) {
        self.tokens.insert(token.id.clone(), token);
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantRecord> {
        self.tenants.get(name)
    }

    /// Tenants with a quota, ordered by name.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantRecord> {
        self.tenants.values()
    }

    pub fn insert_tenant(&mut self, tenant: TenantRecord) {
        self.tenants.insert(tenant.name.clone(), tenant);
    }

    pub fn insert_audit(&mut self, event: AuditEvent) {
        self.audit.insert((event.index, event.slot), event);
    }

    /// The whole audit trail, oldest first.
    pub fn audit(&self) -> impl Iterator<Item = &AuditEvent> {
        self.audit.values()
    }

    /// The audit trail of sandbox `key` (including calls that were
    /// refused, and calls about earlier sandboxes of the same name).
    pub fn audit_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a AuditEvent> {
        self.audit
            .values()
            .filter(move |e| e.sandbox.as_deref() == Some(key))
    }

    /// The event recording `proposal` (applied at `index` with `response`),
    /// and the evictions that keep the trail bounded.
    pub(super) fn audit_changes(
        &self,
        pos: LogPos,
        stamp: &AuditStamp,
        proposal: &Proposal,
        response: &CommandResponse,
    ) -> Vec<Change> {
        let outcome = match response {
            CommandResponse::Rejected { rejection } => {
                format!("{:?}: {}", rejection.kind, rejection.message)
            }
            _ => "ok".to_string(),
        };
        let detail = match &proposal.command {
            Command::RecordExec { command, .. } => command.join(" "),
            _ => String::new(),
        };
        let event = AuditEvent {
            index: pos.0,
            slot: pos.1,
            at_ms: stamp.at_ms,
            principal: stamp.principal.clone(),
            tenant: stamp.tenant.clone(),
            sandbox: proposal.command.sandbox().map(str::to_string),
            action: proposal.command.subject(),
            detail,
            request_id: proposal.request_id.clone(),
            outcome,
        };
        let excess = (self.audit.len() + 1).saturating_sub(AUDIT_WINDOW);
        let mut changes = vec![Change::PutAudit(event)];
        changes.extend(
            self.audit
                .keys()
                .take(excess)
                .map(|i| Change::DeleteAudit(*i)),
        );
        changes
    }

    /// What `tenant`'s sandboxes hold, counting each at its current spec.
    pub fn usage(&self, tenant: &str) -> Usage {
        self.usage.get(tenant).copied().unwrap_or_default()
    }

    /// Adds `record` to its tenant's usage, or takes it away.
    pub(super) fn count_usage(&mut self, record: &SandboxRecord, add: bool) {
        let tenant = split_key(&record.name).0;
        let (cpu, memory) = resources(&record.spec);
        let (cpu, memory) = (cpu.unwrap_or(0), memory.unwrap_or(0));
        if add {
            let usage = self.usage.entry(tenant.to_string()).or_default();
            usage.sandboxes += 1;
            usage.cpu_millis += cpu;
            usage.memory_bytes += memory;
        } else if let Some(usage) = self.usage.get_mut(tenant) {
            usage.sandboxes = usage.sandboxes.saturating_sub(1);
            usage.cpu_millis = usage.cpu_millis.saturating_sub(cpu);
            usage.memory_bytes = usage.memory_bytes.saturating_sub(memory);
            if usage.sandboxes == 0 {
                self.usage.remove(tenant);
            }
        }
    }

    /// Refuses sandbox `key` going from `from` (None: a new sandbox) to
    /// `to` if its tenant's quota would be exceeded. With a CPU or memory
    /// limit, every sandbox must declare that resource in its policy.
    pub(super) fn over_quota(
        &self,
        key: &str,
        from: Option<&SandboxSpec>,
        to: &SandboxSpec,
    ) -> Option<Applied> {
        let tenant = split_key(key).0;
        let quota = &self.tenants.get(tenant)?.quota;
        let usage = self.usage(tenant);
        let (from_cpu, from_memory) = from.map(resources).unwrap_or((Some(0), Some(0)));
        let (to_cpu, to_memory) = resources(to);
        let refuse =
            |msg: String| Some((CommandResponse::rejected(ResourceExhausted, msg), vec![]));
        if let (Some(max), None) = (quota.max_sandboxes, from) {
            if usage.sandboxes + 1 > max {
                return refuse(format!(
                    "tenant {tenant:?} has {} of its quota of {max} sandboxes",
                    usage.sandboxes
                ));
            }
        }
        let checks = [
            (
                "resources.cpus",
                "CPU",
                quota.max_cpu_millis,
                usage.cpu_millis,
                from_cpu,
                to_cpu,
                1000.0,
                "",
            ),
            (
                "resources.memory",
                "memory",
                quota.max_memory_bytes,
                usage.memory_bytes,
                from_memory,
                to_memory,
                1048576.0,
                " MiB",
            ),
        ];
        for (field, what, max, used, before, after, unit, suffix) in checks {
            let Some(max) = max else { continue };
            let Some(after) = after else {
                return refuse(format!(
                    "tenant {tenant:?} has a {what} quota, so the sandbox's policy must set {field}"
                ));
            };
            let total = used - before.unwrap_or(0).min(used) + after;
            if total > max {
                let show = |v: u64| format!("{}{suffix}", v as f64 / unit);
                return refuse(format!(
                    "tenant {tenant:?} would use {} of its {what} quota of {} (in use: {}, asked: {})",
                    show(total),
                    show(max),
                    show(used),
                    show(after)
                ));
            }
        }
        None
    }

    pub(super) fn decide_auth(&self, command: &Command) -> Applied {
        match command {
            Command::CreateToken { record } => {
                if self.tokens.contains_key(&record.id) {
                    let msg = format!("token id {:?} is taken", record.id);
                    return (CommandResponse::rejected(AlreadyExists, msg), vec![]);
                }
                if record.bootstrap && self.tokens.values().any(|t| t.bootstrap) {
                    let msg = "the cluster already has its bootstrap token";
                    return (CommandResponse::rejected(AlreadyExists, msg), vec![]);
                }
                let response = CommandResponse::Token {
                    record: record.clone(),
                };
                (response, vec![Change::PutToken(record.clone())])
            }
            Command::RevokeToken { id, at_ms } => {
                let Some(token) = self.tokens.get(id) else {
                    let msg = format!("no token {id:?} (see `berth token list`)");
                    return (CommandResponse::rejected(NotFound, msg), vec![]);
                };
                let mut token = token.clone();
                token.revoked_at_ms.get_or_insert(*at_ms);
                let response = CommandResponse::Token {
                    record: token.clone(),
                };
                (response, vec![Change::PutToken(token)])
            }
            Command::RecordExec { name, .. } => match self.sandbox(name) {
                Some(_) => (CommandResponse::Applied, vec![]),
                None => not_found(name),
            },
            Command::SetQuota { tenant, quota } => {
                let record = TenantRecord {
                    name: tenant.clone(),
                    quota: quota.clone(),
                };
                let response = CommandResponse::Tenant {
                    record: record.clone(),
                };
                (response, vec![Change::PutTenant(record)])
            }
            _ => (
                CommandResponse::rejected(
                    crate::model::RejectionKind::InvalidArgument,
                    format!("{} is not an auth command", command.subject()),
                ),
                vec![],
            ),
        }
    }
}
