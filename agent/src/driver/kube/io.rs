//! Streams into a Kubernetes sandbox: `exec` over the API server's
//! websocket exec (stdout, stderr, then the exit code from the status
//! channel), `logs` of the sandbox container (optionally followed), and a
//! workspace's size (`du` in the running Pod that mounts it).

use berth_proto::agent_v1::{exec_output, ExecOutput, LogChunk};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, LogParams};
use tokio::io::AsyncReadExt;

use super::client::error;
use super::driver::KubeDriver;
use super::objects::SANDBOX_CONTAINER;
use super::observe::{self, terminating, uid_of};
use crate::driver::{DriverError, ExecStream, LogStream};

/// The exit code a finished exec's status reports.
fn exit_code(status: Option<&Status>) -> Result<i32, DriverError> {
    let Some(status) = status else {
        return Err(DriverError::Exec("the exec ended without a status".into()));
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|c| c.message.as_deref()?.parse().ok());
    code.ok_or_else(|| DriverError::Exec(status.message.clone().unwrap_or_default()))
}

impl KubeDriver {
    /// The Pod that speaks for sandbox `name`, if its uid is `uid` (any
    /// when empty).
    async fn current_pod(&self, name: &str, uid: &str) -> Result<Pod, DriverError> {
        let pods = self.pods_of(name).await?;
        let Some(pod) = observe::current(&pods) else {
            return Err(DriverError::NotFound {
                name: name.to_string(),
            });
        };
        if !uid.is_empty() && uid_of(pod) != uid {
            return Err(DriverError::UidMismatch {
                name: name.to_string(),
                expected: uid.to_string(),
                found: uid_of(pod).to_string(),
            });
        }
        Ok(pod.clone())
    }

    /// The running Pod of sandbox `name` (with uid `uid`, any when empty).
    async fn running_pod(&self, name: &str, uid: &str) -> Result<Pod, DriverError> {
        let pod = self.current_pod(name, uid).await?;
        let pod = &pod;
        let running =
            observe::observed_of(pod).state() == berth_proto::agent_v1::ContainerState::Running;
        if !running || terminating(pod) {
            return Err(DriverError::NotRunning {
                name: name.to_string(),
            });
        }
        Ok(pod.clone())
    }

    pub(super) async fn exec_in(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError> {
        if command.is_empty() {
            return Err(DriverError::Invalid("command is empty".into()));
        }
        let pod = self.running_pod(name, uid).await?;
        let pod_name = pod.metadata.name.unwrap_or_default();
        let params = AttachParams::default()
            .container(SANDBOX_CONTAINER)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut process = self
            .apis
            .pods
            .exec(&pod_name, command, &params)
            .await
            .map_err(|e| error("exec", e))?;
        let (Some(mut stdout), Some(mut stderr), Some(status)) =
            (process.stdout(), process.stderr(), process.take_status())
        else {
            return Err(DriverError::Exec("exec streams unavailable".into()));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let item = tokio::select! {
                    n = stdout.read(&mut out_buf), if out_open => match n {
                        Ok(0) | Err(_) => { out_open = false; continue; }
                        Ok(n) => exec_output::Out::Stdout(out_buf[..n].to_vec()),
                    },
                    n = stderr.read(&mut err_buf), if err_open => match n {
                        Ok(0) | Err(_) => { err_open = false; continue; }
                        Ok(n) => exec_output::Out::Stderr(err_buf[..n].to_vec()),
                    },
                };
                if tx.send(Ok(ExecOutput { out: Some(item) })).await.is_err() {
                    return;
                }
            }
            let last = exit_code(status.await.as_ref()).map(|code| ExecOutput {
                out: Some(exec_output::Out::ExitCode(code)),
            });
            let _ = tx.send(last).await;
            let _ = process.join().await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    pub(super) async fn logs_of(
        &self,
        name: &str,
        uid: &str,
        follow: bool,
    ) -> Result<LogStream, DriverError> {
        let pod = self.current_pod(name, uid).await?;
        let pod = &pod;
        let params = LogParams {
            container: Some(SANDBOX_CONTAINER.to_string()),
            follow,
            ..LogParams::default()
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let reader = self
            .apis
            .pods
            .log_stream(&pod_name, &params)
            .await
            .map_err(|e| error("logs", e))?;
        let lines = reader.lines().map(|line| {
            line.map(|mut text| {
                text.push('\n');
                LogChunk {
                    data: text.into_bytes(),
                    stderr: false,
                }
            })
            .map_err(|source| DriverError::Io {
                op: "read logs",
                source,
            })
        });
        Ok(Box::pin(lines))
    }

    pub(super) async fn size_of(&self, volume: &str) -> Result<u64, DriverError> {
        crate::driver::validate_name("volume name", volume)?;
        if self
            .apis
            .claims
            .get_opt(volume)
            .await
            .map_err(|e| error("get claim", e))?
            .is_none()
        {
            return Err(DriverError::NotFound {
                name: volume.to_string(),
            });
        }
        let mounting = self
            .caches
            .pods
            .state()
            .into_iter()
            .find(|p| observe::observed_of(p).volume == volume && !terminating(p));
        let Some(pod) = mounting else {
            return Err(DriverError::NotRunning {
                name: volume.to_string(),
            });
        };
        let sandbox = observe::sandbox_of(&pod).to_string();
        let mut out = self
            .exec_in(
                &sandbox,
                uid_of(&pod),
                vec!["du".into(), "-sk".into(), "/sandbox".into()],
            )
            .await?;
        let mut text = Vec::new();
        while let Some(item) = out.next().await {
            match item?.out {
                Some(exec_output::Out::Stdout(b)) => text.extend(b),
                Some(exec_output::Out::ExitCode(c)) if c != 0 => {
                    return Err(DriverError::Exec(format!("du exited with code {c}")));
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&text)
            .split_whitespace()
            .next()
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| DriverError::Exec("du printed no size".into()))
    }
}
