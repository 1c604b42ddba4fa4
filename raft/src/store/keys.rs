//! Key layout. Log keys are big-endian u64 indexes, so the log sorts by
//! index and truncate/purge are range deletes.

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";

pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"membership";
/// Where release 1 kept its whole snapshot as one value (deleted on load).
pub(crate) const LEGACY_SNAPSHOT: &[u8] = b"snapshot";
/// The stored snapshot openraft is handed ([`super::state_machine`]).
pub(crate) const SNAPSHOT_CURRENT: &[u8] = b"snapshot_current";
/// A snapshot whose install started and has not finished: finished on load.
pub(crate) const SNAPSHOT_INSTALLING: &[u8] = b"snapshot_installing";
/// Chunks of stored snapshots: `snap/` + store id + chunk number.
pub(crate) const CHUNK_PREFIX: &[u8] = b"snap/";

pub(crate) fn chunk_key(id: u64, n: u64) -> Vec<u8> {
    let mut key = CHUNK_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The keys of every chunk of stored snapshot `id`: `[from, to)`.
pub(crate) fn chunk_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    let from = [CHUNK_PREFIX, &id.to_be_bytes()].concat();
    let to = match id.checked_add(1) {
        Some(next) => [CHUNK_PREFIX, &next.to_be_bytes()].concat(),
        None => [CHUNK_PREFIX, &[0xff; 9]].concat(),
    };
    (from, to)
}

pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub(crate) fn sandbox_key(name: &str) -> Vec<u8> {
    let mut key = SANDBOX_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) const SANDBOX_PREFIX: &[u8] = b"sandbox/";
/// Above every key of the `sm` column family (all start with a lowercase
/// ASCII prefix): `[b"", SM_END)` is all of it.
pub(crate) const SM_END: &[u8] = &[0xff; 8];
pub(crate) const NODE_PREFIX: &[u8] = b"node/";

pub(crate) fn node_key(name: &str) -> Vec<u8> {
    let mut key = NODE_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) const REQUEST_PREFIX: &[u8] = b"request/";
pub(crate) const VOLUME_PREFIX: &[u8] = b"volume/";

pub(crate) fn volume_key(volume: &str) -> Vec<u8> {
    let mut key = VOLUME_PREFIX.to_vec();
    key.extend_from_slice(volume.as_bytes());
    key
}

pub(crate) fn request_key(id: &str) -> Vec<u8> {
    let mut key = REQUEST_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) const TOKEN_PREFIX: &[u8] = b"token/";
pub(crate) const TENANT_PREFIX: &[u8] = b"tenant/";

pub(crate) fn token_key(id: &str) -> Vec<u8> {
    let mut key = TOKEN_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn tenant_key(name: &str) -> Vec<u8> {
    let mut key = TENANT_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) const AUDIT_PREFIX: &[u8] = b"audit/";

/// The key of the audit event at log position `(index, slot)`; slot 0
/// (an entry of one proposal) keeps the shorter key entries always had.
pub(crate) fn audit_key(index: u64, slot: u32) -> Vec<u8> {
    let mut key = AUDIT_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    if slot != 0 {
        key.extend_from_slice(&slot.to_be_bytes());
    }
    key
}
