//! A Python grpcio client (clients/python/berth_client.py) against a
//! `berth up` cluster: TLS with the CA `berth up` made, the bootstrap
//! token, the server identity checked by name. Needs Python 3 with
//! clients/python/requirements.txt (scripts/setup.sh installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

mod common;
use common::{free_base_port, up_without_agent, Down};

#[test]
fn a_python_grpcio_client_works_with_tls_and_a_token() {
    let home = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let _down = Down(home.path());
    up_without_agent(home.path(), base);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/python/berth_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg("from-python")
        .arg("--home")
        .arg(home.path())
        .args(["--control", &format!("127.0.0.1:{}", base + 1)])
        .args(["--image", "busybox"])
        .env_remove("BERTH_TOKEN")
        .output()
        .expect("python3 runs (see scripts/setup.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {stdout}"))
            .clone()
    };
    assert_eq!(step("whoami")["role"], "platform-admin");
    assert_eq!(step("create")["name"], "from-python");
    assert_eq!(step("get")["uid"], step("create")["uid"]);
    assert_eq!(step("list")["names"], serde_json::json!(["from-python"]));
    assert_eq!(step("bad-token")["code"], "UNAUTHENTICATED");
}
