//! The Raft log and vote on RocksDB.
//!
//! Invariant kept here: `append` calls openraft's flushed-callback only after
//! the batch is synced; the vote is synced before `save_vote` returns; purge
//! records the last purged id in the same batch that deletes the entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keys::{self, log_key};
use super::{synced, CF_LOG, CF_RAFT_META};
use crate::{codec, NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Log store handle; cheap to clone (replication tasks read through clones).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn cf(&self, name: &str) -> StorageResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| {
            let e = std::io::Error::other(format!("column family {name} missing"));
            StorageIOError::read(&e).into()
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let cf = self.cf(CF_RAFT_META)?;
        let Some(bytes) = self
            .db
            .get_cf(cf, key)
            .map_err(|e| StorageIOError::read(&e))?
        else {
            return Ok(None);
        };
        let value = codec::decode(&bytes).map_err(|e| StorageIOError::read(&e))?;
        Ok(Some(value))
    }

    fn put_meta_synced<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StorageIOError<NodeId>> {
        let cf = self
            .cf(CF_RAFT_META)
            .map_err(|e| StorageIOError::write(&e))?;
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.db
            .put_cf_opt(cf, key, bytes, &synced())
            .map_err(|e| StorageIOError::write(&e))
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let cf = self.cf(CF_LOG)?;
        let mut iter = self.db.iterator_cf(cf, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
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
        let cf = self.cf(CF_LOG)?;
        let start_key = log_key(start);
        let iter = self
            .db
            .iterator_cf(cf, IteratorMode::From(&start_key, Direction::Forward));
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
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
        self.put_meta_synced(keys::VOTE, vote)
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
        Ok(self.put_meta_synced(keys::COMMITTED, &committed)?)
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
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put_cf(cf, log_key(entry.log_id.index), bytes);
        }
        // Synced before openraft learns the entries are flushed (invariant 1).
        berth_proto::chaos::failpoint("log-before-sync");
        let started = std::time::Instant::now();
        let result = self
            .db
            .write_opt(batch, &synced())
            .map_err(std::io::Error::other);
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
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, log_key(log_id.index), log_key(u64::MAX));
        batch.delete_cf(cf, log_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let log_cf = self.cf(CF_LOG)?;
        let meta_cf = self.cf(CF_RAFT_META)?;
        let purged = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta_cf, keys::LAST_PURGED, purged);
        batch.delete_range_cf(log_cf, log_key(0), log_key(log_id.index.saturating_add(1)));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
