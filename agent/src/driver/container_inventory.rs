//! The container driver's inventory at a bounded engine cost.
//!
//! Inspecting every container on every heartbeat cost the engine one
//! request per container per second. Now a heartbeat lists containers and
//! volumes (two requests, however many there are) and inspects only the
//! containers that may have changed since they were last inspected:
//! - containers it has not inspected before (a new id);
//! - containers the listing shows in another state than the inspect did;
//! - containers the engine's event stream (`/events`, type container)
//!   named since the last heartbeat;
//! - containers of a sandbox this driver began or finished changing since
//!   the last heartbeat ([`Watch::touch`]);
//! - every container every [`RESYNC`], and at the next heartbeat whenever
//!   the event stream ended or failed (events may have been missed).
//!
//! Invariant kept here (the `Observed.seq` order, see `commands::next_seq`):
//! an inventory stamped with seq S reports a container from an earlier
//! inspect only if nothing this agent did to it, nothing the engine listed
//! and nothing the engine's events said changed it since that inspect.
//! Every change berth makes is marked before and after it runs, so a
//! heartbeat never reports a state older than a command result it follows.

use std::collections::{HashMap, HashSet};
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
use super::container_observed::{absent, engine, observed_of, LABEL_SANDBOX, LABEL_UID};
use super::DriverError;

/// Every container is inspected again at least this often.
pub const RESYNC: Duration = Duration::from_secs(30);
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
    seen: HashMap<String, Seen>,
    last_full: Option<Instant>,
    events: Option<EventsTask>,
}

struct Seen {
    listed_state: String,
    observed: Observed,
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
        let full = changes.missed
            || cache
                .last_full
                .is_none_or(|at| started.duration_since(at) >= watch.resync);

        let filters = HashMap::from([("label", vec![LABEL_SANDBOX])]);
        let list = self.list_containers(&filters).await?;
        let opts = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let volumes = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| engine("list volumes", e))?
            .volumes
            .unwrap_or_default();

        let mut seen = HashMap::with_capacity(list.len());
        let mut order = Vec::with_capacity(list.len());
        for c in &list {
            let Some(id) = c.id.as_deref() else { continue };
            let listed_state = c.state.map(|s| s.to_string()).unwrap_or_default();
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
                None => {
                    watch.inspects.fetch_add(1, Ordering::Relaxed);
                    let Some(inspected) = self.inspect_id(id).await? else {
                        continue; // removed meanwhile
                    };
                    let name = super::container_observed::label(&inspected, LABEL_SANDBOX);
                    Seen {
                        listed_state,
                        observed: observed_of(name, &inspected),
                    }
                }
            };
            order.push(id.to_string());
            seen.insert(id.to_string(), entry);
        }
        cache.seen = seen;
        if full {
            cache.last_full = Some(started);
        }

        let present: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        let mut out: Vec<Observed> = order
            .iter()
            .filter_map(|id| cache.seen.get(id))
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
}

impl ContainerDriver {
    /// Every berth container, listed. Podman briefly lists a container
    /// being stopped in a state ("stopped") the Docker API schema does not
    /// know; such answers are retried for a bounded time, like inspects.
    async fn list_containers(
        &self,
        filters: &HashMap<&str, Vec<&str>>,
    ) -> Result<Vec<ContainerSummary>, DriverError> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(filters)
            .build();
        let mut attempts = 0;
        loop {
            match self.docker.list_containers(Some(opts.clone())).await {
                Ok(list) => return Ok(list),
                Err(e) if attempts < 50 && e.to_string().contains("unknown variant") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(engine("list containers", e)),
            }
        }
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
