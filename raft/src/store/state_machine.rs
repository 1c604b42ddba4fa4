//! The replicated state machine on the node's disk (RocksDB in production),
//! with an in-memory view for reads.
//!
//! Invariants kept here: each `apply` call writes the changed records, the
//! last-applied log id and the membership in one atomic batch, so a restart
//! resumes from a consistent point; and the in-memory view only ever
//! reflects what was applied (invariant 2).
//!
//! Applied batches are not synced on their own: every entry they apply is
//! already synced in the log, and the disk has one write-ahead log, so the
//! next synced write (the next log append, vote, snapshot or purge) makes
//! them durable in order. A crash may lose the newest applied batches;
//! openraft then applies those entries again from the log on restart, and
//! a purge (synced, after every apply it covers) never removes an entry
//! whose effect is not yet durable.
//!
//! Snapshots stream: a build scans the records on disk as of one applied
//! point into a stored stream of chunks ([`super::chunks`]), and an
//! install writes a received stream's records a batch at a time, so
//! neither holds the state a second time in memory or in one disk value.
//! An install marks itself started (synced) before it touches a record and
//! unmarks itself with its last write; [`StateMachineStore::load`]
//! finishes an install a crash cut short from the stored stream.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use serde::{Deserialize, Serialize};

use super::chunks::{delete_chunks, Pins, SnapshotData};
use super::disk::{Batch, Cf, Disk, SharedDisk};
use super::keys;
use super::snapshot::{SnapshotReader, SnapshotWriter};
use crate::codec;
use crate::model::{Change, Command, CommandResponse, State};
use crate::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What has been applied: the data every read is served from.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub table: State,
}

/// What one applied batch of entries touched, for whoever reacts to
/// changes (the leader's actors) instead of scanning the whole state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Sandboxes put or deleted, by name.
    pub sandboxes: BTreeSet<String>,
    /// Some node record changed (readiness, registration).
    pub nodes: bool,
    /// The whole state was replaced (a snapshot was installed).
    pub everything: bool,
}

impl Touched {
    fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && !self.nodes && !self.everything
    }

    fn note(&mut self, change: &Change) {
        match change {
            Change::PutSandbox(r) => {
                self.sandboxes.insert(r.name.clone());
            }
            Change::DeleteSandbox(name) => {
                self.sandboxes.insert(name.clone());
            }
            Change::PutNode(_) => self.nodes = true,
            _ => {}
        }
    }
}

/// Applied batches a subscriber may fall behind by before it is told it
/// lagged (and must look at everything).
const TOUCHED_BACKLOG: usize = 4096;

/// The applied state, shared between the state machine and readers, and
/// the feed of what each applied batch touched.
#[derive(Debug, Clone)]
pub struct SharedState {
    view: Arc<RwLock<StateView>>,
    touched: tokio::sync::broadcast::Sender<Arc<Touched>>,
    growth: Arc<Growth>,
}

/// What decides when the next snapshot is due (see
/// [`SharedState::snapshot_due`]).
#[derive(Debug, Default)]
struct Growth {
    /// Writes applied since this node started.
    writes: AtomicU64,
    /// `writes` when the last snapshot was taken (or installed).
    writes_at_snapshot: AtomicU64,
    /// Sandbox records in the state.
    records: AtomicU64,
}

impl Default for SharedState {
    fn default() -> Self {
        Self {
            view: Arc::default(),
            touched: tokio::sync::broadcast::channel(TOUCHED_BACKLOG).0,
            growth: Arc::default(),
        }
    }
}

impl SharedState {
    /// Read access. A poisoned lock still holds consistent data (writers
    /// replace whole values), so it is recovered rather than propagated.
    pub fn read(&self) -> RwLockReadGuard<'_, StateView> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, StateView> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }

    /// What each batch applied from now on touches, in apply order, sent
    /// once the batch is visible to [`SharedState::read`]. A receiver that
    /// falls more than a few thousand batches behind gets `Lagged` and
    /// must treat everything as touched.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Touched>> {
        self.touched.subscribe()
    }

    /// Whether a snapshot is due: at least `at_least` writes were applied
    /// since the last one, and at least as many as the state holds
    /// records. The log since a snapshot then holds about as much as the
    /// snapshot itself, so building snapshots costs about one record
    /// written per write however large the state grows (a fixed count
    /// would rewrite 100,000 records every few thousand writes).
    pub fn snapshot_due(&self, at_least: u64) -> bool {
        self.writes_since_snapshot() >= at_least.max(self.growth.records.load(Ordering::Relaxed))
    }

    /// Writes applied since the last snapshot.
    pub fn writes_since_snapshot(&self) -> u64 {
        let g = &self.growth;
        g.writes.load(Ordering::Relaxed) - g.writes_at_snapshot.load(Ordering::Relaxed)
    }

    /// Called with the view locked: the snapshot being taken holds every
    /// write applied so far.
    fn snapshot_taken(&self, view: &StateView) {
        let g = &self.growth;
        g.writes_at_snapshot
            .store(g.writes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.count_records(view);
    }

    fn count_records(&self, view: &StateView) {
        self.growth
            .records
            .store(view.table.len() as u64, Ordering::Relaxed);
    }

    fn publish(&self, touched: Touched) {
        if !touched.is_empty() {
            // No subscriber (not leading) is fine.
            let _ = self.touched.send(Arc::new(touched));
        }
    }
}

/// State machine handle; clones share the DB, the view and the snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    disk: SharedDisk,
    state: SharedState,
    /// Store ids for new snapshot streams, above every id on disk.
    next_snapshot: Arc<AtomicU64>,
    /// The snapshot openraft is handed, as recorded on disk.
    current: Arc<Mutex<Option<Stored>>>,
    /// Readers of stored snapshots (see [`chunks`](super::chunks)).
    pins: Pins,
    /// Held by a snapshot build and by an install for their whole run, so
    /// a build never scans records an install is halfway through.
    snapshots: Arc<Mutex<()>>,
}

/// A stored snapshot stream: its store id and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    id: u64,
    len: u64,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn io_snapshot(
    meta: Option<&SnapshotMeta<NodeId, BasicNode>>,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(meta.map(|m| m.signature()), &e).into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pairs written to disk at a time while a snapshot is installed.
const INSTALL_BATCH: usize = 1024;

impl StateMachineStore {
    /// Loads the applied state from the DB, first finishing a snapshot
    /// install a crash interrupted.
    pub(crate) fn load(disk: SharedDisk) -> StorageResult<Self> {
        let read_stored = |key: &[u8]| -> StorageResult<Option<Stored>> {
            match disk.get(Cf::SmMeta, key).map_err(io_read)? {
                Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(io_read)?)),
                None => Ok(None),
            }
        };
        let current = read_stored(keys::SNAPSHOT_CURRENT)?;
        let installing = read_stored(keys::SNAPSHOT_INSTALLING)?;
        let store = Self {
            disk: disk.clone(),
            state: SharedState::default(),
            next_snapshot: Arc::new(AtomicU64::new(1)),
            current: Arc::new(Mutex::new(current)),
            pins: Pins::default(),
            snapshots: Arc::default(),
        };
        let view = match installing {
            Some(stored) => {
                tracing::info!(id = stored.id, "finishing a snapshot install cut short");
                store.install_stored(stored, None)?
            }
            None => Self::read_view(disk.as_ref())?,
        };
        store.drop_unowned_chunks()?;
        store.state.count_records(&view);
        *store.state.write() = view;
        Ok(store)
    }

    /// Deletes every snapshot chunk but the current stream's (streams a
    /// crash cut short, retired ones whose reader was gone) and release 1's
    /// single-value snapshot; new streams get ids above the current one.
    fn drop_unowned_chunks(&self) -> StorageResult<()> {
        let keep = *lock(&self.current);
        let mut batch = Batch::default();
        let (first, _) = keys::chunk_range(0);
        let (_, last) = keys::chunk_range(u64::MAX);
        match keep {
            Some(stored) => {
                let (from, to) = keys::chunk_range(stored.id);
                batch.delete_range(Cf::SmMeta, &first, &from);
                batch.delete_range(Cf::SmMeta, &to, &last);
                self.next_snapshot.store(stored.id + 1, Ordering::Relaxed);
            }
            None => batch.delete_range(Cf::SmMeta, &first, &last),
        }
        batch.delete(Cf::SmMeta, keys::LEGACY_SNAPSHOT);
        self.disk.write(batch, false).map_err(io_write)
    }

    /// Reads the applied state from the DB, one record at a time.
    fn read_view(disk: &dyn Disk) -> StorageResult<StateView> {
        let mut view = StateView::default();
        if let Some(bytes) = disk.get(Cf::SmMeta, keys::LAST_APPLIED).map_err(io_read)? {
            view.last_applied = codec::decode(&bytes).map_err(io_read)?;
        }
        if let Some(bytes) = disk.get(Cf::SmMeta, keys::MEMBERSHIP).map_err(io_read)? {
            view.membership = codec::decode(&bytes).map_err(io_read)?;
        }
        for pair in disk.scan(Cf::Sm, b"", None).map_err(io_read)? {
            let (key, value) = pair.map_err(io_read)?;
            load_pair(&mut view.table, &key, &value)?;
        }
        Ok(view)
    }

    /// The view readers use.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// Records `stored` as the current snapshot, with `batch`, synced; the
    /// previous one is retired (deleted now or by its last reader).
    fn make_current(&self, stored: Stored, mut batch: Batch) -> StorageResult<()> {
        let mut current = lock(&self.current);
        batch.put(
            Cf::SmMeta,
            keys::SNAPSHOT_CURRENT,
            codec::encode(&stored).map_err(io_write)?,
        );
        if let Some(previous) = *current {
            if previous.id != stored.id && self.pins.retire(previous.id) {
                delete_chunks(&mut batch, previous.id);
            }
        }
        self.disk.write(batch, true).map_err(io_write)?;
        *current = Some(stored);
        Ok(())
    }

    /// Replaces the records on disk with those of stored snapshot `stored`,
    /// a batch of pairs at a time, and makes it current. The first, synced
    /// write marks the install as started; a crash before the last write
    /// leaves the mark, and [`load`](Self::load) runs the install again.
    fn install_stored(
        &self,
        stored: Stored,
        expected: Option<&SnapshotMeta<NodeId, BasicNode>>,
    ) -> StorageResult<StateView> {
        let data = SnapshotData::reader(self.disk.clone(), stored.id, stored.len, None);
        let mut reader = SnapshotReader::new(data).map_err(|e| io_snapshot(expected, e))?;
        let meta = reader.meta().clone();
        if let Some(expected) = expected {
            if meta.snapshot_id != expected.snapshot_id {
                let e = std::io::Error::other(format!(
                    "snapshot data is {}, expected {}",
                    meta.snapshot_id, expected.snapshot_id
                ));
                return Err(io_snapshot(Some(expected), e));
            }
        }
        let mut batch = Batch::default();
        batch.put(
            Cf::SmMeta,
            keys::SNAPSHOT_INSTALLING,
            codec::encode(&stored).map_err(io_write)?,
        );
        batch.delete_range(Cf::Sm, b"", keys::SM_END);
        self.disk.write(batch, true).map_err(io_write)?;

        let mut table = State::default();
        let mut batch = Batch::default();
        let mut pending = 0;
        while let Some((key, value)) = reader
            .next_pair()
            .map_err(|e| io_snapshot(Some(&meta), e))?
        {
            load_pair(&mut table, key, value)?;
            batch.put(Cf::Sm, key, value);
            pending += 1;
            if pending == INSTALL_BATCH {
                self.disk
                    .write(std::mem::take(&mut batch), false)
                    .map_err(io_write)?;
                pending = 0;
            }
        }
        // The chaos suite (and the simulator) crash here: half installed.
        berth_proto::chaos::failpoint("snapshot-before-install");
        put_meta(&mut batch, &meta.last_log_id, &meta.last_membership)?;
        batch.delete(Cf::SmMeta, keys::SNAPSHOT_INSTALLING);
        self.make_current(stored, batch)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            records = table.len() + table.nodes().count(),
            bytes = stored.len,
            "installed a snapshot"
        );
        Ok(StateView {
            last_applied: meta.last_log_id,
            membership: meta.last_membership,
            table,
        })
    }
}

/// Adds the applied log id and membership to `batch`.
fn put_meta(
    batch: &mut Batch,
    last_applied: &Option<LogId<NodeId>>,
    membership: &StoredMembership<NodeId, BasicNode>,
) -> StorageResult<()> {
    batch.put(
        Cf::SmMeta,
        keys::LAST_APPLIED,
        codec::encode(last_applied).map_err(io_write)?,
    );
    batch.put(
        Cf::SmMeta,
        keys::MEMBERSHIP,
        codec::encode(membership).map_err(io_write)?,
    );
    Ok(())
}

/// Adds one stored record (key and value as on disk) to `table`.
fn load_pair(table: &mut State, key: &[u8], value: &[u8]) -> StorageResult<()> {
    if key.starts_with(keys::NODE_PREFIX) {
        table.insert_node(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::SANDBOX_PREFIX) {
        table.insert(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::REQUEST_PREFIX) {
        table.insert_request(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::VOLUME_PREFIX) {
        table.insert_volume(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::TOKEN_PREFIX) {
        table.insert_token(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::TENANT_PREFIX) {
        table.insert_tenant(codec::decode(value).map_err(io_read)?);
    } else if key.starts_with(keys::AUDIT_PREFIX) {
        table.insert_audit(codec::decode(value).map_err(io_read)?);
    }
    Ok(())
}

/// Adds one applied change to the batch.
fn persist(batch: &mut Batch, change: Change) -> StorageResult<()> {
    match change {
        Change::PutSandbox(record) => batch.put(
            Cf::Sm,
            keys::sandbox_key(&record.name),
            codec::encode(&record).map_err(io_write)?,
        ),
        Change::DeleteSandbox(name) => batch.delete(Cf::Sm, keys::sandbox_key(&name)),
        Change::PutNode(node) => batch.put(
            Cf::Sm,
            keys::node_key(&node.name),
            codec::encode(&node).map_err(io_write)?,
        ),
        Change::PutRequest(request) => batch.put(
            Cf::Sm,
            keys::request_key(&request.id),
            codec::encode(&request).map_err(io_write)?,
        ),
        Change::DeleteRequest(id) => batch.delete(Cf::Sm, keys::request_key(&id)),
        Change::PutVolume(volume) => batch.put(
            Cf::Sm,
            keys::volume_key(&volume.volume),
            codec::encode(&volume).map_err(io_write)?,
        ),
        Change::DeleteVolume(volume) => batch.delete(Cf::Sm, keys::volume_key(&volume)),
        Change::PutToken(token) => batch.put(
            Cf::Sm,
            keys::token_key(&token.id),
            codec::encode(&token).map_err(io_write)?,
        ),
        Change::PutTenant(tenant) => batch.put(
            Cf::Sm,
            keys::tenant_key(&tenant.name),
            codec::encode(&tenant).map_err(io_write)?,
        ),
        Change::PutAudit(event) => batch.put(
            Cf::Sm,
            keys::audit_key(event.index, event.slot),
            codec::encode(&event).map_err(io_write)?,
        ),
        Change::DeleteAudit((index, slot)) => batch.delete(Cf::Sm, keys::audit_key(index, slot)),
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let built = self.build_snapshot_now().await;
        if built.is_ok() {
            let m = berth_telemetry::metrics::get();
            m.raft_snapshots.inc();
            m.raft_snapshot_duration
                .observe(started.elapsed().as_secs_f64());
        }
        built
    }
}

impl StateMachineStore {
    /// Streams the records, as of one applied point, into a new stored
    /// snapshot: one record in memory at a time, never the whole state.
    async fn build_snapshot_now(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let _building = lock(&self.snapshots);
        let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
        let (meta, records) = {
            // Applies hold the write lock until their batch is on disk, so
            // the scan made under the read lock matches this applied point.
            let view = self.state.read();
            let snapshot_id = match view.last_applied {
                Some(applied) => format!("{}-{}-{id}", applied.leader_id, applied.index),
                None => format!("none-{id}"),
            };
            let meta = SnapshotMeta {
                last_log_id: view.last_applied,
                last_membership: view.membership.clone(),
                snapshot_id,
            };
            self.state.snapshot_taken(&view);
            (meta, self.disk.scan(Cf::Sm, b"", None).map_err(io_read)?)
        };
        let data = SnapshotData::writer(self.disk.clone(), id);
        let mut writer = SnapshotWriter::new(data, &meta).map_err(io_write)?;
        for pair in records {
            let (key, value) = pair.map_err(io_read)?;
            writer.push(&key, &value).map_err(io_write)?;
        }
        let mut data = writer.finish().map_err(io_write)?;
        data.finish_writing().map_err(io_write)?;
        let stored = Stored {
            id,
            len: data.len(),
        };
        berth_proto::chaos::failpoint("snapshot-before-save");
        self.make_current(stored, Batch::default())?;
        let reader =
            SnapshotData::reader(self.disk.clone(), id, stored.len, Some(self.pins.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(reader),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let view = self.state.read();
        Ok((view.last_applied, view.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        let mut responses = Vec::new();
        let mut touched = Touched::default();
        // The write lock is held until the batch is on disk: no reader ever
        // sees a change that is not durable. If the write fails, the view
        // is reloaded from disk, which still holds the state before it.
        let mut view = self.state.write();
        for entry in entries {
            view.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Applied,
                EntryPayload::Membership(m) => {
                    view.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Applied
                }
                EntryPayload::Normal(proposal) => {
                    let writes = match &proposal.command {
                        Command::Batch { proposals } => proposals.len() as u64,
                        _ => 1,
                    };
                    self.state
                        .growth
                        .writes
                        .fetch_add(writes, Ordering::Relaxed);
                    let (term, index) = (entry.log_id.leader_id.term, entry.log_id.index);
                    let (response, changes) = view.table.apply_proposal(term, index, &proposal);
                    for change in changes {
                        touched.note(&change);
                        persist(&mut batch, change)?;
                    }
                    response
                }
            };
            responses.push(response);
        }
        self.state.count_records(&view);
        put_meta(&mut batch, &view.last_applied, &view.membership)?;
        // Data and last-applied id land together; durable with the next
        // synced write (see the module doc).
        berth_proto::chaos::failpoint("apply-before-sync");
        if let Err(e) = self.disk.write(batch, false) {
            *view = Self::read_view(self.disk.as_ref())?;
            return Err(io_write(e));
        }
        drop(view);
        self.state.publish(touched);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotData>> {
        let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(SnapshotData::writer(self.disk.clone(), id)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> StorageResult<()> {
        let _installing = lock(&self.snapshots);
        let mut data = *snapshot;
        let stored = if data.is_written_to(&self.disk) {
            Stored {
                id: data.id(),
                len: data.len(),
            }
        } else {
            // A stream kept elsewhere (openraft's storage suite hands over
            // another store's snapshot): copy it here first.
            data.rewind_for_reading()
                .map_err(|e| io_snapshot(Some(meta), e))?;
            let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
            let mut copy = SnapshotData::writer(self.disk.clone(), id);
            std::io::copy(&mut data, &mut copy).map_err(|e| io_snapshot(Some(meta), e))?;
            copy.finish_writing().map_err(io_write)?;
            Stored {
                id,
                len: copy.len(),
            }
        };
        drop(data);
        let view = self.install_stored(stored, Some(meta))?;
        let mut current = self.state.write();
        self.state.snapshot_taken(&view);
        *current = view;
        drop(current);
        self.state.publish(Touched {
            everything: true,
            ..Touched::default()
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let reader = {
            let current = lock(&self.current);
            let Some(stored) = *current else {
                return Ok(None);
            };
            // Pinned before the lock is let go: a newer snapshot may retire
            // this one, but not delete it while it is read.
            SnapshotData::reader(
                self.disk.clone(),
                stored.id,
                stored.len,
                Some(self.pins.clone()),
            )
        };
        let header = SnapshotReader::new(reader).map_err(|e| io_snapshot(None, e))?;
        let meta = header.meta().clone();
        let mut reader = header.into_inner();
        reader
            .rewind_for_reading()
            .map_err(|e| io_snapshot(Some(&meta), e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(reader),
        }))
    }
}
