//! The container driver's inventory at a bounded engine cost.
//!
//! Inspecting every container on every heartbeat cost the engine one
//! request per container per second (and listing them costs Podman nearly
//! as much). Now the engine's event stream (`/events`, type container)
//! says what changed, and a heartbeat inspects only:
//! - the containers events named since the last heartbeat (a new one, a
//!   stopped one, a removed one: inspected, or forgotten when gone);
//! - the sandboxes this driver began or finished changing since
//!   ([`Watch::touch`]), looked up by container name;
//! - every [`LIST_EVERY`], with a listing: also containers it has not
//!   inspected yet and those the listing shows in another state;
//! - every container every [`RESYNC`], and at the next heartbeat whenever
//!   the event stream ended or failed or an inventory failed midway.
//!
//! Volumes are listed on every heartbeat (one cheap request).
//!
//! Invariant kept here (the `Observed.seq` order, see `commands::next_seq`):
//! an inventory stamped with seq S reports a container from an earlier
//! inspect only if nothing this agent did to it, and nothing the engine's
//! events or listing said, changed it since that inspect. Every change
//! berth makes is marked before and after it runs, so a heartbeat never
//! reports a state older than a command result it follows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::agent_v1::Observed;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::time::Instant;

use super::container_driver::ContainerDriver;
use super::container_observed::{
    absent, engine, label, observed_of, retry_unknown_state, LABEL_SANDBOX, LABEL_UID,
};
use super::{container_name, DriverError};

/// Every container is inspected again at least this often.
pub const RESYNC: Duration = Duration::from_secs(30);
/// Containers are listed at least this often (and at every resync).
pub const LIST_EVERY: Duration = Duration::from_secs(10);
/// Most changed ids remembered between two heartbeats.
const MAX_CHANGED_IDS: usize = 10_000;
/// Wait before subscribing again after the event stream ended.
const EVENTS_RETRY: Duration = Duration::from_secs(1);

/// What may have changed since the last heartbeat: written by the event
/// task and by the driver's own commands, taken by each inventory.
#[derive(Default)]
struct Changes {
    /// Container ids the engine sent events about.
    ids: HashSet<String>,
    /// Sandboxes this driver changed.
    names: HashSet<String>,
    /// The event stream ended or failed: events may have been missed.
    missed: bool,
}

/// The inventory's cache and what invalidates it; one per driver.
pub(super) struct Watch {
    changes: Arc<Mutex<Changes>>,
    cache: tokio::sync::Mutex<Cache>,
    inspects: AtomicU64,
    resync: Duration,
}

#[derive(Default)]
struct Cache {
    /// By container id: what the listing said and what the inspect said.
    seen: BTreeMap<String, Seen>,
    last_list: Option<Instant>,
    last_full: Option<Instant>,
    events: Option<EventsTask>,
}

struct Seen {
    /// The state the last listing gave (`None`: inspected between
    /// listings, so the next listing inspects it once more).
    listed_state: Option<String>,
    observed: Observed,
}

impl Seen {
    fn unlisted(observed: Observed) -> Self {
        Self {
            listed_state: None,
            observed,
        }
    }
}

/// The event-stream task; aborted when the driver drops.
struct EventsTask(tokio::task::JoinHandle<()>);

impl Drop for EventsTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks a sandbox changed when made and again when dropped, around a
/// command that changes it (see the module docs).
pub(super) struct Touch<'a> {
    watch: &'a Watch,
    name: String,
}

impl Drop for Touch<'_> {
    fn drop(&mut self) {
        self.watch.mark(&self.name);
    }
}

impl Watch {
    pub(super) fn new(resync: Duration) -> Self {
        Self {
            changes: Arc::default(),
            cache: tokio::sync::Mutex::default(),
            inspects: AtomicU64::new(0),
            resync,
        }
    }

    /// Marks `name` changed now and when the returned guard drops.
    pub(super) fn touch(&self, name: &str) -> Touch<'_> {
        self.mark(name);
        Touch {
            watch: self,
            name: name.to_string(),
        }
    }

    fn mark(&self, name: &str) {
        lock(&self.changes).names.insert(name.to_string());
    }

    /// Containers inspected so far by this driver's inventories.
    pub(super) fn inspects(&self) -> u64 {
        self.inspects.load(Ordering::Relaxed)
    }
}

fn lock(changes: &Mutex<Changes>) -> std::sync::MutexGuard<'_, Changes> {
    changes.lock().unwrap_or_else(|p| p.into_inner())
}

impl ContainerDriver {
    /// The inventory, inspecting only what may have changed (module docs).
    pub(super) async fn cached_inventory(&self) -> Result<Vec<Observed>, DriverError> {
        let watch = &self.watch;
        let mut cache = watch.cache.lock().await;
        if cache.events.is_none() {
            let task = tokio::spawn(follow_events(self.docker.clone(), watch.changes.clone()));
            cache.events = Some(EventsTask(task));
        }
        let started = Instant::now();
        let changes = std::mem::take(&mut *lock(&watch.changes));
        let due = |at: Option<Instant>, every: Duration| {
            at.is_none_or(|at| started.duration_since(at) >= every)
        };
        let full = changes.missed || due(cache.last_full, watch.resync);
        let listing = full || due(cache.last_list, watch.resync.min(LIST_EVERY));
        let filters = HashMap::from([("label", vec![LABEL_SANDBOX])]);
        let refreshed = if listing {
            self.refresh_listed(&mut cache, &filters, &changes, full)
                .await
        } else {
            self.refresh_changed(&mut cache, &changes).await
        };
        if let Err(e) = refreshed {
            // The changes taken were not all applied: start over in full.
            lock(&watch.changes).missed = true;
            return Err(e);
        }
        if listing {
            cache.last_list = Some(started);
        }
        if full {
            cache.last_full = Some(started);
        }
        let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let volumes = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| engine("list volumes", e))?
            .volumes
            .unwrap_or_default();

        let present: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        let mut out: Vec<Observed> = cache
            .seen
            .values()
            .map(|s| {
                let mut o = s.observed.clone();
                o.volume_present = present.contains(o.volume.as_str());
                o
            })
            .collect();
        let used: HashSet<String> = out.iter().map(|o| o.volume.clone()).collect();
        for v in volumes.iter().filter(|v| !used.contains(&v.name)) {
            let get = |k: &str| v.labels.get(k).map(String::as_str).unwrap_or_default();
            let mut o = absent(get(LABEL_SANDBOX), get(LABEL_UID), &v.name);
            o.volume_present = true;
            out.push(o);
        }
        Ok(out)
    }

    /// With a listing: every listed container, inspected again if `full`,
    /// new, listed in another state, or named by `changes`.
    async fn refresh_listed(
        &self,
        cache: &mut Cache,
        filters: &HashMap<&str, Vec<&str>>,
        changes: &Changes,
        full: bool,
    ) -> Result<(), DriverError> {
        let list = self.list_containers(filters).await?;
        let mut seen = BTreeMap::new();
        for c in &list {
            let Some(id) = c.id.as_deref() else { continue };
            let listed_state = c.state.map(|s| s.to_string());
            let name = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SANDBOX))
                .map(String::as_str)
                .unwrap_or_default();
            let kept = cache.seen.remove(id).filter(|s| {
                !full
                    && s.listed_state == listed_state
                    && !changes.ids.contains(id)
                    && !changes.names.contains(name)
            });
            let entry = match kept {
                Some(entry) => entry,
                None => match self.inspect_counted(id).await? {
                    Some((_, observed)) => Seen {
                        listed_state,
                        observed,
                    },
                    None => continue, // removed meanwhile
                },
            };
            seen.insert(id.to_string(), entry);
        }
        cache.seen = seen;
        Ok(())
    }

    /// Between listings: inspects the sandboxes this driver changed (by
    /// container name: a replaced container has a new id) and the
    /// containers events named, and forgets those that are gone.
    async fn refresh_changed(
        &self,
        cache: &mut Cache,
        changes: &Changes,
    ) -> Result<(), DriverError> {
        let mut done = HashSet::new();
        for name in &changes.names {
            let found = self.inspect_counted(&container_name(name)).await?;
            let found_id = found.as_ref().map(|(id, _)| id.clone());
            cache
                .seen
                .retain(|id, s| s.observed.name != *name || Some(id) == found_id.as_ref());
            if let Some((id, observed)) = found {
                done.insert(id.clone());
                cache.seen.insert(id, Seen::unlisted(observed));
            }
        }
        for id in changes.ids.iter().filter(|id| !done.contains(*id)) {
            match self.inspect_counted(id).await? {
                Some((id, observed)) if !observed.name.is_empty() => {
                    cache.seen.insert(id, Seen::unlisted(observed));
                }
                // Gone, or not a sandbox's container.
                _ => {
                    cache.seen.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Inspects one container for the inventory: its id and observation.
    async fn inspect_counted(&self, id: &str) -> Result<Option<(String, Observed)>, DriverError> {
        self.watch.inspects.fetch_add(1, Ordering::Relaxed);
        Ok(self.inspect_id(id).await?.map(|c| {
            let name = label(&c, LABEL_SANDBOX);
            (c.id.clone().unwrap_or_default(), observed_of(name, &c))
        }))
    }

    /// Every berth container, listed (Podman's transient unknown states
    /// are retried, see [`retry_unknown_state`]).
    async fn list_containers(
        &self,
        filters: &HashMap<&str, Vec<&str>>,
    ) -> Result<Vec<ContainerSummary>, DriverError> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(filters)
            .build();
        retry_unknown_state(|| self.docker.list_containers(Some(opts.clone())))
            .await
            .map_err(|e| engine("list containers", e))
    }
}

/// Follows the engine's container events for the life of the driver,
/// recording which containers they name; marks `missed` whenever the
/// stream ends or fails, and subscribes again.
async fn follow_events(docker: Docker, changes: Arc<Mutex<Changes>>) {
    let filters = HashMap::from([("type", vec!["container"])]);
    loop {
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        let mut events = docker.events(Some(opts));
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Some(id) = event.actor.and_then(|a| a.id) {
                        let mut changes = lock(&changes);
                        if changes.ids.len() >= MAX_CHANGED_IDS {
                            // No heartbeat took them (no session): a full
                            // resync instead of an unbounded set.
                            changes.ids.clear();
                            changes.missed = true;
                        }
                        changes.ids.insert(id);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "engine event stream failed; resubscribing");
                    break;
                }
            }
        }
        lock(&changes).missed = true;
        tokio::time::sleep(EVENTS_RETRY).await;
    }
}
