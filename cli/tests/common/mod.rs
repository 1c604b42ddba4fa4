//! What the CLI's end-to-end tests share: running the real `berth`
//! binary with a home and credentials, free ports for `berth up`, and
//! stopping a local cluster however a test ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use berth_testkit::bin_path;
use serde_json::Value;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `berth --control CONTROL ARGS` with no credentials (plaintext).
pub fn berth(control: &str, args: &[&str]) -> Run {
    berth_home(
        std::path::Path::new("/nonexistent-berth-home"),
        control,
        args,
    )
}

/// `berth --control CONTROL ARGS` with the credentials `berth up` left in
/// `home`.
pub fn berth_home(home: &std::path::Path, control: &str, args: &[&str]) -> Run {
    berth_env(home, control, &[], args)
}

/// [`berth_home`] with extra environment (`BERTH_TOKEN`, say).
pub fn berth_env(
    home: &std::path::Path,
    control: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(bin_path("berth"))
        .arg("--control")
        .arg(control)
        .args(args)
        .env_remove("BERTH_CONTROL")
        .env_remove("BERTH_CA")
        .env_remove("BERTH_CERT")
        .env_remove("BERTH_KEY")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_TENANT")
        .env("BERTH_HOME", home)
        .envs(env.iter().copied())
        .output()
        .expect("run berth");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn json(run: &Run) -> Value {
    assert_eq!(run.code, 0, "berth failed: {}", run.stderr);
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

pub fn free_base_port() -> u16 {
    // Three consecutive free ports, probed rather than assumed.
    for _ in 0..50 {
        let Ok(port) = berth_testkit::free_port() else {
            continue;
        };
        if port > 60000 {
            continue;
        }
        let all_free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("no three consecutive free ports")
}

/// Stops the local cluster even when the test fails.
pub struct Down<'a>(pub &'a std::path::Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(bin_path("berth"))
            .arg("down")
            .arg("--home")
            .arg(self.0)
            .output();
    }
}

/// `berth up --no-agent` in `home` on ports from `base`; panics with its
/// stderr if it fails.
pub fn up_without_agent(home: &std::path::Path, base: u16) {
    let up = Command::new(bin_path("berth"))
        .args(["up", "--home"])
        .arg(home)
        .args(["--base-port", &base.to_string(), "--no-agent"])
        .output()
        .expect("berth up");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
}
