//! The replicated state machine's data: sandbox and node records, their
//! revisions and update operations, and the commands that change them. Pure and deterministic: `apply` never reads a
//! clock or a random source; timestamps and ids travel inside the commands.

pub mod auth;
mod command;
pub mod events;
mod node;
mod operation;
mod sandbox;
mod state;
pub mod update;

pub use auth::{AuditEvent, Quota, Role, TenantRecord, TokenRecord, Usage, DEFAULT_TENANT};
pub use command::{
    AuditStamp, Command, CommandResponse, Proposal, Rejection, RejectionKind, RequestRecord,
    MAX_REQUEST_ID_LEN, REQUEST_WINDOW,
};
pub use node::{KeptVolume, NodeRecord};
pub use operation::{Operation, OperationKind, Revision};
pub use sandbox::{volume_name, Desired, Phase, SandboxRecord, SandboxSpec};
pub use state::{Change, State, NO_NODE_MESSAGE, UNSCHEDULED_MESSAGE};
