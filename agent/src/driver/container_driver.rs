//! The container driver: sandboxes as Docker/Podman containers.
//!
//! A sandbox is one container `berth-<name>` plus one named volume mounted
//! at `/sandbox`, both labelled `berth.sandbox=<name>` and `berth.uid=<uid>`
//! (the container also `berth.revision` and `berth.volume`). The inventory
//! is rebuilt from those labels only, so an agent restart loses nothing.
//!
//! Keeps invariant 4 (the volume is created once, never replaced: only
//! `remove` without `keep_volume` deletes it, and only if it carries this
//! sandbox's label) and invariant 5 (an old container is stopped and removed
//! before its replacement is created). The image is seeded into the volume
//! once: after the first start a `.berth-seeded` sentinel is written, and
//! later containers mount the volume with `nocopy`.
//!
//! `Ensure.policy` is parsed before anything changes (a bad one is
//! `Invalid`, nothing created) and applied to the new container (see
//! [`super::container_policy`]). Any revision other than the container's,
//! higher (update) or lower (rollback), replaces the container on the same
//! volume. `pull` only makes the image local.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::agent_v1::{Ensure, Observed, Remove};
use berth_proto::policy::Policy;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, ResourcesUlimits,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::container_inventory::Watch;
pub use super::container_inventory::RESYNC;
use super::container_observed::{
    absent, check_uid, engine, engine_reason, is_gone, is_running, label, observed_of,
    retry_unknown_state, status,
};
pub use super::container_observed::{LABEL_REVISION, LABEL_SANDBOX, LABEL_UID, LABEL_VOLUME};
use super::container_policy::{self, POLICY_SUBDIR};
use super::{
    container_name, validate_name, volume_owner, Driver, DriverError, ExecStream, LogStream,
};

/// Written into a volume once the image's `/sandbox` has been copied in.
pub const SEED_SENTINEL: &str = ".berth-seeded";
/// Where the workspace volume is mounted.
pub const MOUNT_POINT: &str = "/sandbox";
/// Default bound on one image pull (the agent's `--pull-timeout`).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT_SECS: i32 = 10;

/// Runs sandboxes through the Docker Engine API (Docker or Podman).
pub struct ContainerDriver {
    pub(super) docker: Docker,
    ulimits: Vec<ResourcesUlimits>,
    /// Where policy documents are written for bind-mounting.
    policy_dir: PathBuf,
    pull_timeout: Duration,
    /// Pulls in progress: image -> one line of progress.
    pulls: std::sync::Mutex<HashMap<String, String>>,
    /// The inventory's cache and what invalidates it.
    pub(super) watch: Watch,
}

impl ContainerDriver {
    /// A driver over a connected engine client. Containers get explicit
    /// `nofile`/`nproc` limits: this process's, lowered to those of the
    /// engine process listening on `engine_socket` when it is visible.
    /// Policy documents go to `data_dir/policies`.
    pub fn new(docker: Docker, engine_socket: Option<&Path>, data_dir: &Path) -> Self {
        Self {
            docker,
            ulimits: super::limits::container_ulimits(engine_socket),
            policy_dir: data_dir.join(POLICY_SUBDIR),
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            pulls: std::sync::Mutex::new(HashMap::new()),
            watch: Watch::new(RESYNC),
        }
    }

    /// Inspects every container at least this often (default [`RESYNC`]).
    pub fn with_resync(mut self, every: Duration) -> Self {
        self.watch = Watch::new(every);
        self
    }

    /// Containers inspected by this driver's inventories so far: the
    /// engine load that heartbeats cost.
    pub fn inventory_inspects(&self) -> u64 {
        self.watch.inspects()
    }

    fn set_progress(&self, image: &str, line: Option<String>) {
        let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        match line {
            Some(line) => pulls.insert(image.to_string(), line),
            None => pulls.remove(image),
        };
    }

    /// Bounds every image pull by `timeout` instead of the default.
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }

    /// Find or start the engine (see [`super::engine::discover`]).
    pub async fn connect(
        engine: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, super::engine::EngineError> {
        let (docker, socket) = super::engine::discover(engine, data_dir).await?;
        Ok(Self::new(docker, Some(&socket), data_dir))
    }

    pub(super) async fn inspect(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        self.inspect_id(&container_name(name)).await
    }

    /// Inspects a container by name or id, `None` if it is absent (Podman's
    /// transient unknown states are retried, see [`retry_unknown_state`]).
    pub(super) async fn inspect_id(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match retry_unknown_state(|| self.docker.inspect_container(id, None)).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(engine("inspect container", e)),
        }
    }

    /// The volume's host mount point and labels, `None` if it is absent.
    async fn volume(
        &self,
        volume: &str,
    ) -> Result<Option<(String, HashMap<String, String>)>, DriverError> {
        match self.docker.inspect_volume(volume).await {
            Ok(v) => Ok(Some((v.mountpoint, v.labels))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(engine("inspect volume", e)),
        }
    }

    async fn observe(&self, name: &str, volume_hint: &str) -> Result<Observed, DriverError> {
        let mut o = match self.inspect(name).await? {
            Some(c) => observed_of(name, &c),
            None => absent(name, "", volume_hint),
        };
        if o.volume.is_empty() {
            o.volume = volume_hint.to_string();
        }
        o.volume_present = !o.volume.is_empty() && self.volume(&o.volume).await?.is_some();
        Ok(o)
    }

    /// Make sure the image is local, pulling it (bounded) if not.
    async fn ensure_image(&self, image: &str) -> Result<(), DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(engine("inspect image", e)),
        }
        let not_found = |reason: String| DriverError::ImageNotFound {
            image: image.to_string(),
            reason,
        };
        let last = image.rsplit('/').next().unwrap_or(image);
        let mut opts = CreateImageOptionsBuilder::new().from_image(image);
        if !last.contains(':') && !image.contains('@') {
            opts = opts.tag("latest"); // never "all tags"
        }
        let pull = self.docker.create_image(Some(opts.build()), None, None);
        let mut layers = PullLayers::default();
        self.set_progress(image, Some("starting".to_string()));
        let drained = tokio::time::timeout(self.pull_timeout, async {
            futures::pin_mut!(pull);
            while let Some(item) = pull.next().await {
                let info = item?;
                layers.record(&info);
                self.set_progress(image, Some(layers.line()));
            }
            Ok::<_, EngineError>(())
        })
        .await;
        self.set_progress(image, None);
        match drained {
            Err(_) => Err(not_found(format!(
                "pull timed out after {:?} (the agent's --pull-timeout)",
                self.pull_timeout
            ))),
            Ok(Err(e)) => Err(not_found(engine_reason(&e))),
            Ok(Ok(())) => match self.docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(e) => Err(not_found(engine_reason(&e))),
            },
        }
    }

    async fn stop_container(&self, name: &str) -> Result<(), DriverError> {
        let opts = StopContainerOptionsBuilder::new()
            .t(STOP_TIMEOUT_SECS)
            .build();
        match self
            .docker
            .stop_container(&container_name(name), Some(opts))
            .await
        {
            Err(e) if !matches!(status(&e), Some(304 | 404)) => Err(engine("stop container", e)),
            _ => Ok(()),
        }
    }

    /// Remove the container (force); anonymous volumes too, named never.
    async fn remove_container(&self, name: &str) -> Result<(), DriverError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match self
            .docker
            .remove_container(&container_name(name), Some(opts))
            .await
        {
            Err(e) if status(&e) != Some(404) => Err(engine("remove container", e)),
            _ => Ok(()),
        }
    }

    /// The volume must exist already when the sandbox has run on it:
    /// never start a container that would get an empty one in its place.
    async fn require_volume(&self, e: &Ensure) -> Result<(), DriverError> {
        if e.volume_expected && self.volume(&e.volume).await?.is_none() {
            return Err(DriverError::VolumeLost {
                name: e.name.clone(),
                volume: e.volume.clone(),
            });
        }
        Ok(())
    }

    /// Create the volume if missing (unless it is expected to exist: then
    /// it is lost); whether it has been seeded already.
    async fn ensure_volume(&self, e: &Ensure) -> Result<bool, DriverError> {
        let owner = volume_owner(&e.volume_uid, &e.uid);
        if let Some((mountpoint, labels)) = self.volume(&e.volume).await? {
            // Never mount another sandbox's workspace.
            if !owned_by(&labels, &e.name, owner) {
                return Err(DriverError::ForeignVolume {
                    name: e.name.clone(),
                    volume: e.volume.clone(),
                });
            }
            return Ok(Path::new(&mountpoint).join(SEED_SENTINEL).exists());
        }
        self.require_volume(e).await?;
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), e.name.clone()),
            (LABEL_UID.to_string(), owner.to_string()),
        ]);
        let req = VolumeCreateRequest {
            name: Some(e.volume.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_volume(req)
            .await
            .map_err(|err| engine("create volume", err))?;
        tracing::info!(sandbox = %e.name, volume = %e.volume, "created volume");
        Ok(false)
    }

    /// After the first start: record that the image has been copied in.
    async fn mark_seeded(&self, volume: &str) {
        let Ok(Some((mountpoint, _))) = self.volume(volume).await else {
            return;
        };
        let dir = Path::new(&mountpoint);
        let sentinel = dir.join(SEED_SENTINEL);
        if !dir.is_dir() || sentinel.exists() {
            return;
        }
        if let Err(err) = std::fs::write(&sentinel, b"seeded by berth\n") {
            tracing::warn!(%volume, error = %err, "cannot write seed sentinel");
        }
    }

    /// Write the revision's policy document, if any: its host path.
    fn write_policy(&self, e: &Ensure) -> Result<Option<PathBuf>, DriverError> {
        e.policy
            .as_deref()
            .map(|doc| container_policy::write(&self.policy_dir, e, doc))
            .transpose()
    }

    async fn create_and_start(
        &self,
        e: &Ensure,
        seeded: bool,
        policy: Option<(&Policy, &Path)>,
    ) -> Result<(), DriverError> {
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), e.name.clone()),
            (LABEL_UID.to_string(), e.uid.clone()),
            (LABEL_REVISION.to_string(), e.revision.to_string()),
            (LABEL_VOLUME.to_string(), e.volume.clone()),
        ]);
        let nocopy = if seeded { ":nocopy" } else { "" };
        let mut body = ContainerCreateBody {
            image: Some(e.image.clone()),
            env: Some(container_policy::env(e, policy.map(|p| p.0))),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{MOUNT_POINT}{nocopy}", e.volume)]),
                ulimits: Some(self.ulimits.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some((policy, file)) = policy {
            container_policy::apply(policy, file, &mut body);
        }
        let cname = container_name(&e.name);
        if crate::chaos::broken("second-container") {
            let twin = CreateContainerOptionsBuilder::new()
                .name(&format!("{cname}-twin-{}", e.revision))
                .build();
            if let Ok(c) = self.docker.create_container(Some(twin), body.clone()).await {
                let _ = self.docker.start_container(&c.id, None).await;
            }
        }
        let opts = CreateContainerOptionsBuilder::new().name(&cname).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|err| engine("create container", err))?;
        self.start(&e.name, &e.volume).await
    }

    async fn start(&self, name: &str, volume: &str) -> Result<(), DriverError> {
        self.docker
            .start_container(&container_name(name), None)
            .await
            .map_err(|err| engine("start container", err))?;
        self.mark_seeded(volume).await;
        Ok(())
    }
}

#[tonic::async_trait]
impl Driver for ContainerDriver {
    fn kind(&self) -> &'static str {
        "container"
    }

    async fn pull(&self, image: &str) -> Result<(), DriverError> {
        if image.is_empty() {
            return Err(DriverError::Invalid("image is empty".into()));
        }
        self.ensure_image(image).await
    }

    async fn inventory(&self) -> Result<Vec<Observed>, DriverError> {
        self.cached_inventory().await
    }

    async fn ensure(&self, e: &Ensure) -> Result<Observed, DriverError> {
        validate_name("sandbox name", &e.name)?;
        let _changing = self.watch.touch(&e.name);
        validate_name("volume name", &e.volume)?;
        if e.image.is_empty() {
            return Err(DriverError::Invalid("image is empty".into()));
        }
        let policy = container_policy::parse(e)?;
        let existing = self.inspect(&e.name).await?;
        if let Some(c) = &existing {
            let same = label(c, LABEL_UID) == e.uid
                && label(c, LABEL_REVISION) == e.revision.to_string()
                && label(c, LABEL_VOLUME) == e.volume;
            if same {
                if !is_running(c) {
                    self.require_volume(e).await?;
                    tracing::info!(sandbox = %e.name, "starting existing container");
                    self.write_policy(e)?; // its bind source, if the data dir lost it
                    self.start(&e.name, &e.volume).await?;
                }
                return self.observe(&e.name, &e.volume).await;
            }
        }
        // Fetch the new image while the old container (if any) still runs.
        self.ensure_image(&e.image).await?;
        let policy_file = self.write_policy(e)?;
        if let Some(c) = &existing {
            let from = label(c, LABEL_REVISION);
            tracing::info!(sandbox = %e.name, from_revision = %from, revision = e.revision, "replacing container");
            self.stop_container(&e.name).await?;
            self.remove_container(&e.name).await?;
        }
        let seeded = self.ensure_volume(e).await?;
        let applied = policy.as_ref().zip(policy_file.as_deref());
        self.create_and_start(e, seeded, applied).await?;
        tracing::info!(sandbox = %e.name, revision = e.revision, image = %e.image, "container started");
        self.observe(&e.name, &e.volume).await
    }

    async fn stop(&self, name: &str, uid: &str) -> Result<Observed, DriverError> {
        let _changing = self.watch.touch(name);
        if let Some(c) = self.inspect(name).await? {
            check_uid(name, uid, &c)?;
            if is_running(&c) {
                self.stop_container(name).await?;
            }
        }
        self.observe(name, "").await
    }

    async fn remove(&self, r: &Remove) -> Result<Observed, DriverError> {
        let _changing = self.watch.touch(&r.name);
        let mut volume = r.volume.clone();
        match self.inspect(&r.name).await? {
            // Another sandbox of the same name (a new one, after this one
            // was deleted with its volume kept): never touched.
            Some(c) if !r.uid.is_empty() && label(&c, LABEL_UID) != r.uid => {}
            Some(c) => {
                if volume.is_empty() {
                    volume = label(&c, LABEL_VOLUME).to_string();
                }
                self.remove_container(&r.name).await?;
                container_policy::prune(&self.policy_dir, &r.name);
            }
            None => container_policy::prune(&self.policy_dir, &r.name),
        }
        if !r.keep_volume && !volume.is_empty() {
            if let Some((_, labels)) = self.volume(&volume).await? {
                let owner = volume_owner(&r.volume_uid, &r.uid);
                if !owned_by(&labels, &r.name, owner) {
                    return Err(DriverError::ForeignVolume {
                        name: r.name.clone(),
                        volume,
                    });
                }
                match self
                    .docker
                    .remove_volume(
                        &volume,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
                {
                    Err(e) if status(&e) != Some(404) => return Err(engine("remove volume", e)),
                    _ => tracing::info!(sandbox = %r.name, %volume, "removed volume"),
                }
            }
        }
        self.observe(&r.name, &volume).await
    }

    async fn exec(
        &self,
        name: &str,
        uid: &str,
        command: Vec<String>,
    ) -> Result<ExecStream, DriverError> {
        self.exec_stream(name, uid, command).await
    }

    async fn logs(&self, name: &str, uid: &str, follow: bool) -> Result<LogStream, DriverError> {
        self.log_stream(name, uid, follow).await
    }

    fn pull_progress(&self, image: &str) -> Option<String> {
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        pulls.get(image).cloned()
    }

    async fn volume_size(&self, volume: &str) -> Result<u64, DriverError> {
        validate_name("volume name", volume)?;
        let Some((mountpoint, _)) = self.volume(volume).await? else {
            return Err(DriverError::NotFound {
                name: volume.to_string(),
            });
        };
        let dir = PathBuf::from(mountpoint);
        tokio::task::spawn_blocking(move || crate::fsutil::disk_usage(&dir))
            .await
            .map_err(|e| DriverError::Io {
                op: "measure volume",
                source: std::io::Error::other(e),
            })?
            .map_err(|source| DriverError::Io {
                op: "measure volume",
                source,
            })
    }
}

/// What an image pull has reported so far, per layer.
#[derive(Default)]
struct PullLayers {
    /// Layer id -> (bytes done, bytes total, finished).
    layers: std::collections::BTreeMap<String, (i64, i64, bool)>,
}

impl PullLayers {
    fn record(&mut self, info: &bollard::models::CreateImageInfo) {
        let Some(id) = info.id.clone().filter(|id| !id.is_empty()) else {
            return;
        };
        let entry = self.layers.entry(id).or_default();
        if let Some(detail) = &info.progress_detail {
            entry.0 = detail.current.unwrap_or(entry.0);
            entry.1 = detail.total.unwrap_or(entry.1);
        }
        let status = info.status.as_deref().unwrap_or_default();
        if status.contains("complete") || status.contains("Already exists") {
            entry.2 = true;
        }
    }

    /// "2/5 layers, 12.3/40.0 MB".
    fn line(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let (current, total) = self
            .layers
            .values()
            .fold((0i64, 0i64), |(c, t), l| (c + l.0.max(0), t + l.1.max(0)));
        let mb = |b: i64| b as f64 / 1_000_000.0;
        format!(
            "{done}/{} layers, {:.1}/{:.1} MB",
            self.layers.len(),
            mb(current),
            mb(total)
        )
    }
}

/// Whether a volume's labels say it belongs to sandbox `name` with `uid`:
/// by uid when labelled with one (an adopted volume keeps the uid of the
/// sandbox it was kept from), else by name.
fn owned_by(labels: &HashMap<String, String>, name: &str, uid: &str) -> bool {
    match labels.get(LABEL_UID) {
        Some(owner) if !owner.is_empty() => owner == uid,
        _ => labels.get(LABEL_SANDBOX).is_none_or(|owner| owner == name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{CreateImageInfo, ProgressDetail};

    fn info(id: &str, status: &str, current: i64, total: i64) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: Some(ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_progress_counts_layers_and_bytes() {
        let mut layers = PullLayers::default();
        layers.record(&info("a", "Downloading", 1_000_000, 4_000_000));
        layers.record(&info("b", "Downloading", 500_000, 1_000_000));
        assert_eq!(layers.line(), "0/2 layers, 1.5/5.0 MB");
        layers.record(&info("b", "Pull complete", 1_000_000, 1_000_000));
        layers.record(&CreateImageInfo {
            status: Some("Trying to pull".into()),
            ..Default::default()
        });
        assert_eq!(layers.line(), "1/2 layers, 2.0/5.0 MB");
    }

    #[test]
    fn volumes_belong_by_uid_then_by_name() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let owned = labels(&[(LABEL_SANDBOX, "old"), (LABEL_UID, "u-old")]);
        assert!(owned_by(&owned, "new", "u-old"), "adopted: the uid decides");
        assert!(!owned_by(&owned, "old", "u-new"), "same name, other uid");
        let legacy = labels(&[(LABEL_SANDBOX, "s")]);
        assert!(owned_by(&legacy, "s", "u"));
        assert!(!owned_by(&legacy, "t", "u"));
    }
}
