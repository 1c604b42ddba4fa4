//! Commands: the only way to change the state machine. The enum is the
//! replicated API; new variants may be added, existing ones never change
//! meaning.

use serde::{Deserialize, Serialize};

use super::auth::{Quota, TenantRecord, TokenRecord};
use super::update::{UpdatePhase, UpdatePolicy};
use super::{Desired, KeptVolume, NodeRecord, Phase, SandboxRecord, SandboxSpec};

/// A state-machine command, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Create a sandbox record. `uid` and `created_at_ms` are chosen by the
    /// node that accepted the request, so applying is deterministic.
    CreateSandbox {
        name: String,
        uid: String,
        spec: SandboxSpec,
        created_at_ms: i64,
        /// Adopt this kept volume as the workspace (placing the sandbox on
        /// its node) instead of making a new one.
        #[serde(default)]
        adopt_volume: Option<String>,
    },
    /// Delete a sandbox: at once if it was never placed, else marked
    /// Deleting until its node has removed it.
    DeleteSandbox {
        name: String,
        #[serde(default)]
        keep_volume: bool,
    },
    /// Ask for the sandbox to run or be stopped.
    SetDesired { name: String, desired: Desired },
    /// Place a sandbox on a node, committed before anything runs there.
    ScheduleSandbox {
        name: String,
        uid: String,
        node: String,
        /// When the leader placed it (for the sandbox's events).
        #[serde(default)]
        at_ms: i64,
    },
    /// Record what the sandbox's actor observed.
    SetSandboxStatus {
        name: String,
        uid: String,
        phase: Phase,
        message: String,
        container_id: String,
        /// When the leader observed it (for the sandbox's events).
        #[serde(default)]
        at_ms: i64,
    },
    /// Forget a sandbox its node has deleted (recording its volume as
    /// kept when it was deleted with `keep_volume`).
    RemoveSandbox {
        name: String,
        uid: String,
        #[serde(default)]
        at_ms: i64,
    },
    /// Delete a kept volume: marked, then removed by its node.
    DeleteVolume { volume: String },
    /// Forget a kept volume its node has removed.
    ForgetVolume { volume: String },
    /// Let the next agent instance that registers as `name` take over.
    ReplaceNode { name: String },
    /// An agent registered (or re-registered) with the leader.
    RegisterNode {
        name: String,
        driver: String,
        data_addr: String,
        cpus: u32,
        memory_bytes: u64,
        at_ms: i64,
        /// The agent's persisted instance id (see `NodeRecord`).
        #[serde(default)]
        instance_id: String,
    },
    /// Start an update to `spec` (a new revision), optionally only if the
    /// sandbox is still at `expected_revision`.
    UpdateSandbox {
        name: String,
        operation_id: String,
        spec: SandboxSpec,
        expected_revision: Option<u64>,
        policy: UpdatePolicy,
        at_ms: i64,
        /// Keep at most this many revisions that are not stable (0: all);
        /// older ones are pruned. Chosen by the proposing node.
        #[serde(default)]
        keep_revisions: u32,
    },
    /// Roll back: abort the update in progress, or go back to `to_revision`
    /// (default: the last stable revision other than the current one).
    RollbackSandbox {
        name: String,
        operation_id: String,
        to_revision: Option<u64>,
        policy: UpdatePolicy,
        at_ms: i64,
    },
    /// Commit an operation's next phase (compare-and-set on `from`), with
    /// the revision switch and stability mark the transition implies.
    AdvanceOperation {
        name: String,
        uid: String,
        operation_id: String,
        from: UpdatePhase,
        to: UpdatePhase,
        reason: String,
        switch_to: Option<u64>,
        mark_stable: Option<u64>,
        at_ms: i64,
    },
    /// Record how far the operation's image pull is (only while Pulling).
    SetOperationProgress {
        name: String,
        uid: String,
        operation_id: String,
        progress: String,
    },
    /// An agent's liveness changed.
    SetNodeReady {
        name: String,
        ready: bool,
        message: String,
        at_ms: i64,
    },
    /// Record a new API token (its secret's hash only). A bootstrap token
    /// is refused once one exists.
    CreateToken { record: TokenRecord },
    /// Revoke a token; it is refused on every node from this entry on.
    RevokeToken { id: String, at_ms: i64 },
    /// Set a tenant's quota (checked when sandboxes are created or updated).
    SetQuota { tenant: String, quota: Quota },
    /// Changes nothing but the audit trail: an exec into sandbox `name`,
    /// recorded before the command runs.
    RecordExec { name: String, command: Vec<String> },
    /// Several proposals committed as one log entry (group commit, see
    /// `node::batch`). Each is applied in order exactly as if it had an
    /// entry of its own; the response is a [`CommandResponse::Batch`].
    /// Only the leader's batcher builds one; a batch never nests.
    Batch { proposals: Vec<Proposal> },
}

/// What is proposed through Raft: a command plus the rules for applying it.
///
/// - `term`: set by the leader's actors to the term their actor tree was
///   started for. The state machine refuses the command unless that is the
///   term of the log entry carrying it, so a deposed leader's actors can
///   never commit anything, not even by forwarding to the new leader.
/// - `request_id`: a client's idempotency key. The state machine remembers
///   the response to each id for a bounded window ([`REQUEST_WINDOW`]
///   requests); a retry with the same id gets the first response and
///   applies nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default)]
    pub request_id: Option<String>,
    /// Who asked, for the audit trail: set by the API node from the
    /// authenticated principal, never from the request.
    #[serde(default)]
    pub audit: Option<AuditStamp>,
    /// W3C `traceparent` of the request, kept on the sandbox it creates
    /// or the operation it begins (observability only: never changes
    /// what is applied).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
}

/// The caller of a client proposal and when the API node accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStamp {
    /// `token:<id>`, `cert:<name>` or `insecure`; never a secret.
    pub principal: String,
    /// The tenant the caller acted in.
    #[serde(default)]
    pub tenant: String,
    pub at_ms: i64,
}

/// How many client request ids the state machine remembers.
pub const REQUEST_WINDOW: usize = 10_000;
/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

impl Proposal {
    /// A command with no term and no request id.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            term: None,
            request_id: None,
            audit: None,
            trace: String::new(),
        }
    }

    /// A command proposed by the actor tree of leadership term `term`.
    pub fn in_term(command: Command, term: u64) -> Self {
        Self {
            term: Some(term),
            ..Self::new(command)
        }
    }

    /// A client's command with its idempotency key.
    pub fn with_request_id(command: Command, request_id: String) -> Self {
        Self {
            request_id: Some(request_id),
            ..Self::new(command)
        }
    }
}

impl From<Command> for Proposal {
    fn from(command: Command) -> Self {
        Self::new(command)
    }
}

impl Command {
    /// The key of the sandbox a client command is about, if any.
    pub fn sandbox(&self) -> Option<&str> {
        match self {
            Command::CreateSandbox { name, .. }
            | Command::DeleteSandbox { name, .. }
            | Command::SetDesired { name, .. }
            | Command::UpdateSandbox { name, .. }
            | Command::RollbackSandbox { name, .. }
            | Command::RecordExec { name, .. } => Some(name),
            _ => None,
        }
    }

    /// What the command is about, to tell a reused request id apart:
    /// the variant and the sandbox or node it names.
    pub fn subject(&self) -> String {
        let (kind, name) = match self {
            Command::CreateSandbox { name, .. } => ("create", name),
            Command::DeleteSandbox { name, .. } => ("delete", name),
            Command::SetDesired { name, .. } => ("set-desired", name),
            Command::ScheduleSandbox { name, .. } => ("schedule", name),
            Command::SetSandboxStatus { name, .. } => ("status", name),
            Command::RemoveSandbox { name, .. } => ("remove", name),
            Command::RegisterNode { name, .. } => ("register-node", name),
            Command::DeleteVolume { volume } => ("delete-volume", volume),
            Command::ForgetVolume { volume } => ("forget-volume", volume),
            Command::ReplaceNode { name } => ("replace-node", name),
            Command::UpdateSandbox { name, .. } => ("update", name),
            Command::RollbackSandbox { name, .. } => ("rollback", name),
            Command::AdvanceOperation { name, .. } => ("advance", name),
            Command::SetNodeReady { name, .. } => ("node-ready", name),
            Command::SetOperationProgress { name, .. } => ("progress", name),
            Command::CreateToken { record } => ("create-token", &record.id),
            Command::RevokeToken { id, .. } => ("revoke-token", id),
            Command::SetQuota { tenant, .. } => ("set-quota", tenant),
            Command::RecordExec { name, .. } => ("exec", name),
            Command::Batch { proposals } => return format!("batch of {}", proposals.len()),
        };
        format!("{kind} {name}")
    }
}

/// A remembered response to a client request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    /// Log index of the entry that first carried the id (orders eviction).
    pub index: u64,
    /// Place in that entry's batch (see [`Command::Batch`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u32,
    /// [`Command::subject`] of that command.
    pub subject: String,
    pub response: CommandResponse,
}

/// Why a command was refused by the state machine (it then changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    AlreadyExists,
    NotFound,
    FailedPrecondition,
    InvalidArgument,
    /// Proposed by an actor tree of another term than the entry's.
    StaleTerm,
    /// Over the tenant's quota.
    ResourceExhausted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// What applying a log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CommandResponse {
    /// Blank and membership entries.
    Applied,
    /// The record after the command.
    Sandbox { record: SandboxRecord },
    /// The record was removed.
    Deleted { name: String },
    /// The node record after the command.
    Node { record: NodeRecord },
    /// The kept volume after the command.
    Volume { volume: KeptVolume },
    /// The kept volume was forgotten.
    VolumeForgotten { volume: String },
    /// The token after the command.
    Token { record: TokenRecord },
    /// The tenant after the command.
    Tenant { record: TenantRecord },
    /// The command was refused and changed nothing.
    Rejected { rejection: Rejection },
    /// The responses to a [`Command::Batch`], in its order.
    Batch { responses: Vec<CommandResponse> },
}

/// For `skip_serializing_if`: the default batch slot is left out, so an
/// entry of one proposal encodes as it always did.
pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl CommandResponse {
    pub(crate) fn rejected(kind: RejectionKind, message: impl Into<String>) -> Self {
        CommandResponse::Rejected {
            rejection: Rejection {
                kind,
                message: message.into(),
            },
        }
    }
}
