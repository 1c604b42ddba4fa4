//! Applying a sandbox policy (`Ensure.policy`) to a container.
//!
//! | policy field             | container setting                              |
//! |--------------------------|------------------------------------------------|
//! | `network: none`          | `HostConfig.NetworkMode = "none"`              |
//! | `readOnlyRootFilesystem` | `HostConfig.ReadonlyRootfs` + tmpfs at `/tmp`  |
//! | `resources.cpus`         | `HostConfig.NanoCpus`                          |
//! | `resources.memory`       | `HostConfig.Memory` (bytes)                    |
//! | `runAsUser`              | `Config.User` (`uid[:gid]`)                    |
//! | `env`                    | overlaid on the sandbox env                    |
//! | the document itself      | bind `HOSTFILE:/etc/berth/policy.yaml:ro`      |
//!
//! `readiness` is the control plane's business. The document is written
//! atomically to `DATA_DIR/policies/<sandbox>-r<revision>.yaml`: each
//! revision keeps its own file (a revision's document never changes), so a
//! rollback mounts its own policy again.
//! The workspace volume stays a writable bind at `/sandbox` whatever the
//! root filesystem is. A sandbox's files are deleted when its container is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::agent_v1::Ensure;
use berth_proto::policy::{Network, Policy, POLICY_MOUNT_PATH};
use bollard::models::ContainerCreateBody;

use super::DriverError;
use crate::fsutil::write_atomic_mode;

/// Subdirectory of the agent's data dir holding policy documents.
pub const POLICY_SUBDIR: &str = "policies";
/// Mode of a policy file: readable by any `runAsUser` in the sandbox.
const POLICY_FILE_MODE: u32 = 0o644;
/// Options of the `/tmp` tmpfs given to read-only sandboxes.
const TMPFS_OPTIONS: &str = "rw,nosuid,nodev,mode=1777";

/// `Ensure.policy` parsed: `None` without a policy, `Invalid` if it is bad.
pub(super) fn parse(e: &Ensure) -> Result<Option<Policy>, DriverError> {
    e.policy
        .as_deref()
        .map(|doc| Policy::parse(doc).map_err(|err| DriverError::Invalid(err.to_string())))
        .transpose()
}

/// Host path of the policy document of one revision of a sandbox.
pub fn policy_file(dir: &Path, sandbox: &str, revision: u64) -> PathBuf {
    dir.join(format!("{sandbox}-r{revision}.yaml"))
}

/// Write the revision's document (atomically) and return its host path.
pub(super) fn write(dir: &Path, e: &Ensure, document: &str) -> Result<PathBuf, DriverError> {
    let io = |source| DriverError::Io {
        op: "write policy file",
        source,
    };
    let path = std::path::absolute(policy_file(dir, &e.name, e.revision)).map_err(io)?;
    if path
        .to_str()
        .is_none_or(|p| p.contains(':') || p.contains(','))
    {
        return Err(DriverError::Invalid(format!(
            "policy file path {} cannot be bind-mounted (':' or ',' or not UTF-8)",
            path.display()
        )));
    }
    write_atomic_mode(&path, document.as_bytes(), POLICY_FILE_MODE).map_err(io)?;
    Ok(path)
}

/// The container env: the sandbox env overlaid by the policy env, sorted.
pub(super) fn env(e: &Ensure, policy: Option<&Policy>) -> Vec<String> {
    super::merged_env(e, policy)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// Apply everything but env to a create request whose binds are set.
pub(super) fn apply(policy: &Policy, host_file: &Path, body: &mut ContainerCreateBody) {
    if let Some(user) = &policy.run_as_user {
        body.user = Some(user.clone());
    }
    let host = body.host_config.get_or_insert_with(Default::default);
    host.binds
        .get_or_insert_with(Vec::new)
        .push(format!("{}:{POLICY_MOUNT_PATH}:ro", host_file.display()));
    if policy.network == Network::None {
        host.network_mode = Some("none".to_string());
    }
    if policy.read_only_root_filesystem {
        host.readonly_rootfs = Some(true);
        host.tmpfs = Some(HashMap::from([(
            "/tmp".to_string(),
            TMPFS_OPTIONS.to_string(),
        )]));
    }
    host.nano_cpus = policy.nano_cpus();
    host.memory = policy.memory_bytes();
}

/// Delete every policy file of `sandbox` (its container is gone).
pub(super) fn prune(dir: &Path, sandbox: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let owned = file
            .to_str()
            .and_then(|f| f.strip_suffix(".yaml"))
            .and_then(|f| f.rsplit_once("-r"))
            .is_some_and(|(name, rev)| {
                name == sandbox && !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_digit())
            });
        if owned {
            if let Err(err) = std::fs::remove_file(entry.path()) {
                tracing::warn!(%sandbox, file = %entry.path().display(), error = %err, "cannot delete policy file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::HostConfig;

    fn ensure(policy: Option<&str>) -> Ensure {
        Ensure {
            name: "s1".into(),
            revision: 3,
            env: [("A", "1"), ("MODE", "loose")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            policy: policy.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn maps_every_field() {
        let doc = "network: none\nreadOnlyRootFilesystem: true\nresources: {memory: 64Mi, cpus: 0.5}\nrunAsUser: \"1000:1000\"\nenv: {MODE: strict}\n";
        let e = ensure(Some(doc));
        let policy = parse(&e).unwrap().unwrap();
        assert_eq!(env(&e, Some(&policy)), ["A=1", "MODE=strict"]);
        assert_eq!(env(&e, None), ["A=1", "MODE=loose"]);
        let mut body = ContainerCreateBody {
            host_config: Some(HostConfig {
                binds: Some(vec!["vol:/sandbox".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&policy, Path::new("/d/policies/s1-r3.yaml"), &mut body);
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let host = body.host_config.unwrap();
        assert_eq!(
            host.binds.unwrap(),
            [
                "vol:/sandbox",
                "/d/policies/s1-r3.yaml:/etc/berth/policy.yaml:ro"
            ]
        );
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(
            (host.nano_cpus, host.memory),
            (Some(500_000_000), Some(64 << 20))
        );
    }

    #[test]
    fn defaults_change_nothing_and_bad_documents_are_invalid() {
        let policy = parse(&ensure(Some(""))).unwrap().unwrap();
        let mut body = ContainerCreateBody::default();
        apply(&policy, Path::new("/p.yaml"), &mut body);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode, None);
        assert_eq!((host.readonly_rootfs, host.tmpfs), (None, None));
        assert_eq!((host.nano_cpus, host.memory, body.user), (None, None, None));
        assert!(parse(&ensure(None)).unwrap().is_none());
        let err = parse(&ensure(Some("network: bridge\n"))).unwrap_err();
        assert!(matches!(err, DriverError::Invalid(_)), "{err}");
    }

    #[test]
    fn files_per_revision_and_pruned_per_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = ensure(Some("env: {A: x}\n"));
        let p3 = write(dir.path(), &e, "one\n").unwrap();
        e.revision = 1;
        let p1 = write(dir.path(), &e, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p3).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&p1).unwrap(), "two\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p1).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        e.name = "s1-r1".into();
        let other = write(dir.path(), &e, "three\n").unwrap();
        prune(dir.path(), "s1");
        assert!(!p1.exists() && !p3.exists());
        assert!(other.exists(), "another sandbox's file is kept");
    }
}
