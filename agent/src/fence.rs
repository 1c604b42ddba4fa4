//! Fencing by leader term.
//!
//! Keeps invariant 3: every command carries the leader's Raft term and the
//! agent refuses any term lower than the highest it has seen, so a deposed
//! leader can never act. The highest term is persisted in
//! `DATA_DIR/fence-term` before it is relied upon, so it survives restarts.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::fsutil::{read_trimmed, write_atomic};

/// File (inside the data dir) holding the highest term seen.
pub const FENCE_FILE: &str = "fence-term";

/// Why a term was refused or could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("stale term {term} < highest {highest}")]
    Stale { term: u64, highest: u64 },
    #[error("cannot persist fence term {term} in {path}: {source}")]
    Persist {
        term: u64,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load fence term from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// The highest leader term this agent has accepted, durable on disk.
#[derive(Debug)]
pub struct Fence {
    path: PathBuf,
    highest: Mutex<u64>,
}

impl Fence {
    /// Load the persisted term from `data_dir` (0 when none yet).
    pub fn load(data_dir: &Path) -> Result<Self, FenceError> {
        let path = data_dir.join(FENCE_FILE);
        let load_err = |reason: String| FenceError::Load {
            path: path.clone(),
            reason,
        };
        let highest = match read_trimmed(&path).map_err(|e| load_err(e.to_string()))? {
            None => 0,
            Some(s) => s
                .parse::<u64>()
                .map_err(|e| load_err(format!("{s:?}: {e}")))?,
        };
        Ok(Self {
            path,
            highest: Mutex::new(highest),
        })
    }

    /// The highest term seen so far.
    pub fn highest(&self) -> u64 {
        *self.lock()
    }

    /// Raise the highest term to `term` (persisted before returning).
    /// Lower or equal terms change nothing.
    pub fn observe(&self, term: u64) -> Result<(), FenceError> {
        let mut highest = self.lock();
        self.raise(&mut highest, term)
    }

    /// Refuse `term` if it is lower than the highest seen; else the
    /// highest term it was checked against.
    pub fn check(&self, term: u64) -> Result<u64, FenceError> {
        let highest = *self.lock();
        if crate::chaos::broken("skip-fencing") {
            return Ok(highest);
        }
        stale(term, highest).map(|()| highest)
    }

    /// Check `term` and, when it is newer, record it: one atomic step, so a
    /// command is admitted only under a term that is durably the highest.
    pub fn admit(&self, term: u64) -> Result<(), FenceError> {
        let mut highest = self.lock();
        if !crate::chaos::broken("skip-fencing") {
            stale(term, *highest)?;
        }
        self.raise(&mut highest, term)
    }

    fn raise(&self, highest: &mut MutexGuard<'_, u64>, term: u64) -> Result<(), FenceError> {
        if term > **highest {
            write_atomic(&self.path, format!("{term}\n").as_bytes()).map_err(|source| {
                FenceError::Persist {
                    term,
                    path: self.path.clone(),
                    source,
                }
            })?;
            **highest = term;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // The guarded value is a plain integer: a poisoned lock still holds
        // a valid term.
        self.highest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stale(term: u64, highest: u64) -> Result<(), FenceError> {
    if term < highest {
        Err(FenceError::Stale { term, highest })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_lower_terms_accepts_equal_and_higher() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::load(dir.path()).unwrap();
        assert_eq!(fence.highest(), 0);
        fence.observe(5).unwrap();
        assert!(fence.check(5).is_ok());
        assert!(fence.check(6).is_ok());
        let err = fence.check(4).unwrap_err();
        assert!(matches!(
            err,
            FenceError::Stale {
                term: 4,
                highest: 5
            }
        ));
        assert_eq!(err.to_string(), "stale term 4 < highest 5");
        fence.observe(3).unwrap();
        assert_eq!(fence.highest(), 5, "observe never lowers the term");
    }

    #[test]
    fn admit_raises_and_fences() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::load(dir.path()).unwrap();
        fence.admit(2).unwrap();
        fence.admit(7).unwrap();
        assert_eq!(fence.highest(), 7);
        assert!(matches!(
            fence.admit(2),
            Err(FenceError::Stale {
                term: 2,
                highest: 7
            })
        ));
    }

    #[test]
    fn survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        Fence::load(dir.path()).unwrap().observe(9).unwrap();
        let reloaded = Fence::load(dir.path()).unwrap();
        assert_eq!(reloaded.highest(), 9);
        assert!(reloaded.check(8).is_err());
    }

    #[test]
    fn corrupt_file_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FENCE_FILE), "not a number").unwrap();
        assert!(matches!(
            Fence::load(dir.path()),
            Err(FenceError::Load { .. })
        ));
    }
}
