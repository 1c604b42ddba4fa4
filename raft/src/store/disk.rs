//! The storage seam under the log store and the state machine: four
//! column families of ordered keys, read by key or by range, written in
//! atomic batches that are synced or not.
//!
//! [`RocksDisk`] is production (one RocksDB, a synced write syncs the WAL).
//! [`MemDisk`] keeps everything in memory with the same crash semantics, for
//! simulation: a write is visible at once, but only synced writes (and the
//! unsynced ones before them, as with a WAL) survive [`MemDisk::crash`].

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

/// A column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    Log,
    RaftMeta,
    Sm,
    SmMeta,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::Log, Cf::RaftMeta, Cf::Sm, Cf::SmMeta];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::RaftMeta => "raft_meta",
            Cf::Sm => "sm",
            Cf::SmMeta => "sm_meta",
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Writes applied together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push(Op::Put(cf, key.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.ops.push(Op::Delete(cf, key.as_ref().to_vec()));
    }

    /// Delete every key in `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.ops.push(Op::DeleteRange(
            cf,
            from.as_ref().to_vec(),
            to.as_ref().to_vec(),
        ));
    }
}

/// Key/value pairs, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Key/value pairs one at a time, in key order.
pub type Scan<'a> = Box<dyn Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// What the stores need from a disk.
pub trait Disk: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Pairs with `from <= key` (and `key < to` when given), in order.
    fn range(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Pairs>;
    /// Pairs with `from <= key` (and `key < to` when given), in order, one
    /// at a time, as they were when the scan began (later writes are not
    /// seen): for reading a whole column family without holding it.
    fn scan<'a>(&'a self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Scan<'a>>;
    /// The pair with the highest key.
    fn last(&self, cf: Cf) -> io::Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Apply `batch` atomically; durable before returning when `sync`.
    fn write(&self, batch: Batch, sync: bool) -> io::Result<()>;
}

/// A shared disk.
pub type SharedDisk = Arc<dyn Disk>;

/// RocksDB with one column family per [`Cf`].
pub struct RocksDisk {
    db: DB,
}

impl RocksDisk {
    pub fn new(db: DB) -> Self {
        Self { db }
    }

    fn cf(&self, cf: Cf) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| io::Error::other(format!("column family {} missing", cf.name())))
    }
}

impl Disk for RocksDisk {
    fn get(&self, cf: Cf, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(io::Error::other)
    }

    fn range(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Pairs> {
        self.scan(cf, from, to)?.collect()
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Scan<'a>> {
        // A RocksDB iterator reads from the point in time it was made.
        let to = to.map(<[u8]>::to_vec);
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(from, Direction::Forward))
            .map(|item| {
                item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(io::Error::other)
            })
            .take_while(move |item| match (item, &to) {
                (Ok((key, _)), Some(to)) => key < to,
                _ => true,
            });
        Ok(Box::new(iter))
    }

    fn last(&self, cf: Cf) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.db.iterator_cf(self.cf(cf)?, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(io::Error::other)?;
                Ok(Some((key.to_vec(), value.to_vec())))
            }
        }
    }

    fn write(&self, batch: Batch, sync: bool) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(cf)?, k),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.cf(cf)?, from, to),
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(wb, &opts).map_err(io::Error::other)
    }
}

type Table = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

fn apply(table: &mut Table, op: &Op) {
    match op {
        Op::Put(cf, k, v) => {
            table.insert((*cf, k.clone()), v.clone());
        }
        Op::Delete(cf, k) => {
            table.remove(&(*cf, k.clone()));
        }
        Op::DeleteRange(cf, from, to) => {
            let doomed: Vec<_> = table
                .range((*cf, from.clone())..(*cf, to.clone()))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                table.remove(&k);
            }
        }
    }
}

#[derive(Default)]
struct Mem {
    /// What a reader sees.
    visible: Table,
    /// What survives a crash.
    durable: Table,
    /// Unsynced writes since the last sync, in order.
    pending: Vec<Op>,
}

/// An in-memory disk with crash semantics (for simulation and tests).
#[derive(Default)]
pub struct MemDisk {
    mem: Mutex<Mem>,
}

impl MemDisk {
    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lose every write not yet synced, as a power cut would.
    pub fn crash(&self) {
        let mut mem = self.mem();
        mem.pending.clear();
        mem.visible = mem.durable.clone();
    }
}

impl Disk for MemDisk {
    fn get(&self, cf: Cf, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.mem().visible.get(&(cf, key.to_vec())).cloned())
    }

    fn range(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Pairs> {
        let mem = self.mem();
        let start = (cf, from.to_vec());
        Ok(mem
            .visible
            .range(start..)
            .take_while(|((c, k), _)| *c == cf && to.is_none_or(|to| k.as_slice() < to))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> io::Result<Scan<'a>> {
        // Simulation only: a copy is the simplest point-in-time view.
        Ok(Box::new(self.range(cf, from, to)?.into_iter().map(Ok)))
    }

    fn last(&self, cf: Cf) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mem = self.mem();
        let start = (cf, Vec::new());
        let last = match Cf::ALL.into_iter().find(|c| *c > cf) {
            Some(next) => mem.visible.range(start..(next, Vec::new())).next_back(),
            None => mem.visible.range(start..).next_back(),
        };
        Ok(last.map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: Batch, sync: bool) -> io::Result<()> {
        let mut mem = self.mem();
        for op in &batch.ops {
            apply(&mut mem.visible, op);
        }
        mem.pending.extend(batch.ops);
        // `skip-sync` (test-only, `BERTH_CHAOS_BREAK`): a sync that lies,
        // so a crash loses acknowledged writes (the simulator must see it).
        if sync && !berth_proto::chaos::broken("skip-sync") {
            // Like a WAL: syncing makes everything written before durable.
            let pending = std::mem::take(&mut mem.pending);
            for op in &pending {
                apply(&mut mem.durable, op);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let disk = MemDisk::default();
        let mut b = Batch::default();
        b.put(Cf::Log, b"a", b"1");
        disk.write(b, true).unwrap();
        let mut b = Batch::default();
        b.put(Cf::Log, b"b", b"2");
        b.delete(Cf::Log, b"a");
        disk.write(b, false).unwrap();
        assert_eq!(disk.get(Cf::Log, b"a").unwrap(), None, "visible at once");
        disk.crash();
        assert_eq!(disk.get(Cf::Log, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(disk.get(Cf::Log, b"b").unwrap(), None);
        // A synced write makes earlier unsynced ones durable too.
        let mut b = Batch::default();
        b.put(Cf::Log, b"c", b"3");
        disk.write(b, false).unwrap();
        let mut b = Batch::default();
        b.put(Cf::Sm, b"d", b"4");
        disk.write(b, true).unwrap();
        disk.crash();
        assert_eq!(disk.get(Cf::Log, b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(disk.get(Cf::Sm, b"d").unwrap(), Some(b"4".to_vec()));
    }

    #[test]
    fn ranges_stay_in_their_column_family() {
        let disk = MemDisk::default();
        let mut b = Batch::default();
        for k in [b"1", b"2", b"3"] {
            b.put(Cf::Log, k, k);
            b.put(Cf::Sm, k, k);
        }
        b.delete_range(Cf::Log, b"2", b"3");
        disk.write(b, true).unwrap();
        let keys: Vec<Vec<u8>> = disk
            .range(Cf::Log, b"", None)
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(keys, [b"1".to_vec(), b"3".to_vec()]);
        assert_eq!(disk.range(Cf::Sm, b"2", Some(b"3")).unwrap().len(), 1);
        assert_eq!(disk.last(Cf::Log).unwrap().unwrap().0, b"3".to_vec());
        assert_eq!(disk.last(Cf::RaftMeta).unwrap(), None);
    }
}
