//! The replicated state machine's data: sandbox records and the commands
//! that change them. Pure and deterministic: `apply` never reads a clock or a
//! random source; timestamps and ids travel inside the commands.

mod command;
mod sandbox;
mod table;

pub use command::{Command, CommandResponse, Rejection, RejectionKind};
pub use sandbox::{Phase, SandboxRecord, SandboxSpec};
pub use table::{Change, SandboxTable};
