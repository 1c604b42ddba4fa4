//! Every object the kube driver builds round-trips through the k8s-openapi
//! types and passes the Kubernetes schemas of the oldest supported release
//! (`kubernetes-validate --strict`, from PyPI; scripts/setup.sh installs
//! it).

use std::collections::HashMap;
use std::process::Command;

use berth_proto::agent_v1::Ensure;
use berth_proto::policy::Policy;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::objects::{self, Storage};

/// The Kubernetes release whose schemas the objects must pass (k8s-openapi
/// is built for it: feature `v1_33`).
const KUBERNETES: &str = "1.33.0";

const FULL_POLICY: &str = "network: none
readOnlyRootFilesystem: true
resources:
  cpus: 0.5
  memory: 256Mi
runAsUser: \"1000:1000\"
env:
  MODE: strict
readiness:
  command: [\"sh\", \"-c\", \"test -f /sandbox/ready\"]
";

fn ensure(name: &str, policy: Option<&str>) -> Ensure {
    Ensure {
        name: name.into(),
        uid: "3f2a9c1e-0b7d-4e55-9a10-2c4d6e8f0a1b".into(),
        revision: 3,
        image: "localhost/berth-demo:v2".into(),
        env: HashMap::from([
            ("GREETING".into(), "hello".into()),
            ("API_TOKEN".into(), "s3cr3t-value".into()),
        ]),
        policy: policy.map(str::to_string),
        volume: format!("berth-{name}-3f2a9c1e"),
        volume_uid: String::new(),
        volume_expected: true,
        secret_keys: vec!["API_TOKEN".into()],
    }
}

/// Serializes `value`, reads it back, and checks nothing was lost.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value);
    serde_yaml::to_string(value).unwrap()
}

fn all_objects() -> Vec<(String, String)> {
    let mut docs = Vec::new();
    let storage = Storage {
        size: "5Gi".into(),
        class: Some("local-path".into()),
    };
    for (label, e) in [
        ("plain", ensure("web", None)),
        ("full", ensure("team-a.api", Some(FULL_POLICY))),
    ] {
        let policy = e.policy.as_deref().map(|p| Policy::parse(p).unwrap());
        docs.push((
            format!("{label}-pvc"),
            round_trip(&objects::pvc(&e, "berth", "worker-1", &storage)),
        ));
        let pod = objects::pod(&e, "berth", "worker-1", policy.as_ref()).unwrap();
        docs.push((format!("{label}-pod"), round_trip(&pod)));
        if let Some(cm) = objects::policy_config_map(&e, "berth") {
            docs.push((format!("{label}-configmap"), round_trip(&cm)));
        }
        if let Some(secret) = objects::env_secret(&e, "berth") {
            docs.push((format!("{label}-secret"), round_trip(&secret)));
        }
        if let Some(np) = objects::network_policy(&e, "berth", policy.as_ref()) {
            docs.push((format!("{label}-networkpolicy"), round_trip(&np)));
        }
    }
    docs
}

#[test]
fn every_object_passes_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let docs = all_objects();
    assert_eq!(
        docs.len(),
        8,
        "pvc, pod, secret, configmap and networkpolicy"
    );
    let mut files = Vec::new();
    for (name, yaml) in &docs {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        files.push(path);
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES])
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (scripts/setup.sh)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert_eq!(report.matches("passed").count(), docs.len(), "{report}");
}

#[test]
fn the_schema_check_catches_a_broken_object() {
    // The same check must fail on what the schemas forbid, or it proves
    // nothing: a container with a field Kubernetes does not know.
    let dir = tempfile::tempdir().unwrap();
    let e = ensure("web", None);
    let pod = objects::pod(&e, "berth", "worker-1", None).unwrap();
    let mut value = serde_json::to_value(&pod).unwrap();
    value["spec"]["containers"][0]["unknownField"] = serde_json::json!(1);
    let yaml = serde_yaml::to_string(&value).unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES])
        .arg(&path)
        .output()
        .expect("kubernetes-validate is installed (scripts/setup.sh)");
    assert!(!out.status.success());
}

#[test]
fn a_pod_is_pinned_mounts_its_workspace_and_maps_the_policy() {
    let e = ensure("team-a.api", Some(FULL_POLICY));
    let policy = Policy::parse(FULL_POLICY).unwrap();
    let pod = objects::pod(&e, "berth", "worker-1", Some(&policy)).unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("berth-team-a.api-r3"));
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("worker-1"));
    let workspace = spec.volumes.as_ref().unwrap()[0]
        .persistent_volume_claim
        .as_ref()
        .unwrap();
    assert_eq!(workspace.claim_name, e.volume);
    let c = &spec.containers[0];
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == "/sandbox"));
    assert!(mounts
        .iter()
        .any(|m| m.mount_path == "/etc/berth/policy.yaml"));
    assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (
            sc.run_as_user,
            sc.run_as_group,
            sc.read_only_root_filesystem
        ),
        (Some(1000), Some(1000), Some(true))
    );
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "500m");
    assert_eq!(limits["memory"].0, (256u64 << 20).to_string());
    let env: Vec<(&str, &str)> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        env,
        [("API_TOKEN", ""), ("GREETING", "hello"), ("MODE", "strict")]
    );
    // A secret is a reference into the revision's Secret, never inline.
    let reference = c.env.as_ref().unwrap()[0].value_from.as_ref().unwrap();
    let key = reference.secret_key_ref.as_ref().unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("berth-team-a.api-r3-env", "API_TOKEN")
    );
    let spec_text = serde_json::to_string(&spec).unwrap();
    assert!(!spec_text.contains("s3cr3t-value"), "{spec_text}");
    let secret = objects::env_secret(&e, "berth").unwrap();
    assert_eq!(
        secret.string_data.unwrap(),
        std::collections::BTreeMap::from([("API_TOKEN".to_string(), "s3cr3t-value".to_string())])
    );
    assert!(c.readiness_probe.is_some());
    // The seed step copies the image's /sandbox only into an unseeded
    // workspace.
    let seed = &spec.init_containers.as_ref().unwrap()[0];
    let script = &seed.command.as_ref().unwrap()[2];
    assert!(script.contains(objects::SENTINEL) && script.contains("[ ! -e"));
}
