//! `berth certs`: the real binary makes a CA and certificates that name
//! their identity; bad input gets a one-line error, its exit code, and
//! changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use berth_testkit::bin_path;
use serde_json::Value;

fn berth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path("berth"))
        .args(args)
        .output()
        .expect("run berth");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn certs_init_and_issue_name_identities_and_refuse_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    let (code, out, err) = berth(&["certs", "init", "--dir", d, "--cluster", "prod"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("prod"), "{out}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);

    let (code, out, err) = berth(&[
        "-o",
        "json",
        "certs",
        "issue",
        "server",
        "node-1",
        "--dir",
        d,
        "--san",
        "127.0.0.1",
    ]);
    assert_eq!(code, 0, "{err}");
    let issued: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(issued["identity"], "server.prod.berth");
    assert_eq!(mode(Path::new(issued["key"].as_str().unwrap())), 0o600);
    let (code, out, _) = berth(&[
        "-o", "json", "certs", "issue", "agent", "worker-1", "--dir", d,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("agent.worker-1.berth"), "{out}");

    let before = listing(&dir);
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    for (args, want) in [
        (vec!["certs", "init", "--dir", d], 4),
        (vec!["certs", "issue", "agent", "Bad Name", "--dir", d], 2),
        (
            vec![
                "certs",
                "issue",
                "agent",
                "w2",
                "--dir",
                d,
                "--san",
                "server.prod.berth",
            ],
            2,
        ),
        (
            vec!["certs", "issue", "agent", "w2", "--dir", d, "--days", "0"],
            2,
        ),
    ] {
        let (code, out, err) = berth(&args);
        assert_eq!(code, want, "{args:?}: {out} {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    // An unknown kind is a usage error (clap's message).
    let (code, _, err) = berth(&["certs", "issue", "admin", "w2", "--dir", d]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(listing(&dir), before);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
}

/// A cluster made by hand (`berth certs`, cluster "prod"): the CLI reaches
/// it with `--ca/--cert/--key` alone, reading the cluster name recorded
/// beside the CA, and a client certificate issued with a grant is a
/// credential by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_hand_made_cluster_with_its_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    assert_eq!(
        berth(&["certs", "init", "--dir", d, "--cluster", "prod"]).0,
        0
    );
    let issue = |args: &[&str]| {
        let mut all = vec!["certs", "issue"];
        all.extend(args);
        all.extend(["--dir", d]);
        let (code, _, err) = berth(&all);
        assert_eq!(code, 0, "{err}");
    };
    issue(&["server", "nodes", "--san", "127.0.0.1"]);
    issue(&[
        "client",
        "ops",
        "--tenant",
        "default",
        "--role",
        "platform-admin",
    ]);
    let path = |f: &str| dir.join(f).display().to_string();
    let (ca, cert, key) = (
        path("ca.pem"),
        path("server-nodes.pem"),
        path("server-nodes-key.pem"),
    );
    let args = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let material = berth_tls::Material::load(
        &dir.join("ca.pem"),
        &dir.join("client-ops.pem"),
        &dir.join("client-ops-key.pem"),
    )
    .unwrap();
    let server = berth_tls::Identity::Server {
        cluster: "prod".into(),
    };
    let cluster = berth_testkit::TestCluster::start_tls(3, &args, material.client(&server))
        .await
        .unwrap();
    let out = Command::new(bin_path("berth"))
        .args(["--control", cluster.addr(1), "-o", "json", "whoami"])
        .args(["--ca", &ca, "--cert", &path("client-ops.pem")])
        .args(["--key", &path("client-ops-key.pem")])
        .env("BERTH_HOME", tmp.path().join("no-home"))
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_CLUSTER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(me["role"], "platform-admin");
    assert_eq!(me["subject"], "cert:ops");
}
