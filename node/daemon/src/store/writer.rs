//! The one writer of a store: appends frames to the log, compacts the log into snapshots.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshwork_protocol::storage::{
    FILE_SEQUENCE_MAX, FormatError, Frame, RequestEntry, SEGMENT_HEADER_BYTES, SNAPSHOT_BYTES_MAX, StoreFile,
    segment_header, snapshot_file_bytes,
};

use super::codec::{encode_frame, write_snapshot};
use super::fsio::{replace_durably, sync_dir};
use super::recover::{SkipReason, list_store_files, read_snapshot, scan_segment_file};
use super::{StoreConfig, StoreError};

/// The append buffer is kept between batches up to this size and shrunk back above it, so
/// one large batch does not pin its memory for the life of the node.
const BUFFER_BYTES_KEPT: usize = 1024 * 1024;

/// Where a writer starts, as recovery found the directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriterStart {
    /// Above every file in the directory.
    pub(super) next_sequence: u64,
    /// The snapshot recovery read, if any.
    pub(super) snapshot_sequence: Option<u64>,
    /// Bytes in the segments after that snapshot.
    pub(super) log_bytes: u64,
}

/// Counters of what a writer did, for benchmarks and for deciding when to compact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreCounters {
    /// `fsync`/`fdatasync` calls on files and directories.
    pub(crate) fsyncs: u64,
    /// Frames appended and made durable.
    pub(crate) frames_written: u64,
    /// Submissions the group-commit thread answered (0 for a writer used directly).
    pub(crate) submissions: u64,
    /// Bytes in the log since the last snapshot (see [`StoreWriter::log_bytes`]).
    pub(crate) log_bytes: u64,
}

/// The live counters behind [`StoreCounters`], shared with the group-commit handle.
#[derive(Debug, Default)]
pub(super) struct Counters {
    fsyncs: AtomicU64,
    frames_written: AtomicU64,
    submissions: AtomicU64,
    log_bytes: AtomicU64,
}

impl Counters {
    pub(super) fn load(&self) -> StoreCounters {
        StoreCounters {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            frames_written: self.frames_written.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The segment frames are appended to.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Its directory entry is not durable yet: the first append fsyncs the directory.
    entry_pending: bool,
}

/// Appends frames to the log and compacts it; the only writer of its directory.
///
/// Frames go to a segment this writer created: the first append after [`super::open`] or
/// after a compaction (or after a failed write) creates a new one, so a torn or corrupt tail
/// of an older segment never has frames after it. Opening without appending creates nothing.
#[derive(Debug)]
pub(crate) struct StoreWriter {
    dir: PathBuf,
    config: StoreConfig,
    next_sequence: u64,
    /// The newest snapshot the log continues from: recovered or written by this writer.
    snapshot_sequence: Option<u64>,
    segment: Option<Segment>,
    log_bytes: u64,
    counters: Arc<Counters>,
    buffer: Vec<u8>,
}

impl StoreWriter {
    pub(super) fn new(dir: PathBuf, config: StoreConfig, start: WriterStart) -> StoreWriter {
        let counters = Arc::new(Counters::default());
        counters.log_bytes.store(start.log_bytes, Ordering::Relaxed);
        StoreWriter {
            dir,
            config,
            next_sequence: start.next_sequence,
            snapshot_sequence: start.snapshot_sequence,
            segment: None,
            log_bytes: start.log_bytes,
            counters,
            buffer: Vec::new(),
        }
    }

    /// The store's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the log since the newest snapshot; the caller compacts when it grows large.
    #[cfg(test)]
    pub(crate) fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// What this writer did so far.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> StoreCounters {
        self.counters.load()
    }

    pub(super) fn shared_counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Writes every frame and makes them durable with one `sync_data`. On an error nothing
    /// is acknowledged (frames of the batch may or may not be read back after a restart) and
    /// the next append starts a fresh segment.
    pub(crate) fn append(&mut self, frames: &[Frame]) -> Result<(), StoreError> {
        self.append_all(frames.iter())
    }

    /// [`StoreWriter::append`] over frames from several submissions.
    pub(super) fn append_all<'a>(&mut self, frames: impl Iterator<Item = &'a Frame>) -> Result<(), StoreError> {
        self.buffer.clear();
        let mut frame_count = 0;
        for frame in frames {
            encode_frame(frame, &mut self.buffer).map_err(|reason| self.over_limit(reason))?;
            frame_count += 1;
        }
        if frame_count == 0 {
            return Ok(());
        }
        let result = self.write_buffer();
        if result.is_ok() {
            self.counters.frames_written.fetch_add(frame_count, Ordering::Relaxed);
        }
        if self.buffer.capacity() > BUFFER_BYTES_KEPT {
            self.buffer = Vec::new();
        }
        result
    }

    /// Writes the buffer to the current segment (or a new one) and makes it durable. On an
    /// error the segment is dropped: what follows the failed write is unknown.
    fn write_buffer(&mut self) -> Result<(), StoreError> {
        let mut segment = match self.segment.take() {
            Some(segment) if segment.bytes < self.config.segment_rotate_bytes => segment,
            _ => self.create_segment()?,
        };
        segment.file.write_all(&self.buffer).map_err(|source| StoreError::write(&segment.path, source))?;
        segment.file.sync_data().map_err(|source| StoreError::sync(&segment.path, source))?;
        self.count_fsyncs(1);
        if segment.entry_pending {
            sync_dir(&self.dir)?;
            self.count_fsyncs(1);
            segment.entry_pending = false;
        }
        segment.bytes += self.buffer.len() as u64;
        self.add_log_bytes(self.buffer.len() as u64);
        self.segment = Some(segment);
        Ok(())
    }

    fn create_segment(&mut self) -> Result<Segment, StoreError> {
        let sequence = self.take_sequence()?;
        let path = self.dir.join(StoreFile::Segment(sequence).file_name());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| StoreError::write(&path, source))?;
        file.write_all(&segment_header()).map_err(|source| StoreError::write(&path, source))?;
        tracing::debug!(path = %path.display(), "new log segment");
        self.add_log_bytes(SEGMENT_HEADER_BYTES as u64);
        Ok(Segment { path, file, bytes: SEGMENT_HEADER_BYTES as u64, entry_pending: true })
    }

    /// Writes `snapshot_doc` (Automerge `save()` bytes) and `requests` as a new snapshot,
    /// then removes the files the previous snapshot covers. Frames appended afterwards go to
    /// a new segment.
    ///
    /// The snapshot must hold every change and entry appended before this call: the segments
    /// before it are no longer read once it exists. If it fails, nothing is removed and the
    /// writer stays usable.
    pub(crate) fn compact(&mut self, snapshot_doc: &[u8], requests: &[RequestEntry]) -> Result<(), StoreError> {
        let file_bytes = snapshot_file_bytes(snapshot_doc.len() as u64, requests);
        if file_bytes > SNAPSHOT_BYTES_MAX {
            return Err(self.over_limit(FormatError::SnapshotOverLimit { bytes: file_bytes }));
        }
        if let Some(reason) = requests.iter().find_map(|entry| entry.check().err()) {
            return Err(self.over_limit(reason));
        }
        // Once snapshot S may exist on disk, a reader ignores every segment below S: close
        // the current segment first, so no frame written after this point lands in one.
        self.segment = None;
        let sequence = self.take_sequence()?;
        let name = StoreFile::Snapshot(sequence).file_name();
        replace_durably(&self.dir, &name, |out| write_snapshot(out, snapshot_doc, requests))?;
        self.count_fsyncs(2);
        tracing::info!(snapshot = %name, doc_bytes = snapshot_doc.len(), "compacted");
        let previous = self.snapshot_sequence.replace(sequence);
        self.log_bytes = 0;
        self.counters.log_bytes.store(0, Ordering::Relaxed);
        if let Some(previous) = previous {
            self.remove_covered(previous);
        }
        Ok(())
    }

    /// Removes the snapshots and segments below `previous`: the new snapshot and `previous`
    /// with its segments stay, so a reader finding the new one corrupt falls back to it.
    /// A file that does not decode is left for the user. Failures here are logged only: the
    /// new snapshot is durable, and the next compaction tries again.
    fn remove_covered(&mut self, previous: u64) {
        let listing = match list_store_files(&self.dir) {
            Ok(listing) => listing,
            Err(error) => return tracing::warn!("{error}"),
        };
        let snapshots = listing.snapshots.iter().map(|(sequence, path)| (*sequence, path, true));
        let segments = listing.segments.iter().map(|(sequence, path)| (*sequence, path, false));
        let mut removed = 0;
        for (_, path, is_snapshot) in snapshots.chain(segments).filter(|(sequence, ..)| *sequence < previous) {
            if is_removable(path, is_snapshot) {
                match fs::remove_file(path) {
                    Ok(()) => removed += 1,
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove a compacted file")
                    }
                }
            }
        }
        if removed > 0 {
            match sync_dir(&self.dir) {
                Ok(()) => self.count_fsyncs(1),
                Err(error) => tracing::warn!("{error}"),
            }
        }
    }

    fn take_sequence(&mut self) -> Result<u64, StoreError> {
        let sequence = self.next_sequence;
        if sequence > FILE_SEQUENCE_MAX {
            return Err(StoreError::SequenceExhausted { path: self.dir.clone(), sequence });
        }
        self.next_sequence += 1;
        Ok(sequence)
    }

    fn over_limit(&self, reason: FormatError) -> StoreError {
        StoreError::OverLimit { path: self.dir.clone(), reason }
    }

    pub(super) fn count_submissions(&self, count: u64) {
        self.counters.submissions.fetch_add(count, Ordering::Relaxed);
    }

    fn count_fsyncs(&self, count: u64) {
        self.counters.fsyncs.fetch_add(count, Ordering::Relaxed);
    }

    fn add_log_bytes(&mut self, bytes: u64) {
        self.log_bytes += bytes;
        self.counters.log_bytes.store(self.log_bytes, Ordering::Relaxed);
    }
}

/// Whether a compacted file may go: it reads back cleanly (a torn tail counts as clean, it
/// was never acknowledged). Corrupt and unreadable files stay for the user, with a warning
/// at every compaction.
fn is_removable(path: &Path, is_snapshot: bool) -> bool {
    let corrupt = if is_snapshot {
        read_snapshot(path).map(|read| read.err().map(|skipped| skipped.to_string()))
    } else {
        scan_segment_file(path).map(|(scan, _)| match scan.stop {
            Some(stop) if matches!(stop.reason, SkipReason::Corrupt(_)) => {
                Some(format!("{}: corrupt at offset {}", path.display(), stop.offset))
            }
            _ => None,
        })
    };
    match corrupt {
        Ok(None) => true,
        Ok(Some(report)) => {
            tracing::warn!("{report}; compaction leaves it in place");
            false
        }
        Err(error) => {
            tracing::warn!("{error}; compaction leaves it in place");
            false
        }
    }
}
