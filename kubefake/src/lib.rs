//! An in-process Kubernetes API server for testing berth's kube driver
//! against the real client (`kube`) over real HTTP, with no cluster.
//!
//! It serves the endpoints the driver uses, in any namespace: Pods (with
//! `log` and websocket `exec`), PersistentVolumeClaims, ConfigMaps,
//! Secrets and NetworkPolicies; list and get, create, replace and delete
//! (with preconditions), and watches with resourceVersions. It keeps the
//! API's rules the driver must cope with: `409 AlreadyExists`, `409
//! Conflict` on a stale resourceVersion or uid precondition, `404`, and
//! `410 Gone` for a watch that starts before the kept history. Tests can
//! inject any error status ([`FakeApi::fail`]).
//!
//! A fake kubelet ([`kubelet`]) runs the Pods; a claim's data lives in a
//! directory per PVC, where `exec` runs commands as local processes (the
//! workspace is their working directory and stands in for arguments under
//! `/sandbox`; the Pod's env is theirs, secrets resolved from Secret
//! objects). Loopback only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;

mod http;
pub mod kubelet;
mod store;

pub use kubelet::Image;
use store::Store;
pub use store::{matches_fields, matches_labels, ApiError, Key, Resource};

/// A failure to inject: the next `times` requests with this method on
/// this resource answer `code`.
#[derive(Debug, Clone)]
struct Fault {
    method: String,
    plural: String,
    code: u16,
    times: usize,
}

/// State shared by the HTTP handlers and the fake kubelet.
pub struct Shared {
    store: Mutex<Store>,
    images: Mutex<HashMap<String, Image>>,
    root: tempfile::TempDir,
    logs: Mutex<HashMap<Key, Vec<String>>>,
    log_lines: broadcast::Sender<(Key, String)>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<String>>,
    /// Pods created while another Pod still held their claim.
    overlaps: Mutex<Vec<String>>,
    /// Bumped to end every open watch (clients reconnect).
    watch_epoch: tokio::sync::watch::Sender<u64>,
}

/// The claim a Pod mounts, if any.
pub fn claim_of(pod: &Value) -> Option<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| v.pointer("/persistentVolumeClaim/claimName"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.store().get(key).cloned()
    }

    /// The object exists and is not being deleted.
    pub fn alive(&self, key: &Key) -> bool {
        self.store()
            .get(key)
            .is_some_and(|o| o["metadata"]["deletionTimestamp"].is_null())
    }

    pub fn modify(&self, key: &Key, change: impl FnOnce(&mut Value)) -> Option<Value> {
        self.store().modify(key, change)
    }

    /// Set a live Pod's status; false once it is gone or terminating.
    pub fn set_status(&self, key: &Key, status: Value) -> bool {
        let mut store = self.store();
        let live = store
            .get(key)
            .is_some_and(|o| o["metadata"]["deletionTimestamp"].is_null());
        live && store.modify(key, |pod| pod["status"] = status).is_some()
    }

    pub fn image(&self, name: &str) -> Option<Image> {
        lock(&self.images).get(name).cloned()
    }

    /// The directory holding the data of claim `claim`.
    pub fn workspace(&self, namespace: &str, claim: &str) -> PathBuf {
        self.root.path().join(namespace).join(claim)
    }

    pub fn log(&self, key: &Key, line: String) {
        lock(&self.logs)
            .entry(key.clone())
            .or_default()
            .push(line.clone());
        let _ = self.log_lines.send((key.clone(), line));
    }

    /// Remove a terminated Pod for good.
    pub fn finish_delete(&self, key: &Key) {
        self.store().remove(key);
        lock(&self.logs).remove(key);
    }

    fn fault(&self, method: &str, plural: &str) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let i = faults
            .iter()
            .position(|f| f.method == method && f.plural == plural)?;
        let code = faults[i].code;
        faults[i].times -= 1;
        if faults[i].times == 0 {
            faults.remove(i);
        }
        Some(code)
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    /// Start serving on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            images: Mutex::new(HashMap::new()),
            root: tempfile::tempdir()?,
            logs: Mutex::new(HashMap::new()),
            log_lines: broadcast::channel(1024).0,
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            overlaps: Mutex::new(Vec::new()),
            watch_epoch: tokio::sync::watch::channel(0).0,
        });
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Self {
            shared,
            addr,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (no credentials, default namespace
    /// `namespace`).
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Make `name` pullable.
    pub fn add_image(&self, name: &str, image: Image) {
        lock(&self.shared.images).insert(name.to_string(), image);
    }

    /// The next `times` requests `method` (GET, POST, PUT, DELETE) on
    /// `plural` (e.g. "pods") fail with `code`.
    pub fn fail(&self, method: &str, plural: &str, code: u16, times: usize) {
        lock(&self.shared.faults).push(Fault {
            method: method.to_string(),
            plural: plural.to_string(),
            code,
            times,
        });
    }

    /// Every request so far, as "METHOD /path" (no query).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .get(&(resource, namespace.to_string(), name.to_string()))
    }

    pub fn list(&self, resource: Resource, namespace: &str) -> Vec<Value> {
        self.shared.store().list(resource, namespace)
    }

    /// Create an object behind the client's back.
    pub fn create(
        &self,
        resource: Resource,
        namespace: &str,
        object: Value,
    ) -> anyhow::Result<Value> {
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("object has no metadata.name"))?
            .to_string();
        let key = (resource, namespace.to_string(), name);
        let created =
            http::create(&self.shared, key, object).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(created)
    }

    /// Delete an object at once, behind the client's back (a lost volume).
    pub fn delete_now(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let key = (resource, namespace.to_string(), name.to_string());
        let gone = self.shared.store().remove(&key).is_some();
        if resource == Resource::PersistentVolumeClaims {
            let _ = std::fs::remove_dir_all(self.workspace(namespace, name));
        }
        gone
    }

    /// Pods that were created while another Pod (even a terminating one)
    /// still held the same ReadWriteOnce claim, as "new-pod over old-pod".
    pub fn claim_overlaps(&self) -> Vec<String> {
        lock(&self.shared.overlaps).clone()
    }

    /// End every open watch, as an API server restart does; clients
    /// resume from their last version (or list again after `compact`).
    pub fn end_watches(&self) {
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Forget the change history: running watches that reconnect get
    /// `410 Gone` and must list again.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Crash the main container of a running Pod once (it restarts).
    pub fn crash(&self, namespace: &str, pod: &str, code: i32) -> bool {
        let key = (Resource::Pods, namespace.to_string(), pod.to_string());
        kubelet::crash(&self.shared, &key, code)
    }

    /// The directory holding claim `claim`'s data.
    pub fn workspace(&self, namespace: &str, claim: &str) -> PathBuf {
        self.shared.workspace(namespace, claim)
    }

    /// Wait until `check` holds for the object (or its absence), polling.
    pub async fn wait_for(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        timeout: Duration,
        check: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(self.get(resource, namespace, name).as_ref()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} {name}: condition not reached in {timeout:?}; now {}",
                    resource.plural(),
                    json!(self.get(resource, namespace, name))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
