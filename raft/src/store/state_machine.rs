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

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use super::disk::{Batch, Cf, Disk, SharedDisk};
use super::keys;
use super::snapshot::SnapshotFile;
use crate::codec;
use crate::model::{Change, CommandResponse, State};
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
}

impl Default for SharedState {
    fn default() -> Self {
        Self {
            view: Arc::default(),
            touched: tokio::sync::broadcast::channel(TOUCHED_BACKLOG).0,
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

    fn publish(&self, touched: Touched) {
        if !touched.is_empty() {
            // No subscriber (not leading) is fine.
            let _ = self.touched.send(Arc::new(touched));
        }
    }
}

/// State machine handle; clones share the DB and the view.
#[derive(Clone)]
pub struct StateMachineStore {
    disk: SharedDisk,
    state: SharedState,
    snapshot_seq: Arc<AtomicU64>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    /// Loads the applied state from the DB.
    pub(crate) fn load(disk: SharedDisk) -> StorageResult<Self> {
        let view = Self::read_view(disk.as_ref())?;
        Ok(Self {
            disk,
            state: SharedState {
                view: Arc::new(RwLock::new(view)),
                ..SharedState::default()
            },
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reads the applied state from the DB.
    fn read_view(disk: &dyn Disk) -> StorageResult<StateView> {
        let mut view = StateView::default();
        if let Some(bytes) = disk.get(Cf::SmMeta, keys::LAST_APPLIED).map_err(io_read)? {
            view.last_applied = codec::decode(&bytes).map_err(io_read)?;
        }
        if let Some(bytes) = disk.get(Cf::SmMeta, keys::MEMBERSHIP).map_err(io_read)? {
            view.membership = codec::decode(&bytes).map_err(io_read)?;
        }
        for (key, value) in disk.range(Cf::Sm, b"", None).map_err(io_read)? {
            if key.starts_with(keys::NODE_PREFIX) {
                view.table
                    .insert_node(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::SANDBOX_PREFIX) {
                view.table.insert(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::REQUEST_PREFIX) {
                view.table
                    .insert_request(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::VOLUME_PREFIX) {
                view.table
                    .insert_volume(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::TOKEN_PREFIX) {
                view.table
                    .insert_token(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::TENANT_PREFIX) {
                view.table
                    .insert_tenant(codec::decode(&value).map_err(io_read)?);
            } else if key.starts_with(keys::AUDIT_PREFIX) {
                view.table
                    .insert_audit(codec::decode(&value).map_err(io_read)?);
            }
        }
        Ok(view)
    }

    /// The view readers use.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn put_applied_meta(&self, batch: &mut Batch, view: &StateView) -> StorageResult<()> {
        batch.put(
            Cf::SmMeta,
            keys::LAST_APPLIED,
            codec::encode(&view.last_applied).map_err(io_write)?,
        );
        batch.put(
            Cf::SmMeta,
            keys::MEMBERSHIP,
            codec::encode(&view.membership).map_err(io_write)?,
        );
        Ok(())
    }
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
    async fn build_snapshot_now(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let file = {
            let view = self.state.read();
            let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match view.last_applied {
                Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
                None => format!("none-{seq}"),
            };
            SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: view.last_applied,
                    last_membership: view.membership.clone(),
                    snapshot_id,
                },
                records: view.table.iter().cloned().collect(),
                nodes: view.table.nodes().cloned().collect(),
                requests: view.table.requests().cloned().collect(),
                volumes: view.table.volumes().cloned().collect(),
                tokens: view.table.tokens().cloned().collect(),
                tenants: view.table.tenants().cloned().collect(),
                audit: view.table.audit().cloned().collect(),
            }
        };
        let bytes = file.encode().map_err(io_write)?;
        berth_proto::chaos::failpoint("snapshot-before-save");
        let mut batch = Batch::default();
        batch.put(Cf::SmMeta, keys::SNAPSHOT, &bytes);
        self.disk.write(batch, true).map_err(io_write)?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
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
        self.put_applied_meta(&mut batch, &view)?;
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

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let file = SnapshotFile::decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut batch = Batch::default();
        for (key, _) in self.disk.range(Cf::Sm, b"", None).map_err(io_read)? {
            batch.delete(Cf::Sm, key);
        }
        let mut table = State::default();
        let items = (file.records.into_iter().map(Change::PutSandbox))
            .chain(file.nodes.into_iter().map(Change::PutNode))
            .chain(file.requests.into_iter().map(Change::PutRequest))
            .chain(file.volumes.into_iter().map(Change::PutVolume))
            .chain(file.tokens.into_iter().map(Change::PutToken))
            .chain(file.tenants.into_iter().map(Change::PutTenant))
            .chain(file.audit.into_iter().map(Change::PutAudit));
        for item in items {
            table.take(&item);
            persist(&mut batch, item)?;
        }
        let view = StateView {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            table,
        };
        self.put_applied_meta(&mut batch, &view)?;
        batch.put(Cf::SmMeta, keys::SNAPSHOT, &bytes);
        let mut current = self.state.write();
        berth_proto::chaos::failpoint("snapshot-before-install");
        self.disk.write(batch, true).map_err(io_write)?;
        *current = view;
        drop(current);
        self.state.publish(Touched {
            everything: true,
            ..Touched::default()
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.disk.get(Cf::SmMeta, keys::SNAPSHOT).map_err(io_read)? else {
            return Ok(None);
        };
        let meta = SnapshotFile::decode_meta(&bytes).map_err(io_read)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
