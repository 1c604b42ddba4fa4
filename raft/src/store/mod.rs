//! RocksDB storage for one control node: the Raft log, the vote and commit
//! metadata, and the state machine live in column families of one DB.
//!
//! Invariant kept here: every write openraft relies on for safety (log
//! append, vote, truncate, purge, applied state) is synced to disk before it
//! is acknowledged.

mod keys;
mod log_store;
mod snapshot;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use log_store::LogStore;
pub use snapshot::{SnapshotError, SnapshotFile};
pub use state_machine::{SharedState, StateMachineStore, StateView};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SM_META: &str = "sm_meta";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open RocksDB at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("cannot load the state machine: {0}")]
    Load(String),
}

/// Opens (creating if needed) the node's DB and returns its log store and
/// state machine, sharing the one DB.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_RAFT_META, CF_SM, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| OpenError::Open {
        path: dir.display().to_string(),
        source,
    })?;
    let db = Arc::new(db);
    let sm = StateMachineStore::load(db.clone()).map_err(|e| OpenError::Load(e.to_string()))?;
    Ok((LogStore::new(db), sm))
}

/// Write options for everything openraft relies on: synced to disk.
pub(crate) fn synced() -> rocksdb::WriteOptions {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    opts
}

#[cfg(test)]
mod suite_tests;
