//! openraft's storage test suite over both disks: RocksDB in a temp dir,
//! and the in-memory disk with crash semantics the simulator uses.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::disk::MemDisk;
use super::{open, open_on, LogStore, StateMachineStore};
use crate::{NodeId, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Arc<MemDisk>> for MemBuilder {
    async fn build(
        &self,
    ) -> Result<(Arc<MemDisk>, LogStore, StateMachineStore), StorageError<NodeId>> {
        let disk = Arc::new(MemDisk::default());
        let (log, sm) = open_on(disk.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((disk, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RocksBuilder)
}

#[test]
fn openraft_storage_suite_on_the_simulation_disk() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(MemBuilder)
}

#[tokio::test]
async fn a_crash_keeps_everything_the_stores_acknowledged() {
    use openraft::storage::RaftLogStorage;
    use openraft::{RaftLogReader, Vote};
    let disk = Arc::new(MemDisk::default());
    let (mut log, _sm) = open_on(disk.clone()).unwrap();
    log.save_vote(&Vote::new(3, 1)).await.unwrap();
    disk.crash();
    let (mut log, _sm) = open_on(disk.clone()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
}
