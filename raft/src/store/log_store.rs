//! The Raft log and vote on the node's disk (RocksDB in production).
//!
//! Invariant kept here: `append` calls openraft's flushed-callback only after
//! the batch is synced; the vote is synced before `save_vote` returns; purge
//! records the last purged id in the same batch that deletes the entries.
//! The commit index is written but not synced: Raft does not need it to be
//! durable (a restarted node learns it again from the leader, and openraft
//! treats the applied id as committed).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::disk::{Batch, Cf, SharedDisk};
use super::keys::{self, log_key};
use crate::{codec, NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Log store handle; cheap to clone (replication tasks read through clones).
#[derive(Clone)]
pub struct LogStore {
    disk: SharedDisk,
}

impl LogStore {
    pub(crate) fn new(disk: SharedDisk) -> Self {
        Self { disk }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self
            .disk
            .get(Cf::RaftMeta, key)
            .map_err(|e| StorageIOError::read(&e))?
        else {
            return Ok(None);
        };
        let value = codec::decode(&bytes).map_err(|e| StorageIOError::read(&e))?;
        Ok(Some(value))
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageIOError<NodeId>> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        let mut batch = Batch::default();
        batch.put(Cf::RaftMeta, key, bytes);
        self.disk
            .write(batch, sync)
            .map_err(|e| StorageIOError::write(&e))
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let last = self
            .disk
            .last(Cf::Log)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        match last {
            None => Ok(None),
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(log_key(i.saturating_add(1))),
            Bound::Excluded(i) => Some(log_key(*i)),
            Bound::Unbounded => None,
        };
        let pairs = self
            .disk
            .range(Cf::Log, &log_key(start), end.as_ref().map(|k| k.as_slice()))
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let mut entries = Vec::new();
        for (key, value) in pairs {
            let Some(index) = keys::log_index(&key) else {
                continue;
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> =
                codec::decode(&value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(keys::LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(keys::VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(keys::VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        if let Some(id) = committed {
            berth_telemetry::metrics::get()
                .raft_commit_index
                .set(i64::try_from(id.index).unwrap_or(i64::MAX));
        }
        Ok(self.put_meta(keys::COMMITTED, &committed, false)?)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(keys::COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put(Cf::Log, log_key(entry.log_id.index), bytes);
        }
        // Synced before openraft learns the entries are flushed (invariant 1).
        berth_proto::chaos::failpoint("log-before-sync");
        let started = std::time::Instant::now();
        let result = self.disk.write(batch, true);
        berth_telemetry::metrics::get()
            .raft_append_duration
            .observe(started.elapsed().as_secs_f64());
        let failed = result.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = Batch::default();
        batch.delete_range(Cf::Log, log_key(log_id.index), log_key(u64::MAX));
        batch.delete(Cf::Log, log_key(u64::MAX));
        self.disk
            .write(batch, true)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let purged = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = Batch::default();
        batch.put(Cf::RaftMeta, keys::LAST_PURGED, purged);
        batch.delete_range(Cf::Log, log_key(0), log_key(log_id.index.saturating_add(1)));
        self.disk
            .write(batch, true)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
