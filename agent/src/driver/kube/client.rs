//! The agent's connection to the Kubernetes API: configuration (in-cluster
//! by default, or a kubeconfig), the typed APIs of the sandbox namespace,
//! the watch caches of this node's Pods and of berth's claims, and the
//! mapping of API errors to `DriverError`.
//!
//! The caches are fed by kube-runtime watchers (list, then watch from the
//! list's resourceVersion, listing again on `410 Gone`); the inventory is
//! read from them, so a heartbeat costs no API call.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config};

use super::objects::MANAGED;
use crate::driver::DriverError;

/// How long the first list of the caches may take at start-up.
const CACHE_READY: Duration = Duration::from_secs(20);

/// A Kubernetes API error's HTTP code.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Map an API error: transport failures mean the API server is
/// unreachable; the server's own answers are kept for the operator.
pub fn error(op: &'static str, e: kube::Error) -> DriverError {
    match e {
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            DriverError::EngineUnreachable(format!("kubernetes {op}: {e}"))
        }
        source => DriverError::Kube {
            op,
            source: Box::new(source),
        },
    }
}

/// The typed APIs of one namespace.
#[derive(Clone)]
pub struct Apis {
    pub client: Client,
    pub namespace: String,
    pub pods: Api<Pod>,
    pub claims: Api<PersistentVolumeClaim>,
    pub config_maps: Api<ConfigMap>,
    pub secrets: Api<Secret>,
    pub network_policies: Api<NetworkPolicy>,
}

impl Apis {
    /// Connect with `kubeconfig`, else the in-cluster service account.
    pub async fn connect(kubeconfig: Option<&Path>, namespace: &str) -> Result<Self, DriverError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    DriverError::Invalid(format!("--kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        DriverError::Invalid(format!("--kubeconfig {}: {e}", path.display()))
                    })?
            }
            None => Config::incluster().map_err(|e| {
                DriverError::Invalid(format!(
                    "not running in a Kubernetes Pod ({e}); pass --kubeconfig PATH"
                ))
            })?,
        };
        let client = Client::try_from(config)
            .map_err(|e| DriverError::EngineUnreachable(format!("kubernetes client: {e}")))?;
        Ok(Self {
            pods: Api::namespaced(client.clone(), namespace),
            claims: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            network_policies: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_string(),
            client,
        })
    }
}

/// Watch-fed caches of this node's berth Pods and of berth's claims in
/// the namespace; the watchers stop when this is dropped.
pub struct Caches {
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Caches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "kubernetes watch of {what} failed; retrying");
            }
        }
    });
    (reader, task)
}

impl Caches {
    /// Start both watches and wait for their first list.
    pub async fn start(apis: &Apis, node: &str) -> Result<Self, DriverError> {
        let pods_cfg = watcher::Config::default()
            .labels(MANAGED)
            .fields(&format!("spec.nodeName={node}"));
        let (pods, pod_task) = follow(apis.pods.clone(), pods_cfg, "pods");
        let claims_cfg = watcher::Config::default().labels(MANAGED);
        let (claims, claim_task) = follow(apis.claims.clone(), claims_cfg, "claims");
        let caches = Self {
            pods,
            claims,
            tasks: vec![pod_task, claim_task],
        };
        let ready = async {
            caches.pods.wait_until_ready().await.ok();
            caches.claims.wait_until_ready().await.ok();
        };
        tokio::time::timeout(CACHE_READY, ready).await.map_err(|_| {
            DriverError::EngineUnreachable(format!(
                "kubernetes: could not list pods and claims in namespace {:?} within {CACHE_READY:?}",
                apis.namespace
            ))
        })?;
        Ok(caches)
    }
}
