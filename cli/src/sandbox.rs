//! `berth sandbox ...` commands.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, GetSandboxRequest, ListSandboxesRequest,
    SandboxSpec,
};
use clap::Subcommand;

use crate::client::Control;
use crate::output::{self, Format};
use crate::Failure;

/// Policy files larger than this are refused before sending.
const MAX_POLICY_BYTES: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox.
    Create {
        name: String,
        /// OCI image reference: name[:tag][@digest].
        #[arg(long)]
        image: String,
        /// Policy document (YAML file, at most 64 KiB).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Environment variable K=V (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
    },
    /// Show one sandbox.
    Get { name: String },
    /// List sandboxes.
    List,
    /// Delete a sandbox.
    Delete { name: String },
}

fn parse_env(pairs: &[String]) -> Result<HashMap<String, String>, Failure> {
    let mut env = HashMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--env {pair:?} must be K=V")))?;
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env)
}

fn read_policy(path: &PathBuf) -> Result<String, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::usage(format!("cannot read policy file {}: {e}", path.display())))?;
    if meta.len() > MAX_POLICY_BYTES {
        return Err(Failure::usage(format!(
            "policy file {} is {} bytes; the limit is {MAX_POLICY_BYTES} bytes (64 KiB)",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read policy file {}: {e}", path.display())))
}

pub async fn run(control: Control, format: Format, command: SandboxCommand) -> Result<(), Failure> {
    let mut client = control.sandboxes();
    match command {
        SandboxCommand::Create {
            name,
            image,
            policy,
            env,
        } => {
            let policy = policy.as_ref().map(read_policy).transpose()?;
            let spec = SandboxSpec {
                image,
                policy,
                env: parse_env(&env)?,
            };
            let sandbox = client
                .create_sandbox(CreateSandboxRequest {
                    name,
                    spec: Some(spec),
                })
                .await?
                .into_inner();
            output::print_sandboxes(format, &[sandbox], false);
        }
        SandboxCommand::Get { name } => {
            let sandbox = client
                .get_sandbox(GetSandboxRequest {
                    name,
                    consistency: 0,
                })
                .await?
                .into_inner();
            output::print_sandboxes(format, &[sandbox], false);
        }
        SandboxCommand::List => {
            let list = client
                .list_sandboxes(ListSandboxesRequest { consistency: 0 })
                .await?
                .into_inner();
            output::print_sandboxes(format, &list.sandboxes, true);
        }
        SandboxCommand::Delete { name } => {
            client
                .delete_sandbox(DeleteSandboxRequest { name: name.clone() })
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "deleted": name })),
                Format::Table => println!("sandbox {name} deleted"),
            }
        }
    }
    Ok(())
}
