//! The driver seam: how the agent makes sandboxes real on one machine.
//!
//! The session and the data server only see [`Driver`]; the container
//! driver (Docker/Podman API), the kube driver (Pods on a Kubernetes
//! cluster) and the in-memory driver (fast tests and benchmarks)
//! implement it. Every operation is
//! idempotent (a new leader may repeat the last command, invariant 2), and
//! no operation but `remove` without `keep_volume` ever deletes a volume
//! (invariant 4). `pull` only fetches an image: the first step of an update,
//! taken while the old container keeps running.
//!
//! Everything is checked against the sandbox's uid, never only its name: a
//! container of another uid under the name is never touched, and a volume
//! is only mounted or deleted for the uid its labels carry
//! (`Ensure.volume_uid`). A volume that `Ensure.volume_expected` says must
//! exist is never recreated empty: its absence is `VolumeLost`.

use std::pin::Pin;

use berth_proto::agent_v1::{Ensure, ExecOutput, LogChunk, Observed, Remove};
use futures::Stream;

pub mod container_driver;
mod container_exec;
mod container_inventory;
mod container_observed;
pub(crate) mod container_policy;
pub mod engine;
pub mod kube;
mod limits;
pub mod memory_driver;

pub use container_driver::ContainerDriver;
pub use kube::KubeDriver;
pub use memory_driver::MemoryDriver;

/// Output of a command run in a sandbox; the last item carries the exit code.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, DriverError>> + Send>>;
/// A sandbox's log output.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, DriverError>> + Send>>;

/// Runs sandboxes on this node.
#[tonic::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// "container", "kube" or "memory"; sent in `Register.driver`.
    fn kind(&self) -> &'static str;
    /// Everything berth runs on this node, rebuilt from engine state.
    async fn inventory(&self) -> Result<Vec<Observed>, DriverError>;
    /// A number that changes whenever what [`Driver::inventory`] lists may
    /// have changed, if the driver can tell (None: list every time). Equal
    /// numbers read before two listings mean equal listings.
    fn generation(&self) -> Option<u64> {
        None
    }
    /// Make sure `image` is present on this node, pulling it (bounded) if
    /// missing; never touches a container or volume (idempotent).
    async fn pull(&self, image: &str) -> Result<(), DriverError>;
    /// Make the sandbox run this revision with this volume (idempotent),
    /// applying `Ensure.policy` when set.
    async fn ensure(&self, e: &Ensure) -> Result<Observed, DriverError>;
    /// Stop the sandbox; keep its container and volume.
    async fn stop(&self, name: &str, uid: &str) -> Result<Observed, DriverError>;
    /// Remove the container, and the volume unless `keep_volume`.
    async fn remove(&self, r: &Remove) -> Result<Observed, DriverError>;
    /// Run a command in the running sandbox `name` whose uid is `uid`
    /// (any uid when empty).
    async fn exec(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError>;
    /// The output of sandbox `name` with uid `uid`, optionally following it.
    async fn logs(&self, name: &str, uid: &str, follow: bool) -> Result<LogStream, DriverError>;
    /// Bytes used by `volume`; `NotFound` if it does not exist.
    async fn volume_size(&self, volume: &str) -> Result<u64, DriverError>;
    /// How far a pull of `image` in progress is, in one line.
    fn pull_progress(&self, _image: &str) -> Option<String> {
        None
    }
}

/// One error type for all drivers: one variant per failing operation.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("container engine unreachable: {0}")]
    EngineUnreachable(String),
    #[error("image {image:?} not found locally and could not be pulled: {reason}")]
    ImageNotFound { image: String, reason: String },
    #[error("sandbox {name:?} not found on this node")]
    NotFound { name: String },
    #[error("sandbox {name:?} is not running")]
    NotRunning { name: String },
    #[error("sandbox {name:?} here has uid {found:?}, not {expected:?}; left untouched")]
    UidMismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("volume {volume:?} does not belong to sandbox {name:?}; left untouched")]
    ForeignVolume { name: String, volume: String },
    #[error("VolumeLost: the workspace volume {volume:?} of sandbox {name:?} is missing on this node; its data is gone, and berth will not create an empty one in its place (delete the sandbox, or restore the volume under the same name)")]
    VolumeLost { name: String, volume: String },
    #[error("exec failed: {0}")]
    Exec(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("engine {op} failed: {source}")]
    Engine {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("kubernetes {op} failed: {source}")]
    Kube {
        op: &'static str,
        #[source]
        source: Box<::kube::Error>,
    },
}

impl From<DriverError> for tonic::Status {
    fn from(e: DriverError) -> Self {
        let msg = e.to_string();
        match e {
            DriverError::EngineUnreachable(_) => tonic::Status::unavailable(msg),
            DriverError::NotFound { .. } => tonic::Status::not_found(msg),
            DriverError::Invalid(_) => tonic::Status::invalid_argument(msg),
            DriverError::ImageNotFound { .. }
            | DriverError::NotRunning { .. }
            | DriverError::UidMismatch { .. }
            | DriverError::ForeignVolume { .. }
            | DriverError::VolumeLost { .. } => tonic::Status::failed_precondition(msg),
            DriverError::Engine { .. }
            | DriverError::Kube { .. }
            | DriverError::Exec(_)
            | DriverError::Io { .. } => tonic::Status::internal(msg),
        }
    }
}

/// The uid a sandbox's volume is labelled with (`Ensure.volume_uid`, or the
/// sandbox's own uid when unset).
pub fn volume_owner<'a>(volume_uid: &'a str, uid: &'a str) -> &'a str {
    if volume_uid.is_empty() {
        uid
    } else {
        volume_uid
    }
}

/// The sandbox process's env: the sandbox env overlaid by the policy env,
/// sorted (the same for every driver).
pub fn merged_env<'a>(
    e: &'a berth_proto::agent_v1::Ensure,
    policy: Option<&'a berth_proto::policy::Policy>,
) -> std::collections::BTreeMap<&'a str, &'a str> {
    let mut merged: std::collections::BTreeMap<&str, &str> = e
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in policy.map(|p| &p.env).into_iter().flatten() {
        merged.insert(k, v);
    }
    merged
}

/// Container name of a sandbox.
pub fn container_name(sandbox: &str) -> String {
    format!("berth-{sandbox}")
}

/// Reject names that cannot be a container or volume name.
pub fn validate_name(what: &str, name: &str) -> Result<(), DriverError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(DriverError::Invalid(format!(
            "{what} {name:?} must be 1-200 of [A-Za-z0-9_.-], starting alphanumeric"
        )))
    }
}
