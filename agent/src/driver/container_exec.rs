//! Exec and logs for the container driver: engine output streams mapped to
//! the agent protocol's `ExecOutput` and `LogChunk`. An exec stream always
//! ends with the command's exit code.

use std::time::Duration;

use berth_proto::agent_v1::{exec_output::Out, ExecOutput, LogChunk};
use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::container_driver::ContainerDriver;
use super::container_observed::{engine, is_running, label, LABEL_UID};
use super::{container_name, validate_name, DriverError, ExecStream, LogStream};

/// How long to wait for the engine to report an exit code after the output
/// has ended.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(5);

impl ContainerDriver {
    /// The sandbox's container, if it is there under `name` with `uid`
    /// (any uid when empty): a container of another sandbox is NotFound.
    async fn sandbox_container(
        &self,
        name: &str,
        uid: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, DriverError> {
        validate_name("sandbox name", name)?;
        match self.inspect(name).await? {
            Some(c) if uid.is_empty() || label(&c, LABEL_UID) == uid => Ok(c),
            _ => Err(DriverError::NotFound { name: name.into() }),
        }
    }

    pub(super) async fn exec_stream(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError> {
        if command.is_empty() {
            return Err(DriverError::Invalid("exec command is empty".into()));
        }
        if !is_running(&self.sandbox_container(name, uid).await?) {
            return Err(DriverError::NotRunning { name: name.into() });
        }
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(command),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&container_name(name), config)
            .await
            .map_err(|e| engine("create exec", e))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| engine("start exec", e))?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(DriverError::Exec("exec started detached".into()));
        };
        let (tx, rx) = mpsc::channel(64);
        let docker = self.docker.clone();
        tokio::spawn(async move {
            while let Some(item) = output.next().await {
                let out = match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Ok(ExecOutput {
                            out: Some(Out::Stdout(message.to_vec())),
                        })
                    }
                    Ok(LogOutput::StdErr { message }) => Ok(ExecOutput {
                        out: Some(Out::Stderr(message.to_vec())),
                    }),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(e) => Err(engine("exec output", e)),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
            let code = exit_code(&docker, &exec.id).await;
            let last = code.map(|c| ExecOutput {
                out: Some(Out::ExitCode(c)),
            });
            let _ = tx.send(last).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub(super) async fn log_stream(
        &self,
        name: &str,
        uid: &str,
        follow: bool,
    ) -> Result<LogStream, DriverError> {
        self.sandbox_container(name, uid).await?;
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .build();
        let stream = self
            .docker
            .logs(&container_name(name), Some(opts))
            .filter_map(|item| async move {
                match item {
                    Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk {
                        data: message.to_vec(),
                        stderr: true,
                    })),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok(LogChunk {
                            data: message.to_vec(),
                            stderr: false,
                        }))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(engine("logs", e))),
                }
            });
        Ok(Box::pin(stream))
    }
}

/// The exec's exit code, once the engine reports it finished.
async fn exit_code(docker: &bollard::Docker, exec_id: &str) -> Result<i32, DriverError> {
    let deadline = tokio::time::Instant::now() + EXIT_CODE_WAIT;
    loop {
        let info = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| engine("inspect exec", e))?;
        match (info.running, info.exit_code) {
            (Some(false), Some(code)) | (None, Some(code)) => {
                return Ok(i32::try_from(code).unwrap_or(-1))
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(DriverError::Exec(format!(
                    "exec {exec_id} did not report an exit code within {EXIT_CODE_WAIT:?}"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
