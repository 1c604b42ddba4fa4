//! The Kubernetes objects one sandbox revision becomes, as pure functions
//! of the agent's `Ensure` command: a PersistentVolumeClaim for the
//! workspace, a Pod per revision, a ConfigMap with the policy document and,
//! for `network: none`, a NetworkPolicy that isolates the Pod.
//!
//! | policy field             | Pod setting                                        |
//! |--------------------------|----------------------------------------------------|
//! | `network: none`          | a NetworkPolicy denying all ingress and egress     |
//! | `readOnlyRootFilesystem` | `securityContext.readOnlyRootFilesystem` + `/tmp` emptyDir |
//! | `resources.cpus`         | cpu request and limit                              |
//! | `resources.memory`       | memory request and limit                           |
//! | `runAsUser`              | `securityContext.runAsUser` / `runAsGroup`         |
//! | `env`                    | overlaid on the sandbox env                        |
//! | secret env (`secret_keys`) | a Secret per revision, referenced by `secretKeyRef` |
//! | `readiness.command`      | an exec `readinessProbe`                           |
//! | the document itself      | ConfigMap, mounted read-only at `/etc/berth/policy.yaml` |
//!
//! Invariants kept here: the workspace is one PVC per sandbox, named by
//! the volume the control plane fixed at creation (4), and every Pod of the
//! sandbox mounts it at `/sandbox`; the image's `/sandbox` seeds it once,
//! guarded by a sentinel file, so user data is never overwritten; a Pod is
//! pinned to this agent's node (7).

use std::collections::BTreeMap;

use berth_proto::agent_v1::Ensure;
use berth_proto::policy::{parse_memory, Network, Policy, POLICY_MOUNT_PATH};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, Secret, SecretKeySelector, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// Labels (short values, used to select) and annotations (the rest).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_UID: &str = "berth.dev/uid";
pub const LABEL_VOLUME_UID: &str = "berth.dev/volume-uid";
pub const LABEL_REVISION: &str = "berth.dev/revision";
pub const ANNOTATION_SANDBOX: &str = "berth.dev/sandbox";
pub const ANNOTATION_VOLUME: &str = "berth.dev/volume";
/// On a PVC: the node whose agent made it (claims are namespace-wide, so
/// each agent reports only its own).
pub const ANNOTATION_NODE: &str = "berth.dev/node";
/// On the image pre-pull Pods (`berth.dev/role=pull`), which are not sandboxes.
pub const LABEL_ROLE: &str = "berth.dev/role";
pub const MANAGER: &str = "berth";
/// The selector of everything berth makes.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=berth";
/// How long a sandbox's processes get between SIGTERM and SIGKILL.
pub const GRACE_SECONDS: i64 = 10;

/// The file the init container leaves in a seeded workspace.
pub const SENTINEL: &str = ".berth-seeded";
/// Where the init container sees the workspace while it seeds it.
const SEED_MOUNT: &str = "/berth-workspace";
const WORKSPACE: &str = "workspace";
const POLICY_VOLUME: &str = "policy";
const TMP_VOLUME: &str = "tmp";
pub const SANDBOX_CONTAINER: &str = "sandbox";

/// What the agent was told about storage.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Requested size of a new workspace PVC (Kubernetes quantity).
    pub size: String,
    /// Storage class of new PVCs (None: the cluster's default).
    pub class: Option<String>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            size: "2Gi".to_string(),
            class: None,
        }
    }
}

/// The owner of a workspace volume: `Ensure.volume_uid`, or the
/// sandbox's own uid when unset.
fn volume_owner(e: &Ensure) -> &str {
    crate::driver::volume_owner(&e.volume_uid, &e.uid)
}

/// Name of the Pod of revision `revision` of sandbox `sandbox`.
pub fn pod_name(sandbox: &str, revision: u64) -> String {
    format!("berth-{sandbox}-r{revision}")
}

/// Name of the ConfigMap holding revision `revision`'s policy.
pub fn policy_name(sandbox: &str, revision: u64) -> String {
    format!("berth-{sandbox}-r{revision}-policy")
}

/// Name of the Secret holding revision `revision`'s secret env.
pub fn secret_name(sandbox: &str, revision: u64) -> String {
    format!("berth-{sandbox}-r{revision}-env")
}

/// Name of the NetworkPolicy isolating the sandbox's Pods.
pub fn network_policy_name(sandbox: &str) -> String {
    format!("berth-{sandbox}-isolated")
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>, e: &Ensure) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        annotations: Some(BTreeMap::from([
            (ANNOTATION_SANDBOX.to_string(), e.name.clone()),
            (ANNOTATION_VOLUME.to_string(), e.volume.clone()),
        ])),
        ..ObjectMeta::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())]);
    for (k, v) in pairs {
        labels.insert((*k).to_string(), (*v).to_string());
    }
    labels
}

/// The sandbox's workspace: ReadWriteOnce, created once, never replaced.
pub fn pvc(e: &Ensure, namespace: &str, node: &str, storage: &Storage) -> PersistentVolumeClaim {
    let mut metadata = meta(
        &e.volume,
        namespace,
        labels(&[(LABEL_VOLUME_UID, volume_owner(e))]),
        e,
    );
    if let Some(a) = metadata.annotations.as_mut() {
        a.insert(ANNOTATION_NODE.to_string(), node.to_string());
    }
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: storage.class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The revision's policy document, to mount at `/etc/berth/policy.yaml`.
pub fn policy_config_map(e: &Ensure, namespace: &str) -> Option<ConfigMap> {
    let document = e.policy.as_ref()?;
    Some(ConfigMap {
        metadata: meta(
            &policy_name(&e.name, e.revision),
            namespace,
            labels(&[
                (LABEL_UID, &e.uid),
                (LABEL_REVISION, &e.revision.to_string()),
            ]),
            e,
        ),
        data: Some(BTreeMap::from([(
            "policy.yaml".to_string(),
            document.clone(),
        )])),
        ..ConfigMap::default()
    })
}

/// The revision's secret env, which the Pod references and never holds.
pub fn env_secret(e: &Ensure, namespace: &str) -> Option<Secret> {
    let data: BTreeMap<String, String> = e
        .secret_keys
        .iter()
        .filter_map(|k| e.env.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    (!data.is_empty()).then(|| Secret {
        metadata: meta(
            &secret_name(&e.name, e.revision),
            namespace,
            labels(&[
                (LABEL_UID, &e.uid),
                (LABEL_REVISION, &e.revision.to_string()),
            ]),
            e,
        ),
        string_data: Some(data),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    })
}

/// For `network: none`: no traffic in or out of the sandbox's Pods.
pub fn network_policy(
    e: &Ensure,
    namespace: &str,
    policy: Option<&Policy>,
) -> Option<NetworkPolicy> {
    if policy.map(|p| p.network) != Some(Network::None) {
        return None;
    }
    Some(NetworkPolicy {
        metadata: meta(
            &network_policy_name(&e.name),
            namespace,
            labels(&[(LABEL_UID, &e.uid)]),
            e,
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(LABEL_UID.to_string(), e.uid.clone())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: Some(vec![]),
            egress: Some(vec![]),
        }),
    })
}

/// `uid[:gid]` of `runAsUser`.
fn run_as(policy: Option<&Policy>) -> Result<(Option<i64>, Option<i64>), String> {
    let Some(spec) = policy.and_then(|p| p.run_as_user.as_deref()) else {
        return Ok((None, None));
    };
    let parse = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("runAsUser {spec:?}: Kubernetes needs numeric uid[:gid]"))
    };
    match spec.split_once(':') {
        Some((uid, gid)) => Ok((Some(parse(uid)?), Some(parse(gid)?))),
        None => Ok((Some(parse(spec)?), None)),
    }
}

fn resources(policy: Option<&Policy>) -> Option<ResourceRequirements> {
    let r = &policy?.resources;
    let mut amounts = BTreeMap::new();
    if let Some(cpus) = r.cpus {
        let millis = (cpus * 1000.0).ceil().max(1.0) as u64;
        amounts.insert("cpu".to_string(), Quantity(format!("{millis}m")));
    }
    if let Some(bytes) = r.memory.as_deref().and_then(parse_memory) {
        amounts.insert("memory".to_string(), Quantity(bytes.to_string()));
    }
    (!amounts.is_empty()).then(|| ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    })
}

/// The container env: the sandbox env overlaid by the policy env, sorted;
/// a secret (one the policy does not override) is a reference to the
/// revision's Secret, never its value.
fn env(e: &Ensure, policy: Option<&Policy>) -> Vec<EnvVar> {
    let overridden = |k: &str| policy.is_some_and(|p| p.env.contains_key(k));
    crate::driver::merged_env(e, policy)
        .into_iter()
        .map(|(name, value)| {
            if e.secret_keys.iter().any(|k| k == name) && !overridden(name) {
                EnvVar {
                    name: name.to_string(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret_name(&e.name, e.revision),
                            key: name.to_string(),
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                }
            } else {
                EnvVar {
                    name: name.to_string(),
                    value: Some(value.to_string()),
                    ..EnvVar::default()
                }
            }
        })
        .collect()
}

/// The shell script of the init container: copy the image's `/sandbox`
/// into an empty workspace, once.
pub fn seed_script() -> String {
    format!(
        "set -e; if [ ! -e {SEED_MOUNT}/{SENTINEL} ]; then \
         if [ -d /sandbox ]; then cp -a /sandbox/. {SEED_MOUNT}/; fi; \
         touch {SEED_MOUNT}/{SENTINEL}; fi"
    )
}

/// The Pod of this revision, pinned to `node`, on the sandbox's PVC.
pub fn pod(
    e: &Ensure,
    namespace: &str,
    node: &str,
    policy: Option<&Policy>,
) -> Result<Pod, String> {
    let (run_as_user, run_as_group) = run_as(policy)?;
    let read_only = policy.is_some_and(|p| p.read_only_root_filesystem);
    let mut volumes = vec![Volume {
        name: WORKSPACE.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: e.volume.clone(),
            read_only: Some(false),
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: WORKSPACE.to_string(),
        mount_path: "/sandbox".to_string(),
        ..VolumeMount::default()
    }];
    if e.policy.is_some() {
        volumes.push(Volume {
            name: POLICY_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: policy_name(&e.name, e.revision),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: POLICY_VOLUME.to_string(),
            mount_path: POLICY_MOUNT_PATH.to_string(),
            sub_path: Some("policy.yaml".to_string()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if read_only {
        volumes.push(Volume {
            name: TMP_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: TMP_VOLUME.to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        });
    }
    let readiness = policy.and_then(|p| p.readiness.as_ref()).map(|r| Probe {
        exec: Some(ExecAction {
            command: Some(r.command.clone()),
        }),
        period_seconds: Some(2),
        ..Probe::default()
    });
    let seed = Container {
        name: "seed-workspace".to_string(),
        image: Some(e.image.clone()),
        command: Some(vec!["sh".to_string(), "-c".to_string(), seed_script()]),
        volume_mounts: Some(vec![VolumeMount {
            name: WORKSPACE.to_string(),
            mount_path: SEED_MOUNT.to_string(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user,
            run_as_group,
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let sandbox = Container {
        name: SANDBOX_CONTAINER.to_string(),
        image: Some(e.image.clone()),
        env: Some(env(e, policy)),
        volume_mounts: Some(mounts),
        resources: resources(policy),
        readiness_probe: readiness,
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(read_only),
            run_as_user,
            run_as_group,
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Ok(Pod {
        metadata: meta(
            &pod_name(&e.name, e.revision),
            namespace,
            labels(&[
                (LABEL_UID, &e.uid),
                (LABEL_VOLUME_UID, volume_owner(e)),
                (LABEL_REVISION, &e.revision.to_string()),
            ]),
            e,
        ),
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            restart_policy: Some("Always".to_string()),
            init_containers: Some(vec![seed]),
            containers: vec![sandbox],
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                fs_group: run_as_group,
                ..PodSecurityContext::default()
            }),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(GRACE_SECONDS),
            ..PodSpec::default()
        }),
        ..Pod::default()
    })
}
