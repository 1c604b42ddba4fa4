//! `berth sandbox update | rollback | history`, and `--wait`: follow the
//! operation phase by phase (a live line on a terminal, plain lines
//! otherwise) and exit 0 only when it ends the way the user asked.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::client::Chan;
use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use berth_proto::v1::{
    ListRevisionsRequest, Operation, OperationPhase, RollbackSandboxRequest, UpdateSandboxRequest,
    WatchSandboxRequest,
};

use crate::client::request_id;
use crate::output::{self, Format};
use crate::sandbox::{parse_env, read_policy};
use crate::Failure;

/// Flags of `berth sandbox update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    pub name: String,
    /// New image reference.
    #[arg(long)]
    pub image: Option<String>,
    /// New policy document (YAML file).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Environment variable K=V to set (repeatable; merged over the current env).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Environment variable to remove (repeatable).
    #[arg(long = "unset-env", value_name = "KEY")]
    pub unset_env: Vec<String>,
    /// Secret environment variable K=V or K=@FILE to set (repeatable).
    #[arg(long = "secret-env", value_name = "K=V|K=@FILE")]
    pub secret_env: Vec<String>,
    /// The new revision must be healthy within this long (e.g. 60s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// ... and keep running this long (e.g. 5s).
    #[arg(long, value_parser = parse_duration)]
    pub min_healthy: Option<Duration>,
    /// Leave a failed update Failed instead of rolling back.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Only update if the sandbox is still at this revision.
    #[arg(long)]
    pub expected_revision: Option<u64>,
    /// Follow the update to its end; exit non-zero unless it Succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// Parses `500ms`, `5s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

pub fn phase_name(phase: i32) -> &'static str {
    match OperationPhase::try_from(phase) {
        Ok(OperationPhase::Pending) => "Pending",
        Ok(OperationPhase::Pulling) => "Pulling",
        Ok(OperationPhase::StoppingOld) => "StoppingOld",
        Ok(OperationPhase::StartingNew) => "StartingNew",
        Ok(OperationPhase::Verifying) => "Verifying",
        Ok(OperationPhase::Succeeded) => "Succeeded",
        Ok(OperationPhase::Aborted) => "Aborted",
        Ok(OperationPhase::RollingBack) => "RollingBack",
        Ok(OperationPhase::RolledBack) => "RolledBack",
        Ok(OperationPhase::Failed) => "Failed",
        Ok(OperationPhase::Unspecified) | Err(_) => "Unknown",
    }
}

pub fn operation_json(op: &Operation) -> serde_json::Value {
    serde_json::json!({
        "id": op.id,
        "kind": op.kind,
        "sandbox": op.sandbox,
        "from_revision": op.from_revision,
        "to_revision": op.to_revision,
        "phase": phase_name(op.phase),
        "attempts": op.attempts,
        "started_at_unix_ms": op.started_at_unix_ms,
        "updated_at_unix_ms": op.updated_at_unix_ms,
        "reason": op.reason,
        "terminal": op.terminal,
        "progress": op.progress,
    })
}

fn print_operation(format: Format, op: &Operation) {
    match format {
        Format::Json => println!("{}", operation_json(op)),
        Format::Table => {
            println!(
                "{} {} of {}: revision {} -> {}: {}",
                op.kind,
                op.id,
                op.sandbox,
                op.from_revision,
                op.to_revision,
                phase_name(op.phase)
            );
            if !op.reason.is_empty() {
                println!("  {}", op.reason);
            }
        }
    }
}

pub async fn update(
    client: &mut SandboxServiceClient<Chan>,
    format: Format,
    args: UpdateArgs,
) -> Result<u8, Failure> {
    let policy = args.policy.as_ref().map(read_policy).transpose()?;
    let env: HashMap<String, String> = parse_env(&args.env)?;
    let request = UpdateSandboxRequest {
        name: args.name.clone(),
        image: args.image,
        policy,
        env,
        expected_revision: args.expected_revision,
        health_timeout_ms: args.health_timeout.map(|d| d.as_millis() as u64),
        min_healthy_ms: args.min_healthy.map(|d| d.as_millis() as u64),
        no_auto_rollback: args.no_auto_rollback,
        request_id: request_id(),
        unset_env: args.unset_env,
        secret_env: crate::sandbox::parse_secret_env(&args.secret_env)?,
    };
    let op = client.update_sandbox(request).await?.into_inner();
    if !args.wait {
        print_operation(format, &op);
        return Ok(0);
    }
    wait(client, format, &op, &[OperationPhase::Succeeded]).await
}

pub async fn rollback(
    client: &mut SandboxServiceClient<Chan>,
    format: Format,
    name: String,
    to_revision: Option<u64>,
    wait_for_end: bool,
) -> Result<u8, Failure> {
    let op = client
        .rollback_sandbox(RollbackSandboxRequest {
            name,
            to_revision,
            request_id: request_id(),
        })
        .await?
        .into_inner();
    if !wait_for_end {
        print_operation(format, &op);
        return Ok(0);
    }
    // A rollback of its own succeeds; an aborted update ends RolledBack or Aborted.
    let success: &[OperationPhase] = if op.kind == "rollback" {
        &[OperationPhase::Succeeded]
    } else {
        &[OperationPhase::RolledBack, OperationPhase::Aborted]
    };
    wait(client, format, &op, success).await
}

/// Follows `op` until it is terminal; 0 if it ends in one of `success`.
async fn wait(
    client: &mut SandboxServiceClient<Chan>,
    format: Format,
    op: &Operation,
    success: &[OperationPhase],
) -> Result<u8, Failure> {
    let live = std::io::stderr().is_terminal() && matches!(format, Format::Table);
    let mut stream = client
        .watch_sandbox(WatchSandboxRequest {
            name: op.sandbox.clone(),
        })
        .await?
        .into_inner();
    let mut last_seen = (-1, String::new());
    let mut last = op.clone();
    while let Some(sandbox) = stream.message().await? {
        let Some(current) = sandbox.operation.filter(|o| o.id == op.id) else {
            continue;
        };
        let seen = (current.phase, current.progress.clone());
        if seen != last_seen {
            last_seen = seen;
            let progress = if current.progress.is_empty() {
                String::new()
            } else {
                format!(" ({})", current.progress)
            };
            let line = format!(
                "{} {}: revision {} -> {}: {}{progress}",
                current.kind,
                current.sandbox,
                current.from_revision,
                current.to_revision,
                phase_name(current.phase)
            );
            match format {
                Format::Json => println!("{}", operation_json(&current)),
                Format::Table if live => {
                    let mut err = std::io::stderr();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                }
                Format::Table => println!("{line}"),
            }
        }
        last = current;
        if last.terminal {
            break;
        }
    }
    if live {
        eprintln!();
    }
    if !last.terminal {
        return Err(Failure::other(format!(
            "sandbox {} was deleted during the operation",
            op.sandbox
        )));
    }
    let ok = success.iter().any(|p| *p as i32 == last.phase);
    if ok {
        if matches!(format, Format::Table) {
            println!("{} {} {}", last.kind, last.id, phase_name(last.phase));
        }
        Ok(0)
    } else {
        Err(Failure::other(format!(
            "{} ended {}: {}",
            last.kind,
            phase_name(last.phase),
            if last.reason.is_empty() {
                "no reason recorded"
            } else {
                &last.reason
            }
        )))
    }
}

pub async fn history(
    client: &mut SandboxServiceClient<Chan>,
    format: Format,
    name: String,
) -> Result<u8, Failure> {
    let list = client
        .list_revisions(ListRevisionsRequest { name })
        .await?
        .into_inner();
    output::print_revisions(format, &list);
    Ok(0)
}
