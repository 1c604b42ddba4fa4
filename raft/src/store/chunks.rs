//! Snapshots at rest and in flight: a snapshot stream is kept on the
//! node's disk as numbered chunks of at most [`CHUNK_BYTES`] each, under a
//! store id of its own, never as one value; [`SnapshotData`] reads and
//! writes such a stream a chunk at a time (openraft's `SnapshotData`).
//!
//! Invariant kept here: a snapshot being read stays readable. Building or
//! installing a newer snapshot retires the old one, but its chunks are only
//! deleted once no reader (a leader sending it to a follower) holds it,
//! like a file unlinked while open.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, SeekFrom, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::disk::{Batch, Cf, SharedDisk};
use super::keys;

/// The largest chunk kept in one disk value.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Which stored snapshots are being read, and which are retired (to be
/// deleted when their last reader is done).
#[derive(Debug, Default)]
struct PinTable {
    readers: BTreeMap<u64, usize>,
    retired: BTreeSet<u64>,
}

/// Shared by a state machine and every reader it hands out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pins(Arc<Mutex<PinTable>>);

impl Pins {
    fn table(&self) -> std::sync::MutexGuard<'_, PinTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin(&self, id: u64) {
        *self.table().readers.entry(id).or_default() += 1;
    }

    /// True when `id` was retired and this was its last reader.
    fn unpin(&self, id: u64) -> bool {
        let mut table = self.table();
        let left = match table.readers.get_mut(&id) {
            Some(n) => {
                *n -= 1;
                *n
            }
            None => 0,
        };
        if left == 0 {
            table.readers.remove(&id);
            return table.retired.remove(&id);
        }
        false
    }

    /// Marks `id` as no longer current. True when nobody reads it, so the
    /// caller deletes its chunks now; otherwise its last reader will.
    pub(crate) fn retire(&self, id: u64) -> bool {
        let mut table = self.table();
        if table.readers.contains_key(&id) {
            table.retired.insert(id);
            false
        } else {
            true
        }
    }
}

/// Adds the deletion of every chunk of stored snapshot `id` to `batch`.
pub(crate) fn delete_chunks(batch: &mut Batch, id: u64) {
    let (from, to) = keys::chunk_range(id);
    batch.delete_range(Cf::SmMeta, from, to);
}

enum Mode {
    /// Reading a finished stream of `len` bytes; one chunk cached.
    Read {
        len: u64,
        cached: Option<(u64, Vec<u8>)>,
        pins: Option<Pins>,
    },
    /// Appending; `buf` holds the bytes after the `flushed` full chunks.
    Write {
        buf: Vec<u8>,
        flushed: u64,
        done: bool,
    },
}

/// A snapshot stream kept as chunks on a disk.
pub struct SnapshotData {
    disk: SharedDisk,
    id: u64,
    chunk: usize,
    pos: u64,
    mode: Mode,
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotData")
            .field("id", &self.id)
            .field("pos", &self.pos)
            .field("len", &self.len())
            .finish()
    }
}

fn chunk_missing(id: u64, n: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("chunk {n} of stored snapshot {id} is missing"),
    )
}

impl SnapshotData {
    /// A reader of stored snapshot `id`, `len` bytes long, pinned in `pins`
    /// while it lives.
    pub(crate) fn reader(disk: SharedDisk, id: u64, len: u64, pins: Option<Pins>) -> Self {
        if let Some(p) = &pins {
            p.pin(id);
        }
        Self {
            disk,
            id,
            chunk: CHUNK_BYTES,
            pos: 0,
            mode: Mode::Read {
                len,
                cached: None,
                pins,
            },
        }
    }

    /// A new, empty stream stored under `id`.
    pub(crate) fn writer(disk: SharedDisk, id: u64) -> Self {
        Self::writer_with_chunks(disk, id, CHUNK_BYTES)
    }

    fn writer_with_chunks(disk: SharedDisk, id: u64, chunk: usize) -> Self {
        Self {
            disk,
            id,
            chunk,
            pos: 0,
            mode: Mode::Write {
                buf: Vec::new(),
                flushed: 0,
                done: false,
            },
        }
    }

    /// The store id its chunks are kept under.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Bytes in the stream (so far, while writing).
    pub(crate) fn len(&self) -> u64 {
        match &self.mode {
            Mode::Read { len, .. } => *len,
            Mode::Write { .. } => self.pos,
        }
    }

    /// True for a finished stream written to `disk`.
    pub(crate) fn is_written_to(&self, disk: &SharedDisk) -> bool {
        Arc::ptr_eq(&self.disk, disk) && matches!(self.mode, Mode::Write { done: true, .. })
    }

    /// Rewinds to the start for reading.
    pub(crate) fn rewind_for_reading(&mut self) -> io::Result<()> {
        if let Mode::Write { done: false, .. } = self.mode {
            self.finish_writing()?;
        }
        let len = self.len();
        if let Mode::Write { .. } = self.mode {
            self.mode = Mode::Read {
                len,
                cached: None,
                pins: None,
            };
        }
        self.pos = 0;
        Ok(())
    }

    fn put_chunk(&self, n: u64, bytes: &[u8]) -> io::Result<()> {
        let mut batch = Batch::default();
        batch.put(Cf::SmMeta, keys::chunk_key(self.id, n), bytes);
        // Durable with the synced write that makes the stream current.
        self.disk.write(batch, false)
    }

    fn load_chunk(&self, n: u64) -> io::Result<Vec<u8>> {
        self.disk
            .get(Cf::SmMeta, &keys::chunk_key(self.id, n))?
            .ok_or_else(|| chunk_missing(self.id, n))
    }

    /// Writes the last, partial chunk; the stream is complete.
    pub(crate) fn finish_writing(&mut self) -> io::Result<()> {
        let Mode::Write { buf, flushed, done } = &mut self.mode else {
            return Ok(());
        };
        if !*done {
            let (last, n) = (std::mem::take(buf), *flushed);
            *done = true;
            if !last.is_empty() {
                self.put_chunk(n, &last)?;
            }
        }
        Ok(())
    }

    fn seek_to(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        let chunk = self.chunk as u64;
        let pos = self.pos;
        let id = self.id;
        match &mut self.mode {
            Mode::Read { .. } => {}
            Mode::Write { done: true, .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "seek in a finished snapshot stream",
                ))
            }
            Mode::Write { .. } if target > pos => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("seek past the end of a snapshot being written ({target} > {pos})"),
                ))
            }
            // A resent chunk: drop what follows `target` and write again.
            Mode::Write { buf, flushed, .. } => {
                let kept = *flushed * chunk;
                if target >= kept {
                    buf.truncate((target - kept) as usize);
                } else {
                    let n = target / chunk;
                    let mut bytes = self
                        .disk
                        .get(Cf::SmMeta, &keys::chunk_key(id, n))?
                        .ok_or_else(|| chunk_missing(id, n))?;
                    bytes.truncate((target - n * chunk) as usize);
                    *buf = bytes;
                    *flushed = n;
                }
            }
        }
        self.pos = target;
        Ok(target)
    }
}

impl Read for SnapshotData {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Mode::Read { len, cached, .. } = &self.mode else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "read from a snapshot being written",
            ));
        };
        if self.pos >= *len || out.is_empty() {
            return Ok(0);
        }
        let chunk = self.chunk as u64;
        let (n, offset) = (self.pos / chunk, (self.pos % chunk) as usize);
        if cached.as_ref().is_none_or(|(c, _)| *c != n) {
            let bytes = self.load_chunk(n)?;
            if let Mode::Read { cached, .. } = &mut self.mode {
                *cached = Some((n, bytes));
            }
        }
        let Mode::Read {
            len,
            cached: Some((_, bytes)),
            ..
        } = &self.mode
        else {
            return Ok(0);
        };
        let available = bytes.len().saturating_sub(offset);
        let remaining = usize::try_from(*len - self.pos).unwrap_or(usize::MAX);
        let count = out.len().min(available).min(remaining);
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("chunk {n} of stored snapshot {} is short", self.id),
            ));
        }
        out[..count].copy_from_slice(&bytes[offset..offset + count]);
        self.pos += count as u64;
        Ok(count)
    }
}

impl Write for SnapshotData {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let chunk = self.chunk;
        let Mode::Write { buf, flushed, done } = &mut self.mode else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "write to a stored snapshot",
            ));
        };
        if *done {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write to a finished snapshot stream",
            ));
        }
        buf.extend_from_slice(data);
        let mut full = Vec::new();
        while buf.len() >= chunk {
            let rest = buf.split_off(chunk);
            full.push((*flushed, std::mem::replace(buf, rest)));
            *flushed += 1;
        }
        self.pos += data.len() as u64;
        for (n, bytes) in full {
            self.put_chunk(n, &bytes)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let Mode::Read {
            pins: Some(pins), ..
        } = &self.mode
        {
            if pins.unpin(self.id) {
                let mut batch = Batch::default();
                delete_chunks(&mut batch, self.id);
                if let Err(e) = self.disk.write(batch, false) {
                    tracing::warn!(id = self.id, "delete a retired snapshot: {e}");
                }
            }
        }
    }
}

// The disk calls below are local, bounded (one chunk) and run on Raft's own
// threads, so the async traits do them in place.

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().write(data))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish_writing())
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        self.get_mut().seek_to(to).map(|_| ())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use std::io::SeekFrom;
    use std::sync::Arc;

    use super::{keys, Cf, Pins, SharedDisk, SnapshotData};
    use crate::store::disk::MemDisk;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn chunk_count(disk: &SharedDisk, id: u64) -> usize {
        let (from, to) = keys::chunk_range(id);
        disk.range(Cf::SmMeta, &from, Some(&to)).unwrap().len()
    }

    #[tokio::test]
    async fn a_stream_is_kept_in_chunks_and_read_back_whole() {
        let disk: SharedDisk = Arc::new(MemDisk::default());
        let data = bytes(2_500);
        let mut w = SnapshotData::writer_with_chunks(disk.clone(), 4, 1_000);
        for part in data.chunks(300) {
            w.write_all(part).await.unwrap();
        }
        w.shutdown().await.unwrap();
        assert_eq!(w.len(), 2_500);
        assert_eq!(chunk_count(&disk, 4), 3, "1000 + 1000 + 500");

        let mut r = SnapshotData::reader(disk.clone(), 4, 2_500, None);
        r.chunk = 1_000;
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        // openraft's sender seeks to each chunk it sends.
        assert_eq!(r.seek(SeekFrom::End(0)).await.unwrap(), 2_500);
        r.seek(SeekFrom::Start(1_900)).await.unwrap();
        let mut tail = vec![0; 200];
        r.read_exact(&mut tail).await.unwrap();
        assert_eq!(tail, data[1_900..2_100]);
    }

    #[tokio::test]
    async fn a_resent_chunk_rewrites_from_its_offset() {
        let disk: SharedDisk = Arc::new(MemDisk::default());
        let data = bytes(2_500);
        let mut w = SnapshotData::writer_with_chunks(disk.clone(), 1, 1_000);
        w.write_all(&data[..1_700]).await.unwrap();
        // The sender timed out and starts over at 500, then again at 0.
        w.seek(SeekFrom::Start(500)).await.unwrap();
        w.write_all(&data[500..1_200]).await.unwrap();
        w.seek(SeekFrom::Start(0)).await.unwrap();
        w.write_all(&data).await.unwrap();
        assert!(w.seek(SeekFrom::Start(9_999)).await.is_err(), "no gaps");
        w.shutdown().await.unwrap();
        w.rewind_for_reading().unwrap();
        let mut back = Vec::new();
        w.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_retired_snapshot_outlives_its_readers_only() {
        let disk: SharedDisk = Arc::new(MemDisk::default());
        let mut w = SnapshotData::writer(disk.clone(), 9);
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        w.finish_writing().unwrap();
        let pins = Pins::default();
        let mut reader = SnapshotData::reader(disk.clone(), 9, 5, Some(pins.clone()));
        assert!(!pins.retire(9), "a reader holds it");
        let mut back = String::new();
        std::io::Read::read_to_string(&mut reader, &mut back).unwrap();
        assert_eq!(back, "hello");
        assert_eq!(chunk_count(&disk, 9), 1);
        drop(reader);
        assert_eq!(chunk_count(&disk, 9), 0, "deleted with its last reader");
        // Retired with no reader: the caller deletes it at once.
        assert!(pins.retire(3));
    }
}
