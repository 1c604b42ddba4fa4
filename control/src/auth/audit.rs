//! The audit trail. Every client write goes through [`propose`]: the
//! proposal carries the caller (stamped by the API node from the
//! authenticated principal), the state machine keeps one event per call in
//! the replicated, bounded trail (`SandboxEvents` reads it per sandbox),
//! and this node writes one JSON-able record on the `berth::audit` tracing
//! target. Credentials never appear: a principal is `token:<id>`,
//! `cert:<name>` or `insecure`.

use berth_raft::{CommandResponse, NodeError, Proposal, RaftNode};

use super::Principal;

/// Proposes a client's write and records it on `berth::audit`.
pub async fn propose(node: &RaftNode, proposal: Proposal) -> Result<CommandResponse, NodeError> {
    let action = proposal.command.subject();
    let sandbox = proposal.command.sandbox().unwrap_or("").to_string();
    let request_id = proposal.request_id.clone().unwrap_or_default();
    let (principal, tenant) = proposal
        .audit
        .as_ref()
        .map(|a| (a.principal.clone(), a.tenant.clone()))
        .unwrap_or_default();
    let result = node.propose(proposal).await;
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e}"),
    };
    log(
        &principal,
        &tenant,
        &action,
        &sandbox,
        &request_id,
        &outcome,
    );
    result
}

/// Records a change that is not a state-machine command (a membership
/// change, asked by a platform admin or by a joining control node) on
/// `berth::audit`.
pub fn membership<T, E: std::fmt::Display>(
    caller: Option<&Principal>,
    action: &str,
    result: &Result<T, E>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let (principal, tenant) = match caller {
        Some(Principal::Client {
            subject, tenant, ..
        }) => (subject.clone(), tenant.clone()),
        Some(other) => (other.subject(), String::new()),
        None => (String::new(), String::new()),
    };
    log(&principal, &tenant, action, "", "", &outcome);
}

fn log(
    principal: &str,
    tenant: &str,
    action: &str,
    sandbox: &str,
    request_id: &str,
    outcome: &str,
) {
    tracing::info!(
        target: "berth::audit",
        principal = %principal,
        tenant = %tenant,
        action = %action,
        sandbox = %sandbox,
        request_id = %request_id,
        outcome = %outcome,
        "audit"
    );
}
