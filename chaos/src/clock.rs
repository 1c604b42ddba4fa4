//! Clock jumps on one control node, injected with libfaketime: every node
//! runs with it preloaded and reads its wall-clock offset from its own
//! file, which the nemesis rewrites to step that node's clock forward or
//! back (as a bad NTP step would). Monotonic clocks are left alone, as a
//! real step leaves them: only what reads the wall clock sees the jump.
//! Without libfaketime (Debian's `libfaketime`), clock jumps are skipped.

use std::path::{Path, PathBuf};

/// Where Debian installs libfaketime.
const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The wall clocks of the control nodes.
pub struct Clocks {
    dir: PathBuf,
    library: PathBuf,
}

impl Clocks {
    /// Clocks whose offset files live in `dir`, if libfaketime is installed.
    pub fn find(dir: &Path) -> Option<Self> {
        let library = PathBuf::from(LIBRARY);
        library.exists().then(|| Self {
            dir: dir.to_path_buf(),
            library,
        })
    }

    fn file(&self, node: u64) -> PathBuf {
        self.dir.join(format!("clock-{node}"))
    }

    /// The environment node `node` runs with: its clock, not yet moved.
    pub fn env(&self, node: u64) -> anyhow::Result<Vec<(String, String)>> {
        self.set(node, 0)?;
        Ok(vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file(node).display().to_string(),
            ),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            // The file is read again at most once a second.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ])
    }

    /// Moves node `node`'s wall clock `offset_s` seconds from the true time.
    pub fn set(&self, node: u64, offset_s: i64) -> std::io::Result<()> {
        let path = self.file(node);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n"))?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_is_a_signed_offset_in_the_nodes_file() {
        let dir = tempfile::tempdir().unwrap();
        let clocks = Clocks {
            dir: dir.path().to_path_buf(),
            library: PathBuf::from(LIBRARY),
        };
        let env = clocks.env(2).unwrap();
        assert!(env
            .iter()
            .any(|(k, v)| k == "FAKETIME_TIMESTAMP_FILE" && v.ends_with("clock-2")));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("clock-2")).unwrap(),
            "+0\n"
        );
        clocks.set(2, -600).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("clock-2")).unwrap(),
            "-600\n"
        );
        clocks.set(2, 3600).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("clock-2")).unwrap(),
            "+3600\n"
        );
    }
}
