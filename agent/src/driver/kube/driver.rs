//! The kube driver: sandboxes as Pods on a PersistentVolumeClaim, pinned
//! to this agent's node, through the Kubernetes API.
//!
//! Every command is idempotent and re-reads the API before it acts (the
//! caches only feed the inventory). Keeps:
//! - invariant 4: a claim is created once and never replaced; it is
//!   deleted only by `remove` without `keep_volume`, only when its labels
//!   name this sandbox's volume owner, and only with a uid precondition;
//!   a claim that must exist (`volume_expected`) and does not is
//!   `VolumeLost`, never recreated empty;
//! - invariant 5: an update deletes the old Pod and waits until it is gone
//!   (the claim is ReadWriteOnce) before the new Pod is created; Pods are
//!   deleted with a uid precondition, so a Pod recreated meanwhile under
//!   the same name is never hit;
//! - invariant 7: Pods are pinned to the agent's settled node name.
//!
//! Stop deletes the Pod and keeps everything else (Kubernetes has no
//! stopped Pod); the next Ensure makes it again on the same claim.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use berth_proto::agent_v1::{ContainerState, Ensure, Observed, Remove};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::Api;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::client::{code, error, Apis, Caches};
use super::objects::{self, Storage, GRACE_SECONDS, MANAGED};
use super::observe::{self, claim_owner, revision_of, terminating, uid_of};
use crate::driver::{validate_name, volume_owner, DriverError};

/// Longest wait for a deleted Pod to go: its grace period and some.
const GONE_TIMEOUT: Duration = Duration::from_secs(GRACE_SECONDS as u64 + 50);
const POLL: Duration = Duration::from_millis(100);

/// What the agent was told about its cluster.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Namespace of the sandboxes' Pods, claims and policy objects.
    pub namespace: String,
    /// A kubeconfig file; `None`: the in-cluster service account.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The agent's settled node name: Pods are pinned to it.
    pub node: String,
    pub storage: Storage,
    pub pull_timeout: Duration,
}

/// Runs sandboxes as Pods on one Kubernetes node.
pub struct KubeDriver {
    pub(super) apis: Apis,
    pub(super) caches: Caches,
    pub(super) node: String,
    storage: Storage,
    pub(super) pull_timeout: Duration,
    /// Images known to be on this node (pulled by this agent instance).
    pub(super) pulled: Mutex<HashSet<String>>,
    /// Pulls in progress: image -> one line.
    pub(super) pulls: Mutex<std::collections::HashMap<String, String>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeDriver {
    /// Connect to the API server and fill the caches.
    pub async fn connect(config: KubeConfig) -> Result<Self, DriverError> {
        validate_name("node name", &config.node)?;
        let apis = Apis::connect(config.kubeconfig.as_deref(), &config.namespace).await?;
        let caches = Caches::start(&apis, &config.node).await?;
        tracing::info!(namespace = %config.namespace, node = %config.node, "kube driver connected");
        Ok(Self {
            apis,
            caches,
            node: config.node,
            storage: config.storage,
            pull_timeout: config.pull_timeout,
            pulled: Mutex::new(HashSet::new()),
            pulls: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The Pods of sandbox `name` on this node, read from the API.
    pub(super) async fn pods_of(&self, name: &str) -> Result<Vec<Pod>, DriverError> {
        let lp = ListParams::default()
            .labels(MANAGED)
            .fields(&format!("spec.nodeName={}", self.node));
        let list = self
            .apis
            .pods
            .list(&lp)
            .await
            .map_err(|e| error("list pods", e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| observe::sandbox_of(p) == name)
            .collect())
    }

    /// What the API says about sandbox `name` now.
    pub(super) async fn observe(
        &self,
        name: &str,
        volume_hint: &str,
    ) -> Result<Observed, DriverError> {
        let pods = self.pods_of(name).await?;
        let mut o = match observe::current(&pods) {
            Some(pod) => observe::observed_of(pod),
            None => Observed {
                name: name.to_string(),
                state: ContainerState::Absent as i32,
                volume: volume_hint.to_string(),
                ..Observed::default()
            },
        };
        if o.volume.is_empty() {
            o.volume = volume_hint.to_string();
        }
        o.volume_present = !o.volume.is_empty()
            && self
                .apis
                .claims
                .get_opt(&o.volume)
                .await
                .map_err(|e| error("get claim", e))?
                .is_some();
        Ok(o)
    }

    /// Make sure the sandbox's claim exists and is its own.
    async fn ensure_claim(&self, e: &Ensure) -> Result<(), DriverError> {
        let owner = volume_owner(&e.volume_uid, &e.uid);
        let found = self
            .apis
            .claims
            .get_opt(&e.volume)
            .await
            .map_err(|err| error("get claim", err))?;
        let claim = match found {
            Some(claim) => claim,
            None if e.volume_expected => {
                return Err(DriverError::VolumeLost {
                    name: e.name.clone(),
                    volume: e.volume.clone(),
                })
            }
            None => {
                let claim = objects::pvc(e, &self.apis.namespace, &self.node, &self.storage);
                match self
                    .apis
                    .claims
                    .create(&PostParams::default(), &claim)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(sandbox = %e.name, claim = %e.volume, "created workspace claim");
                        return Ok(());
                    }
                    // Made meanwhile (a repeated command): check whose it is.
                    Err(err) if code(&err) == Some(409) => self
                        .apis
                        .claims
                        .get(&e.volume)
                        .await
                        .map_err(|err| error("get claim", err))?,
                    Err(err) => return Err(error("create claim", err)),
                }
            }
        };
        if !owned_by(claim_owner(&claim), &e.name, owner) {
            return Err(DriverError::ForeignVolume {
                name: e.name.clone(),
                volume: e.volume.clone(),
            });
        }
        Ok(())
    }

    /// Delete `pods` (uid preconditions) and wait until all are gone.
    pub(super) async fn delete_pods(&self, pods: &[Pod]) -> Result<(), DriverError> {
        for pod in pods {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            if !terminating(pod) {
                let dp = DeleteParams {
                    grace_period_seconds: Some(GRACE_SECONDS as u32),
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match self.apis.pods.delete(name, &dp).await {
                    Ok(_) => tracing::info!(pod = %name, "deleting pod"),
                    // Gone already, or replaced by another Pod of the name.
                    Err(e) if matches!(code(&e), Some(404 | 409)) => {}
                    Err(e) => return Err(error("delete pod", e)),
                }
            }
            self.wait_gone(name, pod.metadata.uid.as_deref()).await?;
        }
        Ok(())
    }

    /// Wait until Pod `name` with `uid` no longer exists.
    async fn wait_gone(&self, name: &str, uid: Option<&str>) -> Result<(), DriverError> {
        let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
        loop {
            match self.apis.pods.get_opt(name).await {
                Ok(Some(p)) if p.metadata.uid.as_deref() == uid => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(error("get pod", e)),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DriverError::Exec(format!(
                    "pod {name:?} was deleted but is still there after {GONE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Create the revision's policy ConfigMap, env Secret and network
    /// policy as needed; remove those of other revisions.
    async fn apply_revision_objects(
        &self,
        e: &Ensure,
        policy: Option<&berth_proto::policy::Policy>,
    ) -> Result<(), DriverError> {
        let ns = &self.apis.namespace;
        if let Some(cm) = objects::policy_config_map(e, ns) {
            put(&self.apis.config_maps, &cm, "config map").await?;
        }
        if let Some(secret) = objects::env_secret(e, ns) {
            put(&self.apis.secrets, &secret, "secret").await?;
        }
        let np_name = objects::network_policy_name(&e.name);
        match objects::network_policy(e, ns, policy) {
            Some(np) => put(&self.apis.network_policies, &np, "network policy").await?,
            None => delete_opt(&self.apis.network_policies, &np_name, "network policy").await?,
        }
        for revision in self.revisions_of(&e.uid).await? {
            if revision != e.revision {
                self.delete_revision_objects(&e.name, revision).await?;
            }
        }
        Ok(())
    }

    /// Revisions that have policy or env objects for sandbox uid `uid`.
    async fn revisions_of(&self, uid: &str) -> Result<HashSet<u64>, DriverError> {
        let lp = ListParams::default().labels(&format!("{MANAGED},{}={uid}", objects::LABEL_UID));
        let mut revisions = HashSet::new();
        let cms = self
            .apis
            .config_maps
            .list_metadata(&lp)
            .await
            .map_err(|e| error("list config maps", e))?;
        let secrets = self
            .apis
            .secrets
            .list_metadata(&lp)
            .await
            .map_err(|e| error("list secrets", e))?;
        let metas = cms.items.into_iter().map(|o| o.metadata);
        for meta in metas.chain(secrets.items.into_iter().map(|o| o.metadata)) {
            if let Some(r) = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::LABEL_REVISION))
            {
                revisions.insert(r.parse().unwrap_or(0));
            }
        }
        Ok(revisions)
    }

    async fn delete_revision_objects(&self, name: &str, revision: u64) -> Result<(), DriverError> {
        delete_opt(
            &self.apis.config_maps,
            &objects::policy_name(name, revision),
            "config map",
        )
        .await?;
        delete_opt(
            &self.apis.secrets,
            &objects::secret_name(name, revision),
            "secret",
        )
        .await
    }

    async fn create_pod(&self, pod: &Pod, uid: &str) -> Result<(), DriverError> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        for _ in 0..3 {
            match self.apis.pods.create(&PostParams::default(), pod).await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some(409) => {
                    let Some(existing) = self
                        .apis
                        .pods
                        .get_opt(name)
                        .await
                        .map_err(|e| error("get pod", e))?
                    else {
                        continue; // gone meanwhile: create again
                    };
                    if terminating(&existing) {
                        self.wait_gone(name, existing.metadata.uid.as_deref())
                            .await?;
                        continue;
                    }
                    if uid_of(&existing) != uid {
                        return Err(DriverError::UidMismatch {
                            name: name.to_string(),
                            expected: uid.to_string(),
                            found: uid_of(&existing).to_string(),
                        });
                    }
                    return Ok(()); // made by a repeat of this command: adopt it
                }
                Err(e) => return Err(error("create pod", e)),
            }
        }
        Err(DriverError::Exec(format!(
            "pod {name:?} kept conflicting; try again"
        )))
    }

    pub(super) async fn ensure_pod(&self, e: &Ensure) -> Result<Observed, DriverError> {
        validate_name("sandbox name", &e.name)?;
        validate_name("volume name", &e.volume)?;
        if e.image.is_empty() {
            return Err(DriverError::Invalid("image is empty".into()));
        }
        let policy = crate::driver::container_policy::parse(e)?;
        let pod = objects::pod(e, &self.apis.namespace, &self.node, policy.as_ref())
            .map_err(DriverError::Invalid)?;
        let pods = self.pods_of(&e.name).await?;
        let same = |p: &&Pod| uid_of(p) == e.uid && revision_of(p) == e.revision && !terminating(p);
        if pods.iter().any(|p| same(&p)) {
            // Already made: the kubelet restarts it if it exits.
            self.ensure_claim(e).await?;
            return self.observe(&e.name, &e.volume).await;
        }
        // Fetch the new image while the old Pod (if any) still runs.
        self.pull_image(&e.image).await?;
        self.ensure_claim(e).await?;
        if !pods.is_empty() {
            let from: Vec<u64> = pods.iter().map(revision_of).collect();
            tracing::info!(sandbox = %e.name, ?from, revision = e.revision, "replacing pod");
        }
        self.delete_pods(&pods).await?;
        self.apply_revision_objects(e, policy.as_ref()).await?;
        self.create_pod(&pod, &e.uid).await?;
        tracing::info!(sandbox = %e.name, revision = e.revision, image = %e.image, node = %self.node, "pod created");
        self.observe(&e.name, &e.volume).await
    }

    pub(super) async fn stop_pods(&self, name: &str, uid: &str) -> Result<Observed, DriverError> {
        let pods = self.pods_of(name).await?;
        if let Some(other) = pods.iter().find(|p| !uid.is_empty() && uid_of(p) != uid) {
            return Err(DriverError::UidMismatch {
                name: name.to_string(),
                expected: uid.to_string(),
                found: uid_of(other).to_string(),
            });
        }
        let volume = observe::current(&pods)
            .map(|p| observe::observed_of(p).volume)
            .unwrap_or_default();
        self.delete_pods(&pods).await?;
        self.observe(name, &volume).await
    }

    pub(super) async fn remove_all(&self, r: &Remove) -> Result<Observed, DriverError> {
        let pods: Vec<Pod> = self
            .pods_of(&r.name)
            .await?
            .into_iter()
            // Another sandbox of the same name: never touched.
            .filter(|p| r.uid.is_empty() || uid_of(p) == r.uid)
            .collect();
        let volume = if r.volume.is_empty() {
            pods.first()
                .map(|p| observe::observed_of(p).volume)
                .unwrap_or_default()
        } else {
            r.volume.clone()
        };
        self.delete_pods(&pods).await?;
        if !r.uid.is_empty() {
            for revision in self.revisions_of(&r.uid).await? {
                self.delete_revision_objects(&r.name, revision).await?;
            }
        }
        delete_opt(
            &self.apis.network_policies,
            &objects::network_policy_name(&r.name),
            "network policy",
        )
        .await?;
        if !r.keep_volume && !volume.is_empty() {
            self.delete_claim(r, &volume).await?;
        }
        self.observe(&r.name, &volume).await
    }

    /// Delete the claim (its data) if it is this sandbox's.
    async fn delete_claim(&self, r: &Remove, volume: &str) -> Result<(), DriverError> {
        let Some(claim) = self
            .apis
            .claims
            .get_opt(volume)
            .await
            .map_err(|e| error("get claim", e))?
        else {
            return Ok(());
        };
        if !owned_by(
            claim_owner(&claim),
            &r.name,
            volume_owner(&r.volume_uid, &r.uid),
        ) {
            return Err(DriverError::ForeignVolume {
                name: r.name.clone(),
                volume: volume.to_string(),
            });
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: claim.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.apis.claims.delete(volume, &dp).await {
            Ok(_) => {
                tracing::info!(sandbox = %r.name, claim = %volume, "deleted workspace claim");
                Ok(())
            }
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(error("delete claim", e)),
        }
    }
}

/// Whether a claim whose labels say (`owner uid`, `sandbox`) belongs to
/// sandbox `name` with volume owner `uid`: by uid when labelled with one
/// (an adopted claim keeps the uid it was kept from), else by name.
fn owned_by((owner, sandbox): (&str, &str), name: &str, uid: &str) -> bool {
    if owner.is_empty() {
        sandbox.is_empty() || sandbox == name
    } else {
        owner == uid
    }
}

/// Create `object`, or replace it when it exists with other content
/// (retrying on a `409 Conflict` from a concurrent change).
async fn put<K>(api: &Api<K>, object: &K, what: &'static str) -> Result<(), DriverError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    for _ in 0..5 {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(()),
            Err(e) if code(&e) == Some(409) => {}
            Err(e) => return Err(error(what, e)),
        }
        let Some(current) = api.get_opt(&name).await.map_err(|e| error(what, e))? else {
            continue;
        };
        let mut wanted = object.clone();
        wanted.meta_mut().resource_version = current.meta().resource_version.clone();
        let same =
            serde_json::to_value(strip(&current)).ok() == serde_json::to_value(strip(&wanted)).ok();
        if same {
            return Ok(());
        }
        match api.replace(&name, &PostParams::default(), &wanted).await {
            Ok(_) => return Ok(()),
            Err(e) if matches!(code(&e), Some(409 | 404)) => continue,
            Err(e) => return Err(error(what, e)),
        }
    }
    Err(DriverError::Exec(format!(
        "{what} {name:?} kept conflicting; try again"
    )))
}

/// The content of an object without the server's bookkeeping.
fn strip<K: kube::Resource + Serialize + Clone>(object: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            meta.remove(field);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        // The API server turns a Secret's stringData into base64 data.
        if let Some(plain) = o.remove("stringData").and_then(|d| d.as_object().cloned()) {
            use base64::Engine as _;
            let data: serde_json::Map<String, serde_json::Value> = plain
                .into_iter()
                .map(|(k, v)| {
                    let text = v.as_str().unwrap_or_default();
                    (
                        k,
                        base64::engine::general_purpose::STANDARD
                            .encode(text)
                            .into(),
                    )
                })
                .collect();
            o.insert("data".to_string(), data.into());
        }
    }
    v
}

async fn delete_opt<K>(api: &Api<K>, name: &str, what: &'static str) -> Result<(), DriverError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(404) => Ok(()),
        Err(e) => Err(error(what, e)),
    }
}
