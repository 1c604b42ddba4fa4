//! Secret environment variables, sealed at rest with the cluster data key.
//!
//! The API node seals each secret value (ChaCha20-Poly1305, a random nonce,
//! the sandbox's uid and the variable's name as associated data) before
//! proposing, so the Raft log, the state machine and snapshots only ever
//! hold ciphertext. The leader opens them only to build the command for
//! the agent that runs the sandbox, sent over mutual TLS. Answers show
//! [`REDACTED`] instead.
//!
//! The key file (`berthd --data-key-file`) has one key per line, `ID:HEX`
//! (64 hex digits, 32 bytes). The first line seals; every line opens, so a
//! key is rotated by putting a new one first on every node, and old values
//! keep opening until they are sealed again (an update that sets them).
//!
//! Invariant kept here: no plaintext secret is ever persisted or returned.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// What answers show in place of a secret value.
pub const REDACTED: &str = "<secret>";
const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("this cluster has no data key (berthd --data-key-file), so it cannot keep secrets")]
    NoKey,
    #[error("the data key file {path}: {why}")]
    BadKeyFile { path: String, why: String },
    #[error("secret {name:?} is sealed with data key {id:?}, which this node does not have")]
    UnknownKey { name: String, id: String },
    #[error(
        "secret {0:?} does not open with the data key (corrupt, or moved from another sandbox)"
    )]
    Corrupt(String),
}

struct DataKeys {
    /// Id of the key that seals.
    current: String,
    keys: BTreeMap<String, LessSafeKey>,
}

static KEYS: OnceLock<DataKeys> = OnceLock::new();

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load(text: &str) -> Result<DataKeys, String> {
    let mut keys = BTreeMap::new();
    let mut current = None;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (id, key) = line
            .split_once(':')
            .ok_or("each line must be ID:HEX (64 hex digits)")?;
        let valid_id = !id.is_empty()
            && id.len() <= 32
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid_id {
            return Err(format!("key id {id:?} must be 1-32 letters, digits or '-'"));
        }
        let bytes = parse_hex(key)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("key {id:?} must be 64 hex digits (32 bytes)"))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| "unusable key")?;
        if keys.insert(id.to_string(), LessSafeKey::new(key)).is_some() {
            return Err(format!("key id {id:?} appears twice"));
        }
        current.get_or_insert_with(|| id.to_string());
    }
    let current = current.ok_or("the file holds no key")?;
    Ok(DataKeys { current, keys })
}

/// Loads the key file once, at start-up.
pub fn init(path: &Path) -> Result<(), SecretError> {
    let bad = |why: String| SecretError::BadKeyFile {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let keys = load(&text).map_err(bad)?;
    let _ = KEYS.set(keys);
    Ok(())
}

fn aad(uid: &str, name: &str) -> String {
    format!("berth-secret-env:{uid}:{name}")
}

fn seal_with(keys: &DataKeys, uid: &str, name: &str, value: &str) -> Result<String, SecretError> {
    let key = keys.keys.get(&keys.current).ok_or(SecretError::NoKey)?;
    let mut nonce = [0u8; NONCE_LEN];
    berth_proto::entropy::fill(&mut nonce);
    let mut sealed = value.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(uid, name).as_bytes()),
        &mut sealed,
    )
    .map_err(|_| SecretError::Corrupt(name.to_string()))?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(format!("{PREFIX}{}:{}", keys.current, hex(&out)))
}

fn open_with(keys: &DataKeys, uid: &str, name: &str, sealed: &str) -> Result<String, SecretError> {
    let corrupt = || SecretError::Corrupt(name.to_string());
    let (id, data) = sealed
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(corrupt)?;
    let key = keys.keys.get(id).ok_or_else(|| SecretError::UnknownKey {
        name: name.to_string(),
        id: id.to_string(),
    })?;
    let mut bytes = parse_hex(data)
        .filter(|b| b.len() > NONCE_LEN)
        .ok_or_else(corrupt)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[..NONCE_LEN]);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(uid, name).as_bytes()),
            &mut bytes[NONCE_LEN..],
        )
        .map_err(|_| corrupt())?;
    String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
}

/// Seals secret `name` of the sandbox with uid `uid`.
pub fn seal(uid: &str, name: &str, value: &str) -> Result<String, SecretError> {
    seal_with(KEYS.get().ok_or(SecretError::NoKey)?, uid, name, value)
}

/// Opens what [`seal`] made for the same sandbox and name.
pub fn open(uid: &str, name: &str, sealed: &str) -> Result<String, SecretError> {
    open_with(KEYS.get().ok_or(SecretError::NoKey)?, uid, name, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "1:0001020304050607080900010203040506070809000102030405060708090001";
    const K2: &str = "2:ff01020304050607080900010203040506070809000102030405060708090001";

    #[test]
    fn sealed_values_open_only_for_their_sandbox_and_name() {
        let keys = load(K1).unwrap();
        let sealed = seal_with(&keys, "uid-1", "TOKEN", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            seal_with(&keys, "uid-1", "TOKEN", "hunter2").unwrap()
        );
        assert_eq!(
            open_with(&keys, "uid-1", "TOKEN", &sealed).unwrap(),
            "hunter2"
        );
        assert!(open_with(&keys, "uid-2", "TOKEN", &sealed).is_err());
        assert!(open_with(&keys, "uid-1", "OTHER", &sealed).is_err());
        // Flip the last hex digit (always a change).
        let mut tampered = sealed.clone();
        let last = tampered.pop();
        tampered.push(if last == Some('0') { '1' } else { '0' });
        assert!(open_with(&keys, "uid-1", "TOKEN", &tampered).is_err());
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_any() {
        let old = load(K1).unwrap();
        let sealed_old = seal_with(&old, "u", "A", "v").unwrap();
        let rotated = load(&format!("{K2}\n{K1}\n")).unwrap();
        assert_eq!(open_with(&rotated, "u", "A", &sealed_old).unwrap(), "v");
        let sealed_new = seal_with(&rotated, "u", "A", "v").unwrap();
        assert!(sealed_new.starts_with("sealed:v1:2:"));
        assert!(matches!(
            open_with(&old, "u", "A", &sealed_new),
            Err(SecretError::UnknownKey { .. })
        ));
    }

    #[test]
    fn bad_key_files_are_refused() {
        for bad in ["", "nocolon", "1:abcd", "x y:00", &format!("{K1}\n{K1}")] {
            assert!(load(bad).is_err(), "{bad}");
        }
    }
}
