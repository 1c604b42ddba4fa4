//! The kube driver's workspace seed, for real: the init container's
//! script (`objects::seed_script`) run by Podman from the test image, on
//! a real named volume mounted where the Pod mounts the claim. It copies
//! the image's `/sandbox` into an empty workspace once, and never again:
//! user changes survive every later Pod (invariant 4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use berth_agent::driver::kube::objects::{seed_script, SENTINEL};
use common::{build_image, engine_available, podman, Cleanup, IMAGE};

/// `podman run` with the explicit rlimits this machine kind needs.
const RUN: [&str; 6] = [
    "run",
    "--rm",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Runs the seed script the way the init container does.
fn seed(volume: &str) {
    let mount = format!("{volume}:/berth-workspace");
    let script = seed_script();
    let mut args = RUN.to_vec();
    args.extend(["-v", &mount, IMAGE, "sh", "-c", &script]);
    let out = podman(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(volume: &str, script: &str) -> String {
    let mount = format!("{volume}:/sandbox");
    let mut args = RUN.to_vec();
    args.extend(["-v", &mount, IMAGE, "sh", "-c", script]);
    let out = podman(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_init_container_seeds_once_and_never_overwrites() {
    if !engine_available() {
        return;
    }
    build_image();
    let name = format!("kseed{}", std::process::id());
    let _cleanup = Cleanup {
        names: vec![name.clone()],
    };
    let volume = common::volume_of(&name);
    let made = podman(&["volume", "create", &volume]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    seed(&volume);
    assert_eq!(sh(&volume, "cat /sandbox/README"), "seeded\n");
    assert_eq!(
        sh(&volume, &format!("test -e /sandbox/{SENTINEL} && echo yes")),
        "yes\n"
    );
    // The user changes the workspace; the next Pod seeds again.
    sh(&volume, "echo mine > /sandbox/README; echo work > /sandbox/notes; rm /sandbox/README.bak 2>/dev/null; true");
    seed(&volume);
    assert_eq!(
        sh(&volume, "cat /sandbox/README /sandbox/notes"),
        "mine\nwork\n"
    );
    // Even a workspace the user emptied (but the sentinel) is left alone.
    sh(&volume, "rm /sandbox/README /sandbox/notes");
    seed(&volume);
    assert_eq!(sh(&volume, "ls -A /sandbox"), format!("{SENTINEL}\n"));
}
