//! The agent's node name and instance id.
//!
//! Keeps invariant 7: node identity is deterministic. It is the
//! `--node-name` flag, or the name persisted in `DATA_DIR/node-name` on the
//! first start (the machine's hostname then), and it is never derived from a
//! container id. A flag that contradicts the persisted name refuses to start,
//! because a silent rename would orphan every sandbox placed on this node.
//!
//! Next to the name, `DATA_DIR/instance-id` holds a random id made on the
//! first start. Two agents claiming one node name (a cloned data dir, the
//! same `--node-name` on two hosts) differ in it, and the leader accepts
//! only the instance it knows unless an operator runs `berth node replace`.
//! A data dir copied with the file keeps the id; the leader still refuses a
//! second live session for a name.

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{read_trimmed, write_atomic};

/// File (inside the data dir) holding the persisted node name.
pub const NODE_NAME_FILE: &str = "node-name";
/// File (inside the data dir) holding this agent instance's random id.
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// This agent instance's id: persisted on first start, then never changed.
pub fn instance_id(data_dir: &Path) -> Result<String, IdentityError> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    let io_err = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    if let Some(id) = read_trimmed(&path).map_err(io_err)? {
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = berth_proto::entropy::uuid().to_string();
    write_atomic(&path, format!("{id}\n").as_bytes()).map_err(io_err)?;
    Ok(id)
}

/// Why the node name could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("--node-name {flag:?} differs from the name {persisted:?} persisted in {path}; a node is never renamed (use the persisted name, or a new --data-dir for a new node)")]
    Mismatch {
        flag: String,
        persisted: String,
        path: PathBuf,
    },
    #[error("invalid node name {name:?}: {reason}")]
    Invalid { name: String, reason: &'static str },
    #[error("no --node-name given and the hostname could not be read: {0}")]
    NoHostname(#[source] io::Error),
    #[error("no --node-name given: on Kubernetes the node name must come from the downward API (env BERTH_NODE_NAME from fieldRef spec.nodeName), never the Pod's hostname")]
    NodeNameRequired,
    #[error("cannot read or persist the node name in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Settle the node name: flag, else persisted, else hostname; persist it.
pub fn resolve(data_dir: &Path, flag: Option<&str>) -> Result<String, IdentityError> {
    resolve_with(data_dir, flag, hostname)
}

/// [`resolve`] for an agent in a Pod (the kube driver): flag, else
/// persisted; never the hostname, which is the Pod's own name and changes
/// with every Pod (invariant 7).
pub fn resolve_without_hostname(
    data_dir: &Path,
    flag: Option<&str>,
) -> Result<String, IdentityError> {
    resolve_with(data_dir, flag, || Err(io::Error::other("no hostname"))).map_err(|e| match e {
        IdentityError::NoHostname(_) => IdentityError::NodeNameRequired,
        other => other,
    })
}

/// [`resolve`] with an injectable hostname source (for tests).
pub fn resolve_with(
    data_dir: &Path,
    flag: Option<&str>,
    hostname: impl FnOnce() -> io::Result<String>,
) -> Result<String, IdentityError> {
    let path = data_dir.join(NODE_NAME_FILE);
    let io_err = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    let persisted = read_trimmed(&path).map_err(io_err)?;
    let name = match (flag, persisted) {
        (Some(flag), Some(persisted)) if flag != persisted => {
            return Err(IdentityError::Mismatch {
                flag: flag.to_string(),
                persisted,
                path,
            })
        }
        (_, Some(persisted)) => return validate(persisted),
        (Some(flag), None) => validate(flag.to_string())?,
        (None, None) => validate(hostname().map_err(IdentityError::NoHostname)?)?,
    };
    write_atomic(&path, format!("{name}\n").as_bytes()).map_err(io_err)?;
    Ok(name)
}

fn validate(name: String) -> Result<String, IdentityError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 253 {
        Some("longer than 253 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("only letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IdentityError::Invalid { name, reason }),
        None => Ok(name),
    }
}

/// The machine's hostname (`/etc/hostname`, else the kernel's).
fn hostname() -> io::Result<String> {
    for p in ["/etc/hostname", "/proc/sys/kernel/hostname"] {
        if let Some(h) = read_trimmed(Path::new(p))? {
            if !h.is_empty() {
                return Ok(h);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "hostname is empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &'static str) -> impl FnOnce() -> io::Result<String> {
        move || Ok(name.to_string())
    }

    #[test]
    fn first_start_persists_hostname_forever() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_with(dir.path(), None, host("vm1")).unwrap(), "vm1");
        // The machine is renamed: the node is not.
        assert_eq!(resolve_with(dir.path(), None, host("vm2")).unwrap(), "vm1");
        assert_eq!(
            resolve_with(dir.path(), Some("vm1"), host("vm2")).unwrap(),
            "vm1"
        );
    }

    #[test]
    fn flag_is_persisted_and_a_different_flag_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_with(dir.path(), Some("node-a"), host("vm")).unwrap(),
            "node-a"
        );
        assert_eq!(
            resolve_with(dir.path(), None, host("vm")).unwrap(),
            "node-a"
        );
        let err = resolve_with(dir.path(), Some("node-b"), host("vm")).unwrap_err();
        assert!(matches!(err, IdentityError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("node-a"));
    }

    #[test]
    fn invalid_names_are_refused_and_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a b", "x/y"] {
            let err = resolve_with(dir.path(), Some(bad), host("vm")).unwrap_err();
            assert!(matches!(err, IdentityError::Invalid { .. }), "{err}");
        }
        assert!(!dir.path().join(NODE_NAME_FILE).exists());
    }

    #[test]
    fn the_instance_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = instance_id(dir.path()).unwrap();
        assert_eq!(first.len(), 36);
        assert_eq!(instance_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(instance_id(other.path()).unwrap(), first);
    }

    #[test]
    fn hostname_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_with(dir.path(), None, || Err(io::Error::other("boom"))).unwrap_err();
        assert!(matches!(err, IdentityError::NoHostname(_)));
    }

    #[test]
    fn in_a_pod_the_hostname_is_never_the_node_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve_without_hostname(dir.path(), None),
            Err(IdentityError::NodeNameRequired)
        ));
        assert_eq!(
            resolve_without_hostname(dir.path(), Some("worker-1")).unwrap(),
            "worker-1"
        );
        // Persisted: the same name after a restart without the env.
        assert_eq!(
            resolve_without_hostname(dir.path(), None).unwrap(),
            "worker-1"
        );
    }
}
