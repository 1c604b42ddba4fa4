//! berth's own Kubernetes manifests (`deploy/kubernetes/`), container
//! images (`deploy/images/`) and k3s lifecycle script:
//!
//! - every YAML document passes the Kubernetes schemas
//!   (`kubernetes-validate --strict`, installed by scripts/setup.sh from
//!   deploy/requirements.txt; a missing checker fails the test, it does
//!   not skip it), and the check fails on a broken document;
//! - what berth's invariants need holds: the agent's node name is the
//!   Kubernetes node's (`spec.nodeName`), never a pod's hostname (7); the
//!   agent's Role grants exactly what the kube driver needs; berthd is a
//!   3-node StatefulSet with a volume each, and its start-up wrapper gives
//!   each pod its id and formation flags; every flag the manifests pass
//!   exists in the binaries;
//! - both images build offline (from a local base holding only the shared
//!   libraries the binaries link) and their binaries run; what the test
//!   built is removed however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::bin_path;
use serde_yaml::Value;

/// The Kubernetes release whose schemas the manifests must pass (as the
/// kube driver's objects: agent/src/driver/kube/schema_tests.rs).
const KUBERNETES: &str = "1.33.0";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const SYSTEM_NS: &str = "berth-system";
const SANDBOX_NS: &str = "berth-sandboxes";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One YAML document of a manifest file.
struct Doc {
    /// `FILE-N`, for reports.
    name: String,
    text: String,
    value: Value,
}

/// Every document of every `deploy/kubernetes/*.yaml`, in file order.
fn documents() -> Vec<Doc> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let parts = split_documents(&text);
        // The plain split must agree with a YAML parser's, or a `---`
        // variant slipped past it.
        let parsed = serde_yaml::Deserializer::from_str(&text).count();
        assert_eq!(parts.len(), parsed, "{stem}: document split disagrees");
        for (i, part) in parts.into_iter().enumerate() {
            let value: Value =
                serde_yaml::from_str(&part).unwrap_or_else(|e| panic!("{stem} document {i}: {e}"));
            docs.push(Doc {
                name: format!("{stem}-{i}"),
                text: part,
                value,
            });
        }
    }
    docs
}

/// Splits a multi-document file at its `---` lines, dropping documents
/// that hold only comments.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
    });
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|d| &d.value)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn strings(v: &Value) -> Vec<String> {
    seq(v)
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    seq(&pod["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// `--flag value` pairs of an argument list (every flag here takes one).
fn flag_values(args: &[String]) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        assert!(flag.starts_with("--"), "{flag:?} is not a flag");
        let value = it.next().unwrap_or_else(|| panic!("{flag} has no value"));
        assert!(
            flags.insert(flag.clone(), value.clone()).is_none(),
            "{flag} twice"
        );
    }
    flags
}

/// The env var's downward API field, if it has one.
fn field_ref<'a>(c: &'a Value, var: &str) -> Option<&'a str> {
    seq(&c["env"])
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
}

fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "-k", KUBERNETES]).args(files);
    let out = run_tool(
        cmd,
        "kubernetes-validate is installed by scripts/setup.sh from deploy/requirements.txt",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Longest a local tool (kubernetes-validate, sh, ldd, `--help`) may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` with its output captured, killing it if it takes longer
/// than `limit`. Never panics (the image cleanup runs it from `Drop`).
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let file = |p: &Path| File::create(p).map_err(|e| e.to_string());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} took longer than {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| e.to_string());
    Ok(Output {
        status,
        stdout: read(&out)?,
        stderr: read(&err)?,
    })
}

/// [`run_bounded`] with [`TOOL_TIMEOUT`], failing the test if the tool
/// cannot run (not if it exits non-zero).
fn run_tool(cmd: Command, hint: &str) -> Output {
    run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e} ({hint})"))
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let docs = documents();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = docs
        .iter()
        .map(|d| {
            let path = dir.path().join(format!("{}.yaml", d.name));
            std::fs::write(&path, &d.text).unwrap();
            path
        })
        .collect();
    let (ok, report) = kubernetes_validate(&files);
    assert!(ok, "{report}");
    assert_eq!(report.matches(" passed ").count(), docs.len(), "{report}");

    // The same check must fail on what the schemas forbid, or it proves
    // nothing: the agent's container with a field Kubernetes does not know.
    let mut broken = find(&docs, "DaemonSet", "berth-agent").clone();
    broken["spec"]["template"]["spec"]["containers"][0]["nodeNameFrom"] = Value::from("spec");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, serde_yaml::to_string(&broken).unwrap()).unwrap();
    let (ok, report) = kubernetes_validate(&[path]);
    assert!(!ok, "a broken DaemonSet passed: {report}");
}

#[test]
fn the_agent_is_named_after_its_kubernetes_node_never_its_pod() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet", "berth-agent");
    assert_eq!(ds["metadata"]["namespace"], SYSTEM_NS);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "berth-agent");
    assert!(pod["hostNetwork"].as_bool() != Some(true));
    let c = container(pod, "berth-agent");
    assert_eq!(field_ref(c, "BERTH_NODE_NAME"), Some("spec.nodeName"));
    assert_eq!(field_ref(c, "POD_IP"), Some("status.podIP"));
    // Nothing else feeds the agent a name: no pod name or hostname.
    for e in seq(&c["env"]) {
        let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str();
        assert!(
            matches!(field, None | Some("spec.nodeName" | "status.podIP")),
            "agent env {e:?}"
        );
    }
    let args = strings(&c["args"]);
    assert!(!args.iter().any(|a| a.contains("HOSTNAME")), "{args:?}");
    let flags = flag_values(&args);
    if let Some(name) = flags.get("--node-name") {
        assert_eq!(name, "$(BERTH_NODE_NAME)");
    }
    for (flag, want) in [
        ("--driver", "kube"),
        ("--namespace", SANDBOX_NS),
        ("--data-dir", "/var/lib/berth-agent"),
        ("--listen", "0.0.0.0:7101"),
        ("--advertise-addr", "$(POD_IP):7101"),
        ("--pvc-size", "2Gi"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(want), "{flag}");
    }
    let control: Vec<&str> = flags["--control"].split(',').collect();
    let want: Vec<String> = (0..3)
        .map(|n| format!("berthd-{n}.berthd.{SYSTEM_NS}.svc.cluster.local:7001"))
        .collect();
    assert_eq!(control, want);
    // The agent presents its own node's certificate.
    assert!(flags["--tls-cert"].contains("$(BERTH_NODE_NAME)"));
    assert!(flags["--tls-key"].contains("$(BERTH_NODE_NAME)"));
    // The data dir (node name, instance id, fence term) outlives the pod.
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/berth-agent")
        .expect("the data dir is mounted");
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], "/var/lib/berth-agent");
}

#[test]
fn the_agent_role_grants_only_what_the_kube_driver_needs() {
    let docs = documents();
    let mut want = BTreeSet::new();
    let all = ["get", "list", "watch", "create", "delete"];
    let replaced = ["get", "list", "watch", "create", "update", "delete"];
    for (group, resource, verbs) in [
        ("", "pods", &all[..]),
        ("", "pods/log", &["get"][..]),
        ("", "pods/exec", &["create", "get"][..]),
        ("", "persistentvolumeclaims", &all[..]),
        ("", "configmaps", &replaced[..]),
        ("", "secrets", &replaced[..]),
        ("networking.k8s.io", "networkpolicies", &replaced[..]),
    ] {
        for verb in verbs {
            want.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    let role = find(&docs, "Role", "berth-agent");
    assert_eq!(role["metadata"]["namespace"], SANDBOX_NS);
    let mut granted = BTreeSet::new();
    for rule in seq(&role["rules"]) {
        let keys: BTreeSet<&str> = rule
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "no resourceNames or nonResourceURLs: {rule:?}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    assert_eq!(granted, want, "the Role grants more or less than needed");

    // No other grant anywhere: one Role, bound to the agent alone, and
    // nothing cluster-wide.
    for d in &docs {
        let kind = d.value["kind"].as_str().unwrap();
        assert!(
            !matches!(kind, "ClusterRole" | "ClusterRoleBinding"),
            "{} is a {kind}",
            d.name
        );
        if kind == "Role" {
            assert_eq!(d.value["metadata"]["name"], "berth-agent", "{}", d.name);
        }
        if kind == "RoleBinding" {
            let b = &d.value;
            assert_eq!(b["metadata"]["namespace"], SANDBOX_NS);
            assert_eq!(b["roleRef"]["kind"], "Role");
            assert_eq!(b["roleRef"]["name"], "berth-agent");
            let subjects = seq(&b["subjects"]);
            assert_eq!(subjects.len(), 1, "{}", d.name);
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], "berth-agent");
            assert_eq!(subjects[0]["namespace"], SYSTEM_NS);
        }
    }
    // berthd never talks to the API server.
    let sa = find(&docs, "ServiceAccount", "berthd");
    assert_eq!(sa["automountServiceAccountToken"], false);
}

#[test]
fn berthd_is_a_three_node_statefulset_with_a_volume_each() {
    let docs = documents();
    find(&docs, "Namespace", SYSTEM_NS);
    find(&docs, "Namespace", SANDBOX_NS);
    let sts = find(&docs, "StatefulSet", "berthd");
    assert_eq!(sts["metadata"]["namespace"], SYSTEM_NS);
    assert_eq!(sts["spec"]["replicas"], 3);
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |svc: &Value| {
        let selector = svc["spec"]["selector"].as_mapping().unwrap();
        !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
    };
    // Stable DNS names per pod: the headless Service of serviceName.
    let headless = find(
        &docs,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert!(selects_pods(headless));
    let client = find(&docs, "Service", "berth");
    assert!(client["spec"]["clusterIP"] != "None");
    assert!(selects_pods(client));
    // One PVC per pod, mounted where the data dir is.
    let claims = seq(&sts["spec"]["volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["spec"]["accessModes"][0], "ReadWriteOnce");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(pod, "berthd");
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"] == claims[0]["metadata"]["name"])
        .expect("the claim is mounted");
    let script = strings(&c["command"]).concat();
    let data_dir = format!("--data-dir {}/", mount["mountPath"].as_str().unwrap());
    assert!(script.contains(&data_dir), "{script}");
}

#[test]
fn every_container_is_locked_down_and_runs_this_release() {
    let docs = documents();
    for (kind, name, image) in [
        ("StatefulSet", "berthd", "berthd"),
        ("DaemonSet", "berth-agent", "berth-agent"),
    ] {
        let pod = &find(&docs, kind, name)["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let init = seq(&pod["initContainers"]).iter().map(|c| (c, true));
        for (c, is_init) in seq(&pod["containers"])
            .iter()
            .map(|c| (c, false))
            .chain(init)
        {
            let what = format!("{kind} {name} container {:?}", c["name"]);
            assert_eq!(c["image"], format!("localhost/{image}:{VERSION}"), "{what}");
            let requests = &c["resources"]["requests"];
            assert!(
                requests["cpu"].is_string() && requests["memory"].is_string(),
                "{what}"
            );
            assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
            assert!(
                strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()),
                "{what}"
            );
            if is_init {
                // Only the chown of the agent's hostPath runs as root.
                assert_eq!(strings(&sc["capabilities"]["add"]), ["CHOWN"], "{what}");
            } else {
                let non_root = sc["runAsNonRoot"]
                    .as_bool()
                    .or(pod["securityContext"]["runAsNonRoot"].as_bool());
                assert_eq!(non_root, Some(true), "{what}");
                // gRPC health probes, on the plaintext health port the
                // binary serves (`--health-listen`), never the TLS port.
                let invocation = format!(
                    "{} {}",
                    strings(&c["command"]).join(" "),
                    strings(&c["args"]).join(" ")
                );
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    let port = c[probe]["grpc"]["port"].as_u64();
                    let port =
                        port.unwrap_or_else(|| panic!("{what}: {probe} is not a grpc probe"));
                    let listen = format!("0.0.0.0:{port}");
                    assert!(
                        invocation.contains("--health-listen") && invocation.contains(&listen),
                        "{what}: {probe} checks port {port}, which --health-listen does not serve"
                    );
                }
            }
        }
    }
}

#[test]
fn the_berthd_wrapper_gives_each_pod_its_id_and_formation() {
    let docs = documents();
    let sts = find(&docs, "StatefulSet", "berthd");
    let c = container(&sts["spec"]["template"]["spec"], "berthd");
    let command = strings(&c["command"]);
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    let script = &command[2];
    // Kubernetes expands $(VAR) (and $$) in a command before the shell
    // runs it; the script must not depend on that.
    assert!(!script.contains("$(") && !script.contains("$$"), "{script}");

    // Run it as the pod would, with a stand-in berthd that prints its args.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("berthd");
    std::fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |pod_name: &str| -> Output {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).env_clear();
        cmd.env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()));
        for e in seq(&c["env"]) {
            let name = e["name"].as_str().unwrap();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_string(),
                Some("metadata.namespace") => SYSTEM_NS.to_string(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => e["value"].as_str().unwrap().to_string(),
            };
            cmd.env(name, value);
        }
        run_tool(cmd, "/bin/sh")
    };
    let addr = |n: u32| format!("berthd-{n}.berthd.{SYSTEM_NS}.svc.cluster.local:7001");
    let seeds = format!("1={},2={},3={}", addr(0), addr(1), addr(2));
    for (ordinal, formation) in [
        (0, format!("--initial-cluster={seeds}")),
        (1, format!("--initial-cluster={seeds}")),
        (2, format!("--initial-cluster={seeds}")),
        (3, format!("--join={},{},{}", addr(0), addr(1), addr(2))),
    ] {
        let out = run(&format!("berthd-{ordinal}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(args.last(), Some(&formation), "{args:?}");
        let flags = flag_values(&args[..args.len() - 1]);
        assert_eq!(flags["--id"], (ordinal + 1).to_string());
        // --initial-cluster must give a node exactly its --advertise.
        assert_eq!(flags["--advertise"], addr(ordinal));
        assert_eq!(flags["--listen"], "0.0.0.0:7001");
    }
    let out = run("berthd");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ordinal"));
}

/// Long flags (`--name`) a `--help` text mentions.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        rest = &rest[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !name.is_empty() {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

fn help(binary: &str) -> String {
    let mut cmd = Command::new(bin_path(binary));
    cmd.arg("--help");
    let out = run_tool(cmd, "cargo build --workspace --bins builds it");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_the_manifests_pass_exists_in_the_binaries() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet", "berth-agent");
    let agent = container(&ds["spec"]["template"]["spec"], "berth-agent");
    let agent_help = help("berth-agent");
    let known = long_flags(&agent_help);
    for flag in flag_values(&strings(&agent["args"])).keys() {
        assert!(known.contains(flag), "berth-agent has no {flag}");
    }
    assert!(
        agent_help.contains("kube"),
        "berth-agent has no kube driver"
    );
    let sts = find(&docs, "StatefulSet", "berthd");
    let berthd = container(&sts["spec"]["template"]["spec"], "berthd");
    let known = long_flags(&help("berthd"));
    let used = long_flags(&strings(&berthd["command"]).concat());
    assert!(used.contains("--initial-cluster") && used.contains("--join"));
    for flag in used {
        assert!(known.contains(&flag), "berthd has no {flag}");
    }
}

#[test]
fn the_k3s_lifecycle_script_parses_and_uses_the_manifests_secrets() {
    let script = repo().join("deploy/k3s-lifecycle.sh");
    let mut cmd = Command::new("bash");
    cmd.arg("-n").arg(&script);
    let out = run_tool(cmd, "bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // shellcheck is optional (not in scripts/setup.sh): run where present.
    let mut probe = Command::new("shellcheck");
    probe.arg("--version");
    if run_bounded(probe, TOOL_TIMEOUT).is_ok() {
        let mut cmd = Command::new("shellcheck");
        cmd.arg(&script);
        let out = run_tool(cmd, "shellcheck");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = std::fs::read_to_string(&script).unwrap();
    let docs = documents();
    let mut secrets = BTreeSet::new();
    for d in &docs {
        for line in d.text.lines() {
            if let Some(name) = line.trim().strip_prefix("secretName: ") {
                secrets.insert(name.to_string());
            }
        }
    }
    assert_eq!(secrets.len(), 3, "{secrets:?}");
    for name in secrets {
        assert!(
            text.contains(&name),
            "the script does not make Secret {name}"
        );
    }
}

// ---- images ----

const BASE_IMAGE: &str = "localhost/berth-test-base:ci";
const BERTHD_IMAGE: &str = "localhost/berth-test-berthd:ci";
const AGENT_IMAGE: &str = "localhost/berth-test-agent:ci";
/// Names of the containers the test runs (removed with the images).
const RUNS: [&str; 3] = [
    "berth-test-run-berthd",
    "berth-test-run-berth",
    "berth-test-run-agent",
];
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() {
        cmd.args(["--runtime", "/usr/sbin/runc"]);
    }
    cmd
}

/// Runs podman and returns its stdout, failing the test on an error.
fn podman_ok(args: &[&str], limit: Duration) -> String {
    let mut cmd = podman();
    cmd.args(args);
    let out = run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Removes the test's containers and images, also when the test fails.
struct Cleanup;

impl Cleanup {
    fn run(&self) {
        for name in RUNS {
            let mut cmd = podman();
            cmd.args(["rm", "-f", "--ignore", name]);
            let _ = run_bounded(cmd, RUN_TIMEOUT);
        }
        let mut cmd = podman();
        cmd.args([
            "rmi",
            "-f",
            "--ignore",
            BERTHD_IMAGE,
            AGENT_IMAGE,
            BASE_IMAGE,
        ]);
        let _ = run_bounded(cmd, RUN_TIMEOUT);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// The files `ldd` says `binary` loads (the dynamic loader included).
fn shared_libraries(binary: &Path) -> BTreeSet<PathBuf> {
    let mut cmd = Command::new("ldd");
    cmd.arg(binary);
    let out = run_tool(cmd, "ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("not found"), "{}: {text}", binary.display());
    text.lines()
        .filter_map(|line| {
            let path = line.split_once("=>").map_or(line, |(_, p)| p);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Puts `from` into `dir` under `name`: a hard link where possible.
fn stage(from: &Path, dir: &Path, name: &str) {
    let to = dir.join(name);
    if std::fs::hard_link(from, &to).is_err() {
        std::fs::copy(from, &to).unwrap();
    }
}

/// `podman run --rm IMAGE ARGS...` (no network; explicit rlimits, which
/// this kind of machine needs: docs/architecture.md), returning stdout.
fn run_image(name: &str, image: &str, entrypoint: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--name", name, "--network", "none"];
    all.extend([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    if let Some(e) = entrypoint {
        all.extend(["--entrypoint", e]);
    }
    all.push(image);
    all.extend(args);
    podman_ok(&all, RUN_TIMEOUT)
}

#[test]
fn the_images_build_offline_and_run() {
    let berthd = bin_path("berthd");
    let agent = bin_path("berth-agent");
    let berth = option_env!("CARGO_BIN_EXE_berth").map_or_else(|| bin_path("berth"), PathBuf::from);
    for b in [&berthd, &agent, &berth] {
        assert!(
            b.exists(),
            "{} is missing (cargo build --workspace --bins)",
            b.display()
        );
    }
    let cleanup = Cleanup;
    cleanup.run();

    // A local base: just the shared libraries the binaries link, at the
    // paths the dynamic loader looks in (no registry is reachable here).
    let base = tempfile::tempdir().unwrap();
    let libs: BTreeSet<PathBuf> = [&berthd, &agent, &berth]
        .iter()
        .flat_map(|b| shared_libraries(b))
        .collect();
    assert!(
        libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
        "{libs:?}"
    );
    for lib in &libs {
        let to = base
            .path()
            .join("rootfs")
            .join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    std::fs::write(
        base.path().join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\n",
    )
    .unwrap();
    let context = base.path().to_str().unwrap();
    podman_ok(&["build", "-q", "-t", BASE_IMAGE, context], BUILD_TIMEOUT);

    let images = repo().join("deploy/images");
    let build_arg = format!("BASE={BASE_IMAGE}");
    for (image, containerfile, binaries) in [
        (
            BERTHD_IMAGE,
            "berthd.Containerfile",
            vec![(&berthd, "berthd"), (&berth, "berth")],
        ),
        (
            AGENT_IMAGE,
            "berth-agent.Containerfile",
            vec![(&agent, "berth-agent")],
        ),
    ] {
        let context = tempfile::tempdir().unwrap();
        for (path, name) in binaries {
            stage(path, context.path(), name);
        }
        let file = images.join(containerfile);
        podman_ok(
            &[
                "build",
                "-q",
                "-f",
                file.to_str().unwrap(),
                "--build-arg",
                &build_arg,
                "-t",
                image,
                context.path().to_str().unwrap(),
            ],
            BUILD_TIMEOUT,
        );
        let user = podman_ok(
            &["image", "inspect", "--format", "{{.Config.User}}", image],
            RUN_TIMEOUT,
        );
        assert_eq!(user, "10001:10001", "{image} runs as a fixed non-root user");
    }

    let v = run_image(RUNS[0], BERTHD_IMAGE, None, &["--version"]);
    assert_eq!(v, format!("berthd {VERSION}"));
    let v = run_image(
        RUNS[1],
        BERTHD_IMAGE,
        Some("/usr/local/bin/berth"),
        &["--version"],
    );
    assert_eq!(v, format!("berth {VERSION}"));
    let help = run_image(RUNS[2], AGENT_IMAGE, None, &["--help"]);
    assert!(
        help.contains("--driver kube") || help.contains("- kube:"),
        "{help}"
    );
    drop(cleanup);
}
