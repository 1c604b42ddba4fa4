//! The randomness seam: ids (sandboxes, volumes, operations, agent
//! instances), credentials and nonces, and Raft's election timeouts draw
//! their bytes here. Production draws from the operating system
//! (`OsRng`). The deterministic simulator installs a seeded source once
//! per process with [`set`], so one seed fixes every id and timeout.

use std::sync::{Arc, OnceLock};

use rand::RngCore;

/// Fills a buffer with random bytes.
pub type Source = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

static SOURCE: OnceLock<Source> = OnceLock::new();

/// Replaces the operating system's randomness for the rest of the process
/// (once).
pub fn set(source: Source) -> Result<(), String> {
    SOURCE
        .set(source)
        .map_err(|_| "a randomness source is already installed".to_string())
}

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    match SOURCE.get() {
        Some(source) => source(buf),
        None => rand::rngs::OsRng.fill_bytes(buf),
    }
}

/// A random (version 4) UUID.
pub fn uuid() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A random number generator over [`fill`], for APIs that take one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rng;

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        fill(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (uuid(), uuid());
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, b);
    }
}
