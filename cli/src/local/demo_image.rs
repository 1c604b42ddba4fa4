//! Builds berth's demo images locally with Podman (no registry is needed):
//! busybox on scratch, from the Containerfile in `deploy/demo-image/`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Failure;

pub const DEMO_V1: &str = "localhost/berth-demo:v1";
const CONTAINERFILE: &str = include_str!("../../../deploy/demo-image/Containerfile");
const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() {
        cmd.args(["--runtime", "/usr/sbin/runc"]);
    }
    cmd
}

fn image_exists(image: &str) -> bool {
    podman()
        .args(["image", "exists", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds `localhost/berth-demo:v1` and `:v2` unless they exist.
pub fn ensure_demo_images(home: &Path) -> Result<(), Failure> {
    if Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err(Failure::other(
            "podman not found: run scripts/setup.sh, or start without an agent (berth up --no-agent)",
        ));
    }
    for version in ["v1", "v2"] {
        let image = format!("localhost/berth-demo:{version}");
        if image_exists(&image) {
            continue;
        }
        let dir = home.join("demo-image");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::other(format!("create {}: {e}", dir.display())))?;
        std::fs::write(dir.join("Containerfile"), CONTAINERFILE)
            .map_err(|e| Failure::other(format!("write Containerfile: {e}")))?;
        let busybox = BUSYBOX_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                Failure::other("busybox not found: install busybox-static (scripts/setup.sh)")
            })?;
        std::fs::copy(busybox, dir.join("busybox"))
            .map_err(|e| Failure::other(format!("copy busybox: {e}")))?;
        println!("berth: building {image} locally");
        let out = podman()
            .args([
                "build",
                "-q",
                "-t",
                &image,
                "--build-arg",
                &format!("VERSION={version}"),
            ])
            .arg(&dir)
            .output()
            .map_err(|e| Failure::other(format!("podman build: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("");
            return Err(Failure::other(format!(
                "podman build of {image} failed: {last}"
            )));
        }
    }
    Ok(())
}
