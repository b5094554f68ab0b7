//! Opening a store: what `doc/` holds, read back after a clean stop or a crash.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use meshwork_protocol::storage::{
    FILE_SEQUENCE_MAX, FormatError, Frame, RequestEntry, SNAPSHOT_BYTES_MAX, StoreFile, TEMP_FILE_SUFFIX,
};

use super::codec::{DecodedSnapshot, ScanStop, decode_snapshot, scan_segment};
use super::fsio::create_dir_durably;
use super::writer::{StoreWriter, WriterStart};
use super::{StoreConfig, StoreError};

/// What [`open`] read back.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The document of the newest snapshot that decodes: Automerge `save()` bytes.
    pub(crate) snapshot: Option<Vec<u8>>,
    /// The changes written after that snapshot, in the order they were written; each is
    /// loadable with `load_incremental`.
    pub(crate) changes: Vec<Vec<u8>>,
    /// The snapshot's idempotency entries, then those written after it, in order; a later
    /// entry for a key replaces an earlier one.
    pub(crate) requests: Vec<RequestEntry>,
    /// Files, or the tails of files, that were not read. They are left as they are.
    pub(crate) skipped: Vec<SkippedFile>,
}

/// A file, from `offset` to its end, that recovery did not read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SkippedFile {
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) bytes_skipped: u64,
    pub(crate) reason: SkipReason,
}

/// Why bytes were skipped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SkipReason {
    /// The file ends inside a frame: a write a crash interrupted, never acknowledged.
    TruncatedTail,
    /// The bytes do not decode: damage on disk or a bug. The file is kept for the user.
    Corrupt(FormatError),
}

impl fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, offset, bytes) = (self.path.display(), self.offset, self.bytes_skipped);
        match &self.reason {
            SkipReason::TruncatedTail => {
                write!(f, "{path}: skipped a torn write of {bytes} bytes at offset {offset}")
            }
            SkipReason::Corrupt(error) => write!(
                f,
                "{path}: skipped {bytes} corrupt bytes from offset {offset} ({error}); \
                 the file is left in place for you to inspect or remove"
            ),
        }
    }
}

/// The store files in a directory, each kind in sequence order.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub(super) snapshots: Vec<(u64, PathBuf)>,
    pub(super) segments: Vec<(u64, PathBuf)>,
    /// Unfinished writes (`*.tmp`) left by a crash.
    pub(super) temps: Vec<PathBuf>,
}

impl Listing {
    pub(super) fn sequence_max(&self) -> Option<u64> {
        let snapshots = self.snapshots.last().map(|(sequence, _)| *sequence);
        let segments = self.segments.last().map(|(sequence, _)| *sequence);
        snapshots.max(segments)
    }
}

/// Lists `dir`; names that are not store files are ignored.
pub(super) fn list_store_files(dir: &Path) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|source| StoreError::read(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::read(dir, source))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match StoreFile::parse(&name) {
            Some(StoreFile::Snapshot(sequence)) => listing.snapshots.push((sequence, entry.path())),
            Some(StoreFile::Segment(sequence)) => listing.segments.push((sequence, entry.path())),
            None if is_store_temp(&name) => listing.temps.push(entry.path()),
            None => {}
        }
    }
    listing.snapshots.sort();
    listing.segments.sort();
    Ok(listing)
}

fn is_store_temp(name: &str) -> bool {
    name.strip_suffix(TEMP_FILE_SUFFIX).and_then(StoreFile::parse).is_some()
}

/// Opens the store in `dir` (the home's `doc/`, created if missing): reads the newest
/// snapshot that decodes and every segment after it, and returns a writer that appends to a
/// new segment. Torn and corrupt files are reported in [`Recovered::skipped`], logged, and
/// left as they are; only an I/O error (a file that cannot be read) fails the open.
pub(crate) fn open(dir: &Path, config: StoreConfig) -> Result<(StoreWriter, Recovered), StoreError> {
    create_dir_durably(dir)?;
    let listing = list_store_files(dir)?;
    remove_temps(&listing.temps);
    let mut recovered = Recovered::default();
    let snapshot_sequence = read_newest_snapshot(&listing, &mut recovered)?;
    let mut log_bytes = 0;
    for (sequence, path) in &listing.segments {
        if snapshot_sequence.is_none_or(|snapshot| *sequence > snapshot) {
            log_bytes += read_segment(path, &mut recovered)?;
        }
    }
    for skipped in &recovered.skipped {
        match skipped.reason {
            SkipReason::TruncatedTail => tracing::info!("{skipped}"),
            SkipReason::Corrupt(_) => tracing::warn!("{skipped}"),
        }
    }
    let sequence_max = listing.sequence_max().unwrap_or(0);
    let next_sequence = sequence_max
        .checked_add(1)
        .filter(|&next| next <= FILE_SEQUENCE_MAX)
        .ok_or_else(|| StoreError::SequenceExhausted { path: dir.to_owned(), sequence: sequence_max })?;
    tracing::info!(
        dir = %dir.display(),
        snapshot = ?snapshot_sequence,
        changes = recovered.changes.len(),
        requests = recovered.requests.len(),
        skipped = recovered.skipped.len(),
        "store opened"
    );
    let start = WriterStart { next_sequence, snapshot_sequence, log_bytes };
    Ok((StoreWriter::new(dir.to_owned(), config, start), recovered))
}

fn remove_temps(temps: &[PathBuf]) {
    for temp in temps {
        match fs::remove_file(temp) {
            Ok(()) => tracing::info!(path = %temp.display(), "removed an unfinished write"),
            Err(error) => {
                tracing::warn!(path = %temp.display(), %error, "cannot remove an unfinished write")
            }
        }
    }
}

/// Takes the newest snapshot that decodes into `recovered`; reports the newer ones that do
/// not. Returns its sequence.
fn read_newest_snapshot(listing: &Listing, recovered: &mut Recovered) -> Result<Option<u64>, StoreError> {
    for (sequence, path) in listing.snapshots.iter().rev() {
        match read_snapshot(path)? {
            Ok((doc, requests)) => {
                recovered.snapshot = Some(doc);
                recovered.requests = requests;
                return Ok(Some(*sequence));
            }
            Err(skipped) => recovered.skipped.push(skipped),
        }
    }
    Ok(None)
}

/// Reads and decodes one snapshot; the inner error is the skip to report.
pub(super) fn read_snapshot(path: &Path) -> Result<Result<DecodedSnapshot, SkippedFile>, StoreError> {
    let file = File::open(path).map_err(|source| StoreError::read(path, source))?;
    let file_bytes = file.metadata().map_err(|source| StoreError::read(path, source))?.len();
    let corrupt = |error| SkippedFile {
        path: path.to_owned(),
        offset: 0,
        bytes_skipped: file_bytes,
        reason: SkipReason::Corrupt(error),
    };
    if file_bytes > SNAPSHOT_BYTES_MAX {
        return Ok(Err(corrupt(FormatError::SnapshotOverLimit { bytes: file_bytes })));
    }
    let mut bytes = Vec::with_capacity(file_bytes as usize);
    // Never more than the limit, even if the file grows while it is read.
    file.take(SNAPSHOT_BYTES_MAX).read_to_end(&mut bytes).map_err(|source| StoreError::read(path, source))?;
    Ok(decode_snapshot(bytes).map_err(corrupt))
}

/// Reads one segment's frames into `recovered`; returns the segment's length.
fn read_segment(path: &Path, recovered: &mut Recovered) -> Result<u64, StoreError> {
    let (scan, file_bytes) = scan_segment_file(path)?;
    for frame in scan.frames {
        match frame {
            Frame::Changes(changes) => recovered.changes.push(changes),
            Frame::Request(entry) => recovered.requests.push(entry),
        }
    }
    if let Some(ScanStop { offset, reason }) = scan.stop {
        let bytes_skipped = file_bytes - offset;
        recovered.skipped.push(SkippedFile { path: path.to_owned(), offset, bytes_skipped, reason });
    }
    Ok(file_bytes)
}

/// Scans a segment file; returns the scan and the file's length.
pub(super) fn scan_segment_file(path: &Path) -> Result<(super::codec::SegmentScan, u64), StoreError> {
    let file = File::open(path).map_err(|source| StoreError::read(path, source))?;
    let file_bytes = file.metadata().map_err(|source| StoreError::read(path, source))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let scan = scan_segment(&mut reader, file_bytes).map_err(|source| StoreError::read(path, source))?;
    Ok((scan, file_bytes))
}
