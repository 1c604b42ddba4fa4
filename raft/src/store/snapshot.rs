//! The snapshot stream format: written and read one record at a time, so
//! neither building nor installing a snapshot ever holds it whole.
//!
//! Layout: magic `BSNP`, one format-version byte (2), then frames of
//! `u32 big-endian length + payload`, where the payload's first byte says
//! what it is:
//! - `0` header: the codec-encoded snapshot meta, always the first frame;
//! - `1` pair: one state-machine key and its stored value (`u32` key
//!   length, key, value), copied as they are on disk, so every record kind
//!   travels without the format naming it;
//! - `2` end: the number of pairs, always the last frame. A stream without
//!   it, or whose count differs, is refused as truncated.
//!
//! Version 1 (one value holding every record, before streaming) is no
//! longer read: a node that holds one builds a new snapshot when needed.

use std::io::{self, Read, Write};

use openraft::{BasicNode, SnapshotMeta};

use crate::codec::{self, CodecError};
use crate::NodeId;

const MAGIC: &[u8; 4] = b"BSNP";
/// The stream format this release writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 2;

const HEADER: u8 = 0;
const PAIR: u8 = 1;
const END: u8 = 2;

/// Larger frames are refused rather than allocated (a record is a few KiB).
const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a berth snapshot (bad magic)")]
    BadMagic,
    #[error("unknown snapshot format version {0} (this release reads {SNAPSHOT_FORMAT})")]
    UnknownVersion(u8),
    #[error("snapshot truncated")]
    Truncated,
    #[error("snapshot frame of {0} bytes is too large")]
    FrameTooLarge(usize),
    #[error("malformed snapshot frame")]
    BadFrame,
    #[error("snapshot holds {found} records, its end says {expected}")]
    CountMismatch { expected: u64, found: u64 },
    #[error("snapshot meta: {0}")]
    Codec(#[from] CodecError),
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
}

/// Writes a snapshot stream: the meta, then pairs, then [`finish`].
///
/// [`finish`]: SnapshotWriter::finish
pub struct SnapshotWriter<W: Write> {
    out: W,
    pairs: u64,
    frame: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(mut out: W, meta: &SnapshotMeta<NodeId, BasicNode>) -> Result<Self, SnapshotError> {
        out.write_all(MAGIC)?;
        out.write_all(&[SNAPSHOT_FORMAT])?;
        let mut writer = Self {
            out,
            pairs: 0,
            frame: Vec::new(),
        };
        writer.frame.push(HEADER);
        writer.frame.extend_from_slice(&codec::encode(meta)?);
        writer.flush_frame()?;
        Ok(writer)
    }

    /// Adds one stored key and value.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        let key_len =
            u32::try_from(key.len()).map_err(|_| SnapshotError::FrameTooLarge(key.len()))?;
        self.frame.push(PAIR);
        self.frame.extend_from_slice(&key_len.to_be_bytes());
        self.frame.extend_from_slice(key);
        self.frame.extend_from_slice(value);
        self.pairs += 1;
        self.flush_frame()
    }

    /// Writes the end frame and returns the output.
    pub fn finish(mut self) -> Result<W, SnapshotError> {
        self.frame.push(END);
        self.frame.extend_from_slice(&self.pairs.to_be_bytes());
        self.flush_frame()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn flush_frame(&mut self) -> Result<(), SnapshotError> {
        let len = self.frame.len();
        if len > MAX_FRAME {
            return Err(SnapshotError::FrameTooLarge(len));
        }
        self.out.write_all(&(len as u32).to_be_bytes())?;
        self.out.write_all(&self.frame)?;
        self.frame.clear();
        Ok(())
    }
}

/// A stored key and its value, borrowed from the reader.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Reads a snapshot stream one pair at a time.
pub struct SnapshotReader<R: Read> {
    input: R,
    meta: SnapshotMeta<NodeId, BasicNode>,
    pairs: u64,
    ended: bool,
    frame: Vec<u8>,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the magic, version and meta.
    pub fn new(mut input: R) -> Result<Self, SnapshotError> {
        let mut magic = [0u8; 5];
        read_exact(&mut input, &mut magic)?;
        if &magic[..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if magic[4] != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnknownVersion(magic[4]));
        }
        let mut frame = Vec::new();
        if !read_frame(&mut input, &mut frame)? {
            return Err(SnapshotError::Truncated);
        }
        let meta = match frame.split_first() {
            Some((&HEADER, body)) => codec::decode(body)?,
            _ => return Err(SnapshotError::BadFrame),
        };
        Ok(Self {
            input,
            meta,
            pairs: 0,
            ended: false,
            frame,
        })
    }

    pub fn meta(&self) -> &SnapshotMeta<NodeId, BasicNode> {
        &self.meta
    }

    /// The input, positioned after what was read.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// The next key and value, or `None` after the end frame (whose count
    /// is checked).
    pub fn next_pair(&mut self) -> Result<Option<Pair<'_>>, SnapshotError> {
        if self.ended {
            return Ok(None);
        }
        if !read_frame(&mut self.input, &mut self.frame)? {
            return Err(SnapshotError::Truncated);
        }
        match self.frame.split_first() {
            Some((&PAIR, body)) => {
                let (len, rest) = body.split_at_checked(4).ok_or(SnapshotError::BadFrame)?;
                let key_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let (key, value) = rest
                    .split_at_checked(key_len)
                    .ok_or(SnapshotError::BadFrame)?;
                self.pairs += 1;
                Ok(Some((key, value)))
            }
            Some((&END, body)) => {
                let count: [u8; 8] = body.try_into().map_err(|_| SnapshotError::BadFrame)?;
                let expected = u64::from_be_bytes(count);
                if expected != self.pairs {
                    return Err(SnapshotError::CountMismatch {
                        expected,
                        found: self.pairs,
                    });
                }
                self.ended = true;
                Ok(None)
            }
            _ => Err(SnapshotError::BadFrame),
        }
    }
}

/// `read_exact` that reports a short stream as [`SnapshotError::Truncated`].
fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(e),
    })
}

/// Reads one frame into `frame`; false at a clean end of input.
fn read_frame(input: &mut impl Read, frame: &mut Vec<u8>) -> Result<bool, SnapshotError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(SnapshotError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(SnapshotError::FrameTooLarge(len));
    }
    frame.clear();
    frame.resize(len, 0);
    read_exact(input, frame)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, StoredMembership};

    fn meta() -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-9-1".into(),
        }
    }

    fn stream(pairs: usize) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &meta()).unwrap();
        for i in 0..pairs {
            w.push(
                format!("sandbox/s{i}").as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<crate::store::disk::Pairs, SnapshotError> {
        let mut r = SnapshotReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some((k, v)) = r.next_pair()? {
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let bytes = stream(3);
        assert_eq!(SnapshotReader::new(&bytes[..]).unwrap().meta(), &meta());
        let pairs = read_all(&bytes).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[2], (b"sandbox/s2".to_vec(), b"v2".to_vec()));
        assert!(read_all(&stream(0)).unwrap().is_empty());
    }

    #[test]
    fn refuses_every_truncation_and_corruption() {
        let bytes = stream(2);
        // Cut anywhere, the stream is refused rather than read short.
        for cut in 0..bytes.len() {
            assert!(
                read_all(&bytes[..cut]).is_err(),
                "cut at {cut} was accepted"
            );
        }
        assert!(matches!(read_all(b"nope!"), Err(SnapshotError::BadMagic)));
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 1;
        assert!(matches!(
            read_all(&wrong_version),
            Err(SnapshotError::UnknownVersion(1))
        ));
        // An end frame whose count disagrees with the pairs before it.
        let mut wrong_count = bytes.clone();
        let last = wrong_count.len() - 1;
        wrong_count[last] = 7;
        assert!(matches!(
            read_all(&wrong_count),
            Err(SnapshotError::CountMismatch {
                expected: 7,
                found: 2
            })
        ));
    }
}
