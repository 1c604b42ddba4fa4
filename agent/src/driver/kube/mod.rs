//! The Kubernetes (k3s) side of node agents: a sandbox becomes Pods on a
//! PersistentVolumeClaim in one namespace, pinned to this agent's node.
//!
//! - [`objects`]: the objects a sandbox revision becomes (pure functions,
//!   validated against the Kubernetes schemas);
//! - [`client`]: configuration, typed APIs and the watch caches;
//! - [`driver`]: ensure, stop and remove, keeping invariants 4, 5 and 7;
//! - [`observe`]: Pod status to `Observed`, and the node's inventory;
//! - [`pull`]: image pulls through a pre-pull Pod;
//! - [`io`]: exec, logs and workspace size.

pub mod client;
pub mod driver;
mod io;
pub mod objects;
pub mod observe;
pub mod pull;

#[cfg(test)]
mod schema_tests;

use berth_proto::agent_v1::{Ensure, Observed, Remove};

pub use driver::{KubeConfig, KubeDriver};

use super::{Driver, DriverError, ExecStream, LogStream};

#[tonic::async_trait]
impl Driver for KubeDriver {
    fn kind(&self) -> &'static str {
        "kube"
    }

    async fn inventory(&self) -> Result<Vec<Observed>, DriverError> {
        let pods = self.caches.pods.state();
        let claims = self.caches.claims.state();
        let pods: Vec<_> = pods.iter().map(AsRef::as_ref).collect();
        let claims: Vec<_> = claims.iter().map(AsRef::as_ref).collect();
        Ok(observe::inventory(&pods, &claims, &self.node))
    }

    async fn pull(&self, image: &str) -> Result<(), DriverError> {
        self.pull_image(image).await
    }

    async fn ensure(&self, e: &Ensure) -> Result<Observed, DriverError> {
        self.ensure_pod(e).await
    }

    async fn stop(&self, name: &str, uid: &str) -> Result<Observed, DriverError> {
        self.stop_pods(name, uid).await
    }

    async fn remove(&self, r: &Remove) -> Result<Observed, DriverError> {
        self.remove_all(r).await
    }

    async fn exec(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError> {
        self.exec_in(name, uid, command).await
    }

    async fn logs(&self, name: &str, uid: &str, follow: bool) -> Result<LogStream, DriverError> {
        self.logs_of(name, uid, follow).await
    }

    async fn volume_size(&self, volume: &str) -> Result<u64, DriverError> {
        self.size_of(volume).await
    }

    fn pull_progress(&self, image: &str) -> Option<String> {
        self.progress(image)
    }
}
