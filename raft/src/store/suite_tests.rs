//! openraft's storage test suite over a RocksDB store in a temp dir.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::{open, LogStore, StateMachineStore};
use crate::{NodeId, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RocksBuilder)
}
