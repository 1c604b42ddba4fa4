//! Storage for one control node: the Raft log, the vote and commit
//! metadata, and the state machine live in column families of one disk
//! ([`disk`]: RocksDB in production, an in-memory disk with crash
//! semantics for simulation).
//!
//! Invariant kept here: every write openraft relies on for safety (log
//! append, vote, truncate, purge) is synced to disk before it is
//! acknowledged; applied state becomes durable with the next synced write
//! and can always be rebuilt from the log (see `state_machine`).

mod chunks;
pub mod disk;
mod keys;
mod log_store;
mod snapshot;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use chunks::SnapshotData;
pub use log_store::LogStore;
pub use snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
pub use state_machine::{SharedState, StateMachineStore, StateView, Touched};

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

/// Memory all memtables may hold before the largest is flushed.
const MEMTABLE_BUDGET: usize = 32 << 20;

/// Opens (creating if needed) the node's DB and returns its log store and
/// state machine, sharing the one DB.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    open_on(open_rocks(dir)?)
}

/// Opens (creating if needed) the RocksDB disk in `dir`.
fn open_rocks(dir: &Path) -> Result<disk::SharedDisk, OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Memtables of all column families together stay under this (RocksDB's
    // default is 64 MiB per memtable, two per family: up to 512 MiB held
    // in memory by a busy node before anything is flushed).
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    let cfs = disk::Cf::ALL
        .into_iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| OpenError::Open {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(Arc::new(disk::RocksDisk::new(db)))
}

/// The log store and state machine over any disk (a [`disk::MemDisk`] in
/// simulation), loading what it holds.
pub fn open_on(disk: disk::SharedDisk) -> Result<(LogStore, StateMachineStore), OpenError> {
    let sm = StateMachineStore::load(disk.clone()).map_err(|e| OpenError::Load(e.to_string()))?;
    Ok((LogStore::new(disk), sm))
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod suite_tests;
