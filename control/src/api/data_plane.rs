//! Exec, logs and watch: streams the control plane serves for a sandbox.
//! Exec and logs are proxied to the agent of the sandbox's node (its
//! `AgentData` service); watch follows the local state machine.

use std::pin::Pin;
use std::time::Duration;

use berth_proto::agent_v1::agent_data_client::AgentDataClient;
use berth_proto::agent_v1::{exec_output, ExecRequest, LogsRequest};
use berth_proto::v1::{exec_sandbox_output, ExecSandboxOutput, Sandbox, SandboxLogChunk};
use berth_raft::{Phase, RaftNode, SandboxRecord};
use futures::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::Status;

use super::convert::sandbox_to_proto;
use crate::error::ApiError;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The sandbox, which must be Running, and a client for its node's agent.
async fn running_on_agent(
    node: &RaftNode,
    name: &str,
) -> Result<(SandboxRecord, AgentDataClient<Channel>), ApiError> {
    node.read_barrier().await?;
    let (record, addr) = {
        let state = node.state().read();
        let record = state
            .table
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("sandbox {name:?} not found")))?;
        let addr = record
            .node
            .as_deref()
            .and_then(|n| state.table.node(n))
            .map(|n| n.data_addr.clone());
        (record, addr)
    };
    if record.phase != Phase::Running {
        return Err(ApiError::FailedPrecondition(format!(
            "sandbox {name:?} is {} ({}); it must be Running",
            record.phase.as_str(),
            record.message
        )));
    }
    let addr =
        addr.ok_or_else(|| ApiError::FailedPrecondition(format!("sandbox {name:?} has no node")))?;
    let node_name = record.node.as_deref().unwrap_or_default();
    let client = crate::agent_client::connect(node_name, &addr)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok((record, client))
}

pub async fn exec(
    node: &RaftNode,
    name: &str,
    command: Vec<String>,
) -> Result<BoxStream<ExecSandboxOutput>, ApiError> {
    if command.is_empty() || command[0].is_empty() {
        return Err(ApiError::Invalid("exec needs a command".to_string()));
    }
    let (record, mut client) = running_on_agent(node, name).await?;
    let stream = client
        .exec(ExecRequest {
            name: record.name,
            command,
            uid: record.uid,
        })
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|item| {
        item.map(|o| ExecSandboxOutput {
            out: o.out.map(|out| match out {
                exec_output::Out::Stdout(b) => exec_sandbox_output::Out::Stdout(b),
                exec_output::Out::Stderr(b) => exec_sandbox_output::Out::Stderr(b),
                exec_output::Out::ExitCode(c) => exec_sandbox_output::Out::ExitCode(c),
            }),
        })
    })))
}

pub async fn logs(
    node: &RaftNode,
    name: &str,
    follow: bool,
) -> Result<BoxStream<SandboxLogChunk>, ApiError> {
    let (record, mut client) = running_on_agent(node, name).await?;
    let stream = client
        .logs(LogsRequest {
            name: record.name,
            follow,
            uid: record.uid,
        })
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|item| {
        item.map(|c| SandboxLogChunk {
            data: c.data,
            stderr: c.stderr,
        })
    })))
}

/// The sandbox now, then after every visible change; ends on deletion.
pub async fn watch(
    node: std::sync::Arc<RaftNode>,
    name: String,
) -> Result<BoxStream<Sandbox>, ApiError> {
    node.read_barrier().await?;
    let first = node.state().read().table.get(&name).map(sandbox_to_proto);
    let first = first.ok_or_else(|| ApiError::NotFound(format!("sandbox {name:?} not found")))?;
    let stream = futures::stream::unfold(Some(first.clone()), move |last| {
        let node = node.clone();
        let name = name.clone();
        async move {
            let last = last?;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = node.state().read().table.get(&name).map(sandbox_to_proto);
                match now {
                    None => return None,
                    Some(s) if s != last => return Some((Ok(s.clone()), Some(s))),
                    Some(_) => {}
                }
            }
        }
    });
    Ok(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(stream),
    ))
}
