//! Snapshots end to end over the stores: built from one node's records,
//! streamed into another's, installs a crash cut short finished on load,
//! and when the next one is due.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::disk::{Batch, Cf, MemDisk, SharedDisk};
use super::{keys, open, open_on, open_rocks, StateMachineStore};
use crate::codec;
use crate::model::{Desired, NodeRecord, Phase, SandboxRecord, SandboxSpec};
use crate::{Command, Proposal, TypeConfig};

fn record(i: usize) -> SandboxRecord {
    SandboxRecord {
        name: format!("s{i}"),
        uid: format!("u{i}"),
        spec: SandboxSpec {
            image: "busybox".into(),
            policy: None,
            env: Default::default(),
            secret_env: Default::default(),
        },
        revision: 1,
        created_at_ms: 5,
        phase: Phase::Running,
        message: String::new(),
        desired: Desired::Running,
        node: Some("n1".into()),
        container_id: format!("c{i}"),
        volume: format!("berth-s{i}-u{i}"),
        volume_uid: format!("u{i}"),
        volume_seeded: true,
        revisions: vec![],
        stable_revision: 1,
        operation: None,
        trace: String::new(),
        events: Vec::new(),
    }
}

/// A store over `disk` holding `n` sandboxes and a node.
fn store_with(disk: &SharedDisk, n: usize) -> StateMachineStore {
    let mut batch = Batch::default();
    for i in 0..n {
        let r = record(i);
        batch.put(
            Cf::Sm,
            keys::sandbox_key(&r.name),
            codec::encode(&r).unwrap(),
        );
    }
    let node = NodeRecord {
        name: "n1".into(),
        driver: "container".into(),
        data_addr: "127.0.0.1:1".into(),
        cpus: 2,
        memory_bytes: 3,
        ready: true,
        message: String::new(),
        registered_at_ms: 1,
        changed_at_ms: 2,
        instance_id: "i-1".into(),
        replace_allowed: false,
    };
    batch.put(Cf::Sm, keys::node_key("n1"), codec::encode(&node).unwrap());
    disk.write(batch, true).unwrap();
    let (_, sm) = open_on(disk.clone()).unwrap();
    sm
}

async fn stream_bytes(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
    let mut data = snapshot.snapshot;
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.unwrap();
    bytes
}

fn chunk_keys(disk: &SharedDisk) -> usize {
    let (from, _) = keys::chunk_range(0);
    let (_, to) = keys::chunk_range(u64::MAX);
    disk.range(Cf::SmMeta, &from, Some(&to)).unwrap().len()
}

/// Sends `snapshot` to `to` as openraft's chunked transport does.
async fn transfer(snapshot: Snapshot<TypeConfig>, to: &mut StateMachineStore) {
    let meta = snapshot.meta.clone();
    let bytes = stream_bytes(snapshot).await;
    let mut incoming = to.begin_receiving_snapshot().await.unwrap();
    for part in bytes.chunks(256 * 1024) {
        incoming.write_all(part).await.unwrap();
    }
    incoming.shutdown().await.unwrap();
    to.install_snapshot(&meta, incoming).await.unwrap();
}

#[tokio::test]
async fn a_snapshot_streams_from_one_store_into_another() {
    let disk_a: SharedDisk = Arc::new(MemDisk::default());
    let mut a = store_with(&disk_a, 6_000);
    let built = a.build_snapshot().await.unwrap();
    let meta = built.meta.clone();
    assert!(chunk_keys(&disk_a) > 1, "kept in chunks, not one value");

    let disk_b: SharedDisk = Arc::new(MemDisk::default());
    let mut b = store_with(&disk_b, 7);
    let mut updates = b.shared().subscribe();
    transfer(built, &mut b).await;
    assert_eq!(b.shared().read().table, a.shared().read().table);
    assert_eq!(b.shared().read().table.len(), 6_000);
    assert!(updates.try_recv().unwrap().everything);
    let current = b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);

    // What it installed is on its disk: a restart loads the same state.
    let (_, reloaded) = open_on(disk_b.clone()).unwrap();
    assert_eq!(reloaded.shared().read().table, a.shared().read().table);
}

#[tokio::test]
async fn an_install_cut_short_by_a_crash_is_finished_on_load() {
    let disk_a: SharedDisk = Arc::new(MemDisk::default());
    let mut a = store_with(&disk_a, 2_500);
    let bytes = stream_bytes(a.build_snapshot().await.unwrap()).await;

    // B received the stream and began installing it: the mark is on disk
    // and its old records are half replaced.
    let mem = Arc::new(MemDisk::default());
    let disk_b: SharedDisk = mem.clone();
    let mut b = store_with(&disk_b, 10);
    let mut incoming = b.begin_receiving_snapshot().await.unwrap();
    incoming.write_all(&bytes).await.unwrap();
    incoming.shutdown().await.unwrap();
    let mut batch = Batch::default();
    let stored = serde_json::json!({"id": incoming.id(), "len": incoming.len()});
    batch.put(
        Cf::SmMeta,
        keys::SNAPSHOT_INSTALLING,
        codec::encode(&stored).unwrap(),
    );
    batch.delete_range(Cf::Sm, b"", keys::SM_END);
    batch.put(
        Cf::Sm,
        keys::sandbox_key("s1"),
        codec::encode(&record(1)).unwrap(),
    );
    disk_b.write(batch, true).unwrap();
    mem.crash();

    let (_, b) = open_on(disk_b.clone()).unwrap();
    assert_eq!(b.shared().read().table, a.shared().read().table);
    assert_eq!(
        b.shared().read().last_applied,
        a.shared().read().last_applied
    );
    assert_eq!(
        disk_b.get(Cf::SmMeta, keys::SNAPSHOT_INSTALLING).unwrap(),
        None
    );
}

#[tokio::test]
async fn a_snapshot_being_sent_survives_newer_ones() {
    let disk: SharedDisk = Arc::new(MemDisk::default());
    let mut sm = store_with(&disk, 2_000);
    sm.build_snapshot().await.unwrap();
    let sending = sm.get_current_snapshot().await.unwrap().unwrap();
    // Two newer snapshots retire the one being sent.
    sm.build_snapshot().await.unwrap();
    let newest = sm.build_snapshot().await.unwrap();
    let newest_meta = newest.meta.clone();
    drop(newest);
    let old_len = stream_bytes(sending).await.len();
    assert!(old_len > 0);
    // Once its reader is gone, only the newest snapshot's chunks remain.
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, newest_meta);
    let newest_len = stream_bytes(current).await.len();
    assert_eq!(
        chunk_keys(&disk),
        newest_len.div_ceil(super::chunks::CHUNK_BYTES)
    );
}

#[tokio::test]
async fn streams_between_rocksdb_stores() {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = store_with(&open_rocks(dir_a.path()).unwrap(), 3_000);
    let dir_b = tempfile::tempdir().unwrap();
    let (_, mut b) = open(dir_b.path()).unwrap();
    let built = a.build_snapshot().await.unwrap();
    transfer(built, &mut b).await;
    assert_eq!(b.shared().read().table, a.shared().read().table);
    drop(b);
    let (_, b) = open(dir_b.path()).unwrap();
    assert_eq!(b.shared().read().table, a.shared().read().table);
    assert_eq!(b.shared().read().table.len(), 3_000);
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            command,
            term: None,
            request_id: None,
            audit: None,
            trace: String::new(),
        }),
    }
}

fn forget(i: u64) -> Command {
    Command::ForgetVolume {
        volume: format!("v{i}"),
    }
}

#[tokio::test]
async fn a_snapshot_is_due_after_as_many_writes_as_records() {
    let disk: SharedDisk = Arc::new(MemDisk::default());
    let mut sm = store_with(&disk, 100);
    let state = sm.shared();
    assert!(!state.snapshot_due(10));
    // Writes count one by one, batched or not.
    let batch = Command::Batch {
        proposals: (0..60)
            .map(|i| Proposal {
                command: forget(i),
                term: None,
                request_id: None,
                audit: None,
                trace: String::new(),
            })
            .collect(),
    };
    sm.apply([entry(1, batch)]).await.unwrap();
    assert_eq!(state.writes_since_snapshot(), 60);
    assert!(!state.snapshot_due(10), "60 writes, 100 records");
    sm.apply((2..42).map(|i| entry(i, forget(i))))
        .await
        .unwrap();
    assert!(state.snapshot_due(10), "100 writes, 100 records");
    assert!(!state.snapshot_due(1_000), "--snapshot-every is a floor");
    sm.build_snapshot().await.unwrap();
    assert_eq!(state.writes_since_snapshot(), 0);
    assert!(!state.snapshot_due(10));
}
