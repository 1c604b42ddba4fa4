//! `berth sandbox ...` commands.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_proto::v1::{
    exec_sandbox_output, CreateSandboxRequest, DeleteSandboxRequest, ExecSandboxRequest,
    GetSandboxRequest, ListSandboxesRequest, SandboxLogsRequest, SandboxSpec, StartSandboxRequest,
    StopSandboxRequest, WatchSandboxRequest,
};
use clap::Subcommand;

use crate::client::{request_id, Control};
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
        /// Secret environment variable K=V, or K=@FILE to read the value
        /// from a file (repeatable): sealed at rest, never shown again.
        #[arg(long = "secret-env", value_name = "K=V|K=@FILE")]
        secret_env: Vec<String>,
        /// Adopt this kept volume as the workspace (see `berth volume list`).
        #[arg(long)]
        volume: Option<String>,
    },
    /// Show one sandbox.
    Get { name: String },
    /// List sandboxes.
    List,
    /// Delete a sandbox: its container and, unless --keep-volume, its workspace.
    Delete {
        name: String,
        /// Keep the workspace volume.
        #[arg(long)]
        keep_volume: bool,
        /// Return once deletion is requested instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a sandbox (its workspace stays).
    Stop { name: String },
    /// Start a stopped sandbox.
    Start { name: String },
    /// Run a command in a running sandbox; exits with the command's code.
    Exec {
        name: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the sandbox's output.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the sandbox and every change of it until it is deleted.
    Watch { name: String },
    /// Update image, policy and/or env in place (same workspace volume).
    Update(crate::operations::UpdateArgs),
    /// Roll back: abort the update in progress, or go back to a revision.
    Rollback {
        name: String,
        /// Revision to go back to (default: the last stable one other than the current).
        #[arg(long)]
        to_revision: Option<u64>,
        /// Follow the rollback to its end; exit non-zero unless it completed.
        #[arg(long)]
        wait: bool,
    },
    /// List the sandbox's revisions.
    History { name: String },
    /// What happened to the sandbox (the last 100 events: scheduled,
    /// started, exited, restarted, update phases, failures with reasons).
    Events {
        name: String,
        /// Keep printing new events as they happen (until interrupted or
        /// the sandbox is deleted).
        #[arg(long, short = 'f', conflicts_with = "audit")]
        follow: bool,
        /// The name's audit trail instead: every call and exec, who made
        /// it, how it ended (also calls about earlier sandboxes of the name).
        #[arg(long)]
        audit: bool,
    },
    /// Everything about one sandbox on one screen: spec and revisions,
    /// placement, container, the operation in flight, the last events, and
    /// why it is not running when it is not.
    Describe { name: String },
}

/// How long `delete` waits for the sandbox's node to remove it.
const DELETE_WAIT: Duration = Duration::from_secs(120);

pub fn parse_env(pairs: &[String]) -> Result<HashMap<String, String>, Failure> {
    let mut env = HashMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--env {pair:?} must be K=V")))?;
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env)
}

/// `--secret-env K=V` or `K=@FILE` (the file's contents, one trailing
/// newline removed).
pub fn parse_secret_env(pairs: &[String]) -> Result<HashMap<String, String>, Failure> {
    let mut env = HashMap::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Failure::usage(format!(
                "--secret-env {key:?} must be K=V or K=@FILE",
                key = pair.split('=').next().unwrap_or("")
            ))
        })?;
        let value = match value.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::usage(format!("--secret-env {key}: cannot read {path}: {e}"))
                })?;
                text.strip_suffix('\n').unwrap_or(&text).to_string()
            }
            None => value.to_string(),
        };
        env.insert(key.to_string(), value);
    }
    Ok(env)
}

pub fn read_policy(path: &PathBuf) -> Result<String, Failure> {
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

/// Runs a sandbox command; returns the process exit code.
pub async fn run(control: Control, format: Format, command: SandboxCommand) -> Result<u8, Failure> {
    let mut client = control.sandboxes();
    match command {
        SandboxCommand::Create {
            name,
            image,
            policy,
            env,
            secret_env,
            volume,
        } => {
            let policy = policy.as_ref().map(read_policy).transpose()?;
            let spec = SandboxSpec {
                image,
                policy,
                env: parse_env(&env)?,
                secret_env: parse_secret_env(&secret_env)?,
            };
            let sandbox = client
                .create_sandbox(CreateSandboxRequest {
                    name,
                    spec: Some(spec),
                    request_id: request_id(),
                    volume: volume.unwrap_or_default(),
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
            let sandboxes = list_all(&mut client).await?;
            output::print_sandboxes(format, &sandboxes, true);
        }
        SandboxCommand::Delete {
            name,
            keep_volume,
            no_wait,
        } => {
            let response = client
                .delete_sandbox(DeleteSandboxRequest {
                    name: name.clone(),
                    keep_volume,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            if response.sandbox.is_some() && !no_wait {
                wait_until_gone(&mut client, &name).await?;
            }
            let state = if response.sandbox.is_some() && no_wait {
                "deleting"
            } else {
                "deleted"
            };
            match format {
                Format::Json => println!("{}", serde_json::json!({ "name": name, "state": state })),
                Format::Table => println!("sandbox {name} {state}"),
            }
        }
        SandboxCommand::Stop { name } => {
            let sandbox = client
                .stop_sandbox(StopSandboxRequest {
                    name,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            output::print_sandboxes(format, &[sandbox], false);
        }
        SandboxCommand::Start { name } => {
            let sandbox = client
                .start_sandbox(StartSandboxRequest {
                    name,
                    request_id: request_id(),
                })
                .await?
                .into_inner();
            output::print_sandboxes(format, &[sandbox], false);
        }
        SandboxCommand::Exec { name, command } => {
            let mut stream = client
                .exec_sandbox(ExecSandboxRequest { name, command })
                .await?
                .into_inner();
            let mut code = None;
            while let Some(out) = stream.message().await? {
                match out.out {
                    Some(exec_sandbox_output::Out::Stdout(b)) => {
                        write_all(&mut std::io::stdout(), &b)
                    }
                    Some(exec_sandbox_output::Out::Stderr(b)) => {
                        write_all(&mut std::io::stderr(), &b)
                    }
                    Some(exec_sandbox_output::Out::ExitCode(c)) => code = Some(c),
                    None => {}
                }
            }
            let code = code.ok_or_else(|| Failure::other("exec ended without an exit code"))?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        SandboxCommand::Logs { name, follow } => {
            let mut stream = client
                .sandbox_logs(SandboxLogsRequest { name, follow })
                .await?
                .into_inner();
            while let Some(chunk) = stream.message().await? {
                if chunk.stderr {
                    write_all(&mut std::io::stderr(), &chunk.data);
                } else {
                    write_all(&mut std::io::stdout(), &chunk.data);
                }
            }
        }
        SandboxCommand::Update(args) => {
            return crate::operations::update(&mut client, format, args).await
        }
        SandboxCommand::Rollback {
            name,
            to_revision,
            wait,
        } => {
            return crate::operations::rollback(&mut client, format, name, to_revision, wait).await
        }
        SandboxCommand::Events {
            name,
            follow: false,
            audit,
        } => {
            let events = client
                .sandbox_events(berth_proto::v1::SandboxEventsRequest { name })
                .await?
                .into_inner();
            if audit {
                crate::output::print_events(format, &events.events);
            } else {
                crate::describe::print_lifecycle(format, &events.lifecycle, true);
            }
        }
        SandboxCommand::Events {
            name, follow: true, ..
        } => {
            let request = berth_proto::v1::WatchEventsRequest { name, after_seq: 0 };
            let mut stream = client.watch_events(request).await?.into_inner();
            let mut header = true;
            while let Some(event) = stream.message().await? {
                crate::describe::print_lifecycle(format, std::slice::from_ref(&event), header);
                header = false;
            }
        }
        SandboxCommand::Describe { name } => {
            return crate::describe::describe(&control, format, name).await;
        }
        SandboxCommand::History { name } => {
            return crate::operations::history(&mut client, format, name).await
        }
        SandboxCommand::Watch { name } => {
            let mut stream = client
                .watch_sandbox(WatchSandboxRequest { name })
                .await?
                .into_inner();
            while let Some(sandbox) = stream.message().await? {
                output::print_watch_line(format, &sandbox);
            }
        }
    }
    Ok(0)
}

fn write_all(out: &mut impl Write, bytes: &[u8]) {
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Sandboxes asked for per page: one response of 100,000 would exceed the
/// client's message limit.
const LIST_PAGE: u32 = 1000;

/// Every sandbox the caller may see, in name order, a page at a time.
async fn list_all(
    client: &mut berth_proto::v1::sandbox_service_client::SandboxServiceClient<crate::client::Chan>,
) -> Result<Vec<berth_proto::v1::Sandbox>, Failure> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sandboxes(ListSandboxesRequest {
                page_size: LIST_PAGE,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        all.extend(page.sandboxes);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

async fn wait_until_gone(
    client: &mut berth_proto::v1::sandbox_service_client::SandboxServiceClient<crate::client::Chan>,
    name: &str,
) -> Result<(), Failure> {
    let deadline = Instant::now() + DELETE_WAIT;
    loop {
        let request = GetSandboxRequest {
            name: name.to_string(),
            consistency: 0,
        };
        match client.get_sandbox(request).await {
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(()),
            Err(status) => return Err(status.into()),
            Ok(sandbox) if Instant::now() > deadline => {
                let sandbox = sandbox.into_inner();
                return Err(Failure {
                    message: format!("sandbox {name} is still Deleting: {}", sandbox.message),
                    code: 5,
                });
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
