//! The readiness probe of an update's health gate: the policy's command,
//! run in the sandbox through its agent's data plane; healthy when it
//! exits 0 within a bounded time.

use std::time::Duration;

use berth_proto::agent_v1::{exec_output, ExecRequest};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `command` in sandbox `name` via the agent of node `node` at
/// `data_addr`.
pub async fn run(
    node: &str,
    data_addr: &str,
    name: &str,
    uid: &str,
    command: Vec<String>,
) -> Result<(), String> {
    let attempt = async {
        let mut client = crate::agent_client::connect(node, data_addr).await?;
        let mut stream = client
            .exec(ExecRequest {
                name: name.to_string(),
                command,
                uid: uid.to_string(),
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut code = None;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            if let Some(exec_output::Out::ExitCode(c)) = msg.out {
                code = Some(c);
            }
        }
        match code {
            Some(0) => Ok(()),
            Some(c) => Err(format!("exit code {c}")),
            None => Err("no exit code".to_string()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {PROBE_TIMEOUT:?}")))
}
