//! On-disk formats of the node home: the boot counter and the document store.
//!
//! Pure layouts, no I/O. The node (`node/src/store`) reads and writes the files; this module
//! says what the bytes mean. Every integer is little-endian. Every checksum is CRC-32 as
//! zlib's `crc32` computes it (CRC-32/ISO-HDLC: polynomial `0x04C11DB7` reflected,
//! initial value and final xor `0xFFFFFFFF`); the node computes it, the types here carry the
//! stored value and say which bytes it covers.
//!
//! # The home
//!
//! - `boot`: the boot counter, see [`encode_boot`].
//! - `doc/` ([`DOC_DIR_NAME`]): the queue document, as snapshots and log segments.
//!
//! # The document store
//!
//! `doc/` holds two kinds of file, each named with a sequence number (see [`StoreFile`]).
//! Snapshots and segments share one sequence: every new file takes a number higher than every
//! file already in the directory, so numbers order files by creation.
//!
//! - `snapshot-NNNNNNNNNN.am`: a compacted snapshot, see [`SnapshotHeader`]. Snapshot `S`
//!   holds everything written to the segments numbered below `S`.
//! - `log-NNNNNNNNNN.mwl`: an append-only log segment, see [`SEGMENT_MAGIC`] and
//!   [`FrameHeader`]. A segment is only ever appended to by the process that created it; a
//!   process that opens the store writes to a new segment, so frames never follow a torn or
//!   corrupt tail left by an earlier process.
//! - Names ending in [`TEMP_FILE_SUFFIX`] are writes that did not finish; readers ignore them.
//!
//! To recover, a reader takes the newest snapshot that decodes (checksum and layout), then
//! replays, in sequence order, the frames of every segment numbered above it (every segment
//! when no snapshot decodes). Replaying a change twice is harmless: Automerge ignores changes
//! it already has, and a later idempotency entry for a key replaces an earlier one.
//!
//! A segment is read frame by frame from its header to its end. Reading stops at the first
//! frame that does not decode, and the rest of that segment is skipped (reported, never
//! rewritten); the next segment is read as usual. The rest counts as a torn write (a crash
//! during an append, never acknowledged) when the file ends inside the segment header or
//! inside a frame, or when it holds only zero bytes (some file systems leave a crashed file
//! extended with zeros). Otherwise it is corrupt. An empty file holds no frames.
//!
//! A writer that compacts into snapshot `S` keeps the snapshot `P` it recovered from or wrote
//! before, and every segment above `P`, until a later snapshot succeeds; so a reader that
//! finds `S` corrupt still recovers everything from `P` and the segments after it.

use std::ops::Range;

/// The directory of the home that holds the document store.
pub const DOC_DIR_NAME: &str = "doc";
/// The Unix socket of the home on which the node serves its local API (mode 0600).
pub const SOCKET_FILE_NAME: &str = "node.sock";
/// The file of the home a running node holds an exclusive lock on; free once it exited.
pub const LOCK_FILE_NAME: &str = "node.lock";
/// The file of the home that holds the boot counter.
pub const BOOT_FILE_NAME: &str = "boot";
/// Suffix of a file being written: the node writes `NAME.tmp`, fsyncs it, then renames it to
/// `NAME`. Such a file left by a crash is incomplete; readers ignore it and may remove it.
pub const TEMP_FILE_SUFFIX: &str = ".tmp";

/// Largest payload of one log frame, in bytes. A frame header announcing more is corrupt.
pub const LOG_FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Largest snapshot file, in bytes. A larger file is corrupt.
pub const SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Longest request key of an idempotency entry, in bytes of UTF-8.
pub const REQUEST_KEY_BYTES_MAX: usize = 1024;
/// Digits of the sequence number in a store file name, zero-padded.
pub const FILE_SEQUENCE_DIGITS: usize = 10;
/// Highest sequence number a store file name can hold.
pub const FILE_SEQUENCE_MAX: u64 = 9_999_999_999;
/// Longest boot file: ten digits and a newline, in bytes.
pub const BOOT_FILE_BYTES_MAX: usize = 11;

/// First bytes of a log segment.
pub const SEGMENT_MAGIC: [u8; 6] = *b"MWLOGS";
/// The segment format this build writes and the only one it reads.
pub const SEGMENT_FORMAT_VERSION: u8 = 1;
/// Length of the segment header: [`SEGMENT_MAGIC`], the format version (u8), a reserved
/// byte that is 0. Frames follow it directly.
pub const SEGMENT_HEADER_BYTES: usize = 8;

/// First bytes of a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 6] = *b"MWSNAP";
/// The snapshot format this build writes and the only one it reads.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;
/// Length of the snapshot header, see [`SnapshotHeader`].
pub const SNAPSHOT_HEADER_BYTES: usize = 20;
/// Length of the snapshot trailer: the CRC-32 (u32) of every byte before it.
pub const SNAPSHOT_TRAILER_BYTES: usize = 4;

/// Length of a frame header, see [`FrameHeader`].
pub const LOG_FRAME_HEADER_BYTES: usize = 9;

/// Why bytes on disk do not decode. Every variant describes the bytes, not the file: the
/// reader adds the path and the offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("the bytes end after {available} of the {needed} bytes needed")]
    Truncated { needed: u64, available: u64 },
    #[error("the file does not start with the magic bytes {expected:?}")]
    BadMagic { expected: &'static str },
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("the reserved byte is {found}, not 0")]
    ReservedNotZero { found: u8 },
    #[error("a frame announces {bytes} bytes, over the limit LOG_FRAME_BYTES_MAX = {LOG_FRAME_BYTES_MAX}")]
    FrameOverLimit { bytes: u64 },
    #[error("the snapshot has {bytes} bytes, over the limit SNAPSHOT_BYTES_MAX = {SNAPSHOT_BYTES_MAX}")]
    SnapshotOverLimit { bytes: u64 },
    #[error("a request key of {bytes} bytes is over the limit REQUEST_KEY_BYTES_MAX = {REQUEST_KEY_BYTES_MAX}")]
    RequestKeyOverLimit { bytes: u64 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("the request key is not UTF-8")]
    KeyNotUtf8,
    #[error("{bytes} bytes follow the end of the {what}")]
    TrailingBytes { what: &'static str, bytes: u64 },
    #[error("the boot counter is not a number of 1 to 10 digits below 2^32 followed by a newline")]
    BadBootCounter,
}

/// The names of the files in `doc/`: the kind and the sequence number.
///
/// `snapshot-NNNNNNNNNN.am` and `log-NNNNNNNNNN.mwl`, where `NNNNNNNNNN` is the sequence
/// number in exactly [`FILE_SEQUENCE_DIGITS`] decimal digits, zero-padded. Any other name is
/// not a store file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreFile {
    /// `snapshot-NNNNNNNNNN.am`
    Snapshot(u64),
    /// `log-NNNNNNNNNN.mwl`
    Segment(u64),
}

impl StoreFile {
    const SNAPSHOT_PREFIX: &str = "snapshot-";
    const SNAPSHOT_SUFFIX: &str = ".am";
    const SEGMENT_PREFIX: &str = "log-";
    const SEGMENT_SUFFIX: &str = ".mwl";

    /// The sequence number in the name.
    pub fn sequence(self) -> u64 {
        match self {
            StoreFile::Snapshot(sequence) | StoreFile::Segment(sequence) => sequence,
        }
    }

    /// The file name. Panics on a sequence above [`FILE_SEQUENCE_MAX`], which no name holds.
    pub fn file_name(self) -> String {
        assert!(self.sequence() <= FILE_SEQUENCE_MAX, "store file sequence over FILE_SEQUENCE_MAX");
        let width = FILE_SEQUENCE_DIGITS;
        match self {
            StoreFile::Snapshot(sequence) => {
                format!("{}{sequence:0width$}{}", Self::SNAPSHOT_PREFIX, Self::SNAPSHOT_SUFFIX)
            }
            StoreFile::Segment(sequence) => {
                format!("{}{sequence:0width$}{}", Self::SEGMENT_PREFIX, Self::SEGMENT_SUFFIX)
            }
        }
    }

    /// The store file a name denotes, or `None` for any other name.
    pub fn parse(name: &str) -> Option<StoreFile> {
        let digits = |prefix: &str, suffix: &str| -> Option<u64> {
            let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let well_formed = digits.len() == FILE_SEQUENCE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit());
            if well_formed { digits.parse().ok() } else { None }
        };
        if let Some(sequence) = digits(Self::SNAPSHOT_PREFIX, Self::SNAPSHOT_SUFFIX) {
            return Some(StoreFile::Snapshot(sequence));
        }
        digits(Self::SEGMENT_PREFIX, Self::SEGMENT_SUFFIX).map(StoreFile::Segment)
    }
}

/// The header of a log segment: [`SEGMENT_MAGIC`], [`SEGMENT_FORMAT_VERSION`], a reserved 0.
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0; SEGMENT_HEADER_BYTES];
    header[..6].copy_from_slice(&SEGMENT_MAGIC);
    header[6] = SEGMENT_FORMAT_VERSION;
    header
}

/// Checks a segment header written by [`segment_header`].
pub fn check_segment_header(header: &[u8; SEGMENT_HEADER_BYTES]) -> Result<(), FormatError> {
    check_magic_and_version(header, &SEGMENT_MAGIC, SEGMENT_FORMAT_VERSION, "MWLOGS")
}

fn check_magic_and_version(
    header: &[u8],
    magic: &[u8; 6],
    version: u8,
    magic_text: &'static str,
) -> Result<(), FormatError> {
    if header.get(..6) != Some(magic.as_slice()) {
        return Err(FormatError::BadMagic { expected: magic_text });
    }
    match (header.get(6), header.get(7)) {
        (Some(&found), _) if found != version => Err(FormatError::UnsupportedVersion { found, supported: version }),
        (_, Some(&found)) if found != 0 => Err(FormatError::ReservedNotZero { found }),
        (Some(_), Some(_)) => Ok(()),
        _ => Err(FormatError::Truncated { needed: 8, available: header.len() as u64 }),
    }
}

/// What a log frame holds. The byte is the frame's kind on disk; 0 is never a kind, so a
/// zero-filled region never decodes as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Automerge changes: bytes from `save_incremental` or `save_after`, possibly several
    /// changes, loadable with `load_incremental`.
    Changes = 1,
    /// One idempotency entry, encoded as [`RequestEntry::encode`] describes.
    Request = 2,
}

impl FrameKind {
    /// The kind a frame's kind byte denotes; any byte but 1 and 2 is refused.
    pub fn from_byte(byte: u8) -> Result<FrameKind, FormatError> {
        match byte {
            1 => Ok(FrameKind::Changes),
            2 => Ok(FrameKind::Request),
            kind => Err(FormatError::UnknownKind { kind }),
        }
    }

    /// The kind byte written to disk.
    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// The 9 bytes before each frame's payload in a log segment.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 4 | `payload_bytes`, u32, at most [`LOG_FRAME_BYTES_MAX`] |
/// | 4 | 4 | `crc32`, u32: CRC-32 of bytes 0..4, then byte 8, then the payload |
/// | 8 | 1 | `kind`, see [`FrameKind`] |
/// | 9 | `payload_bytes` | the payload |
///
/// The checksum covers every byte of the frame except itself. A frame that ends past the end
/// of the file is a torn write; a frame whose header or checksum does not decode is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_bytes: u32,
    pub crc32: u32,
    pub kind: FrameKind,
}

impl FrameHeader {
    /// The 9 bytes of the header, as the table above lays them out.
    pub fn encode(&self) -> [u8; LOG_FRAME_HEADER_BYTES] {
        let mut bytes = [0; LOG_FRAME_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.payload_bytes.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.crc32.to_le_bytes());
        bytes[8] = self.kind.as_byte();
        bytes
    }

    /// Decodes a header, refusing a length over [`LOG_FRAME_BYTES_MAX`] and an unknown
    /// kind. The checksum is the caller's to verify.
    pub fn decode(bytes: &[u8; LOG_FRAME_HEADER_BYTES]) -> Result<FrameHeader, FormatError> {
        let [l0, l1, l2, l3, c0, c1, c2, c3, kind] = *bytes;
        let payload_bytes = u32::from_le_bytes([l0, l1, l2, l3]);
        if payload_bytes > LOG_FRAME_BYTES_MAX {
            return Err(FormatError::FrameOverLimit { bytes: u64::from(payload_bytes) });
        }
        let kind = FrameKind::from_byte(kind)?;
        Ok(FrameHeader { payload_bytes, crc32: u32::from_le_bytes([c0, c1, c2, c3]), kind })
    }

    /// The whole frame's length, header included.
    pub fn frame_bytes(&self) -> u64 {
        LOG_FRAME_HEADER_BYTES as u64 + u64::from(self.payload_bytes)
    }
}

/// One entry of the idempotency table: the response a request got, kept so a retried
/// request gets the same response instead of acting twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEntry {
    /// Names the request; at most [`REQUEST_KEY_BYTES_MAX`] bytes.
    pub key: String,
    /// The response as the node sent it, opaque to the store.
    pub response: Vec<u8>,
    /// When the node answered, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl RequestEntry {
    /// Refuses a key over [`REQUEST_KEY_BYTES_MAX`].
    pub fn check(&self) -> Result<(), FormatError> {
        if self.key.len() > REQUEST_KEY_BYTES_MAX {
            return Err(FormatError::RequestKeyOverLimit { bytes: self.key.len() as u64 });
        }
        Ok(())
    }

    /// Length of [`RequestEntry::encode`]'s output.
    pub fn encoded_bytes(&self) -> u64 {
        4 + self.key.len() as u64 + 4 + self.response.len() as u64 + 8
    }

    /// Appends `key_bytes` (u32), the key (UTF-8), `response_bytes` (u32), the response,
    /// `unix_ms` (u64). A response longer than `u32::MAX` bytes cannot be encoded; the frame
    /// and snapshot limits refuse it long before.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&(self.response.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.response);
        out.extend_from_slice(&self.unix_ms.to_le_bytes());
    }

    /// Decodes one entry from the start of `bytes`; returns it and the bytes it used.
    pub fn decode(bytes: &[u8]) -> Result<(RequestEntry, usize), FormatError> {
        let mut reader = Reader { bytes, used: 0 };
        let key_bytes = reader.u32()? as usize;
        if key_bytes > REQUEST_KEY_BYTES_MAX {
            return Err(FormatError::RequestKeyOverLimit { bytes: key_bytes as u64 });
        }
        let key = std::str::from_utf8(reader.take(key_bytes)?).map_err(|_| FormatError::KeyNotUtf8)?;
        let key = key.to_owned();
        let response_bytes = reader.u32()? as usize;
        let response = reader.take(response_bytes)?.to_vec();
        let unix_ms = reader.u64()?;
        Ok((RequestEntry { key, response, unix_ms }, reader.used))
    }
}

/// A decoded log frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Automerge changes, see [`FrameKind::Changes`].
    Changes(Vec<u8>),
    /// An idempotency entry, see [`FrameKind::Request`].
    Request(RequestEntry),
}

impl Frame {
    /// The kind byte this frame is written with.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Changes(_) => FrameKind::Changes,
            Frame::Request(_) => FrameKind::Request,
        }
    }

    /// Length of the payload [`Frame::encode_payload`] writes.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Frame::Changes(changes) => changes.len() as u64,
            Frame::Request(entry) => entry.encoded_bytes(),
        }
    }

    /// Refuses a frame a reader would refuse: a payload over [`LOG_FRAME_BYTES_MAX`], a request
    /// key over [`REQUEST_KEY_BYTES_MAX`].
    pub fn check(&self) -> Result<(), FormatError> {
        if let Frame::Request(entry) = self {
            entry.check()?;
        }
        let bytes = self.payload_bytes();
        if bytes > u64::from(LOG_FRAME_BYTES_MAX) {
            return Err(FormatError::FrameOverLimit { bytes });
        }
        Ok(())
    }

    /// Appends the payload: the changes as they are, or the entry as
    /// [`RequestEntry::encode`] lays it out.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Changes(changes) => out.extend_from_slice(changes),
            Frame::Request(entry) => entry.encode(out),
        }
    }

    /// Decodes a payload whose checksum the caller verified. A request payload must be
    /// exactly one entry.
    pub fn decode_payload(kind: FrameKind, payload: Vec<u8>) -> Result<Frame, FormatError> {
        match kind {
            FrameKind::Changes => Ok(Frame::Changes(payload)),
            FrameKind::Request => {
                let (entry, used) = RequestEntry::decode(&payload)?;
                trailing_bytes("request entry", payload.len() - used)?;
                Ok(Frame::Request(entry))
            }
        }
    }
}

/// The first 20 bytes of a snapshot.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 6 | [`SNAPSHOT_MAGIC`] |
/// | 6 | 1 | [`SNAPSHOT_FORMAT_VERSION`] |
/// | 7 | 1 | reserved, 0 |
/// | 8 | 8 | `doc_bytes`, u64 |
/// | 16 | 4 | `request_count`, u32 |
/// | 20 | `doc_bytes` | the document: Automerge `save()` bytes |
/// | … | … | `request_count` entries, each as [`RequestEntry::encode`] |
/// | end − 4 | 4 | CRC-32 of every byte before it |
///
/// The file is exactly that long: bytes after the last entry make it corrupt. The whole
/// file is at most [`SNAPSHOT_BYTES_MAX`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub doc_bytes: u64,
    pub request_count: u32,
}

impl SnapshotHeader {
    /// The 20 bytes of the header, as the table above lays them out.
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut bytes = [0; SNAPSHOT_HEADER_BYTES];
        bytes[..6].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[6] = SNAPSHOT_FORMAT_VERSION;
        bytes[8..16].copy_from_slice(&self.doc_bytes.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.request_count.to_le_bytes());
        bytes
    }

    /// Decodes a header, refusing another magic, another version and a reserved byte other
    /// than 0. Whether `doc_bytes` fits the file is [`decode_snapshot_content`]'s to check.
    pub fn decode(bytes: &[u8; SNAPSHOT_HEADER_BYTES]) -> Result<SnapshotHeader, FormatError> {
        check_magic_and_version(bytes, &SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, "MWSNAP")?;
        let mut reader = Reader { bytes: &bytes[8..], used: 0 };
        Ok(SnapshotHeader { doc_bytes: reader.u64()?, request_count: reader.u32()? })
    }
}

/// A snapshot's content, decoded by [`decode_snapshot_content`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContent {
    /// Where the document's bytes are in the content.
    pub doc: Range<usize>,
    pub requests: Vec<RequestEntry>,
}

/// The length of the snapshot file holding `doc_bytes` of document and `requests`.
pub fn snapshot_file_bytes(doc_bytes: u64, requests: &[RequestEntry]) -> u64 {
    let entries: u64 = requests.iter().map(RequestEntry::encoded_bytes).sum();
    (SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES) as u64 + doc_bytes + entries
}

/// Decodes a snapshot's content: the file without its 4-byte trailer, whose checksum the
/// caller verified.
pub fn decode_snapshot_content(content: &[u8]) -> Result<SnapshotContent, FormatError> {
    let header: &[u8; SNAPSHOT_HEADER_BYTES] = content
        .get(..SNAPSHOT_HEADER_BYTES)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(FormatError::Truncated { needed: SNAPSHOT_HEADER_BYTES as u64, available: content.len() as u64 })?;
    let header = SnapshotHeader::decode(header)?;
    let mut reader = Reader { bytes: content, used: SNAPSHOT_HEADER_BYTES };
    let doc_bytes = usize::try_from(header.doc_bytes).unwrap_or(usize::MAX);
    reader.take(doc_bytes)?;
    let doc = SNAPSHOT_HEADER_BYTES..reader.used;
    // Each entry takes at least 16 bytes, so the count cannot make this allocation absurd.
    let mut requests = Vec::with_capacity((header.request_count as usize).min(content.len() / 16));
    for _ in 0..header.request_count {
        let (entry, used) = RequestEntry::decode(&content[reader.used..])?;
        reader.used += used;
        requests.push(entry);
    }
    trailing_bytes("snapshot", content.len() - reader.used)?;
    Ok(SnapshotContent { doc, requests })
}

/// The boot counter file: the last boot number handed out, in decimal ASCII, then `\n`
/// (`"7\n"`). The node replaces it atomically (temp file, fsync, rename, directory fsync)
/// before it uses the number, so no number is handed out twice.
pub fn encode_boot(boot: u32) -> String {
    format!("{boot}\n")
}

/// Decodes a boot counter file; anything but 1 to 10 digits, below 2^32, and one `\n` is
/// refused (never read as 0).
pub fn decode_boot(bytes: &[u8]) -> Result<u32, FormatError> {
    let digits = bytes.strip_suffix(b"\n").ok_or(FormatError::BadBootCounter)?;
    let well_formed = (1..=10).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit);
    if !well_formed {
        return Err(FormatError::BadBootCounter);
    }
    std::str::from_utf8(digits).ok().and_then(|text| text.parse().ok()).ok_or(FormatError::BadBootCounter)
}

fn trailing_bytes(what: &'static str, bytes: usize) -> Result<(), FormatError> {
    if bytes == 0 { Ok(()) } else { Err(FormatError::TrailingBytes { what, bytes: bytes as u64 }) }
}

/// Reads little-endian fields off a byte slice, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    used: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], FormatError> {
        let end = self.used.checked_add(count).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated {
                needed: self.used as u64 + count as u64,
                available: self.bytes.len() as u64,
            });
        };
        let taken = &self.bytes[self.used..end];
        self.used = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut array = [0; 8];
        array.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(key: &str, response: &[u8], unix_ms: u64) -> RequestEntry {
        RequestEntry { key: key.to_owned(), response: response.to_vec(), unix_ms }
    }

    /// The names of store files: fixed width, and only exact names parse.
    #[test]
    fn store_file_names_round_trip_and_refuse_near_misses() {
        assert_eq!(StoreFile::Snapshot(7).file_name(), "snapshot-0000000007.am");
        assert_eq!(StoreFile::Segment(12).file_name(), "log-0000000012.mwl");
        for file in [StoreFile::Snapshot(0), StoreFile::Segment(FILE_SEQUENCE_MAX)] {
            assert_eq!(StoreFile::parse(&file.file_name()), Some(file));
        }
        for name in [
            "log-12.mwl",
            "log-0000000012.mwl.tmp",
            "snapshot-000000001x.am",
            "snapshot-00000000001.am",
            "log-+000000012.mwl",
            "boot",
        ] {
            assert_eq!(StoreFile::parse(name), None, "{name}");
        }
    }

    /// The exact bytes of a frame header and a segment header, pinned.
    #[test]
    fn headers_encode_to_the_documented_bytes() {
        let header = FrameHeader { payload_bytes: 3, crc32: 0xAABBCCDD, kind: FrameKind::Request };
        assert_eq!(header.encode(), [3, 0, 0, 0, 0xDD, 0xCC, 0xBB, 0xAA, 2]);
        assert_eq!(FrameHeader::decode(&header.encode()), Ok(header));
        assert_eq!(&segment_header(), b"MWLOGS\x01\x00");
        assert_eq!(check_segment_header(&segment_header()), Ok(()));
        let snapshot = SnapshotHeader { doc_bytes: 5, request_count: 2 };
        assert_eq!(&snapshot.encode()[..8], b"MWSNAP\x01\x00");
        assert_eq!(SnapshotHeader::decode(&snapshot.encode()), Ok(snapshot));
    }

    /// Headers that announce an absurd length, an unknown kind or another version are refused.
    #[test]
    fn headers_refuse_absurd_lengths_unknown_kinds_and_versions() {
        let mut bytes = FrameHeader { payload_bytes: 0, crc32: 0, kind: FrameKind::Changes }.encode();
        bytes[..4].copy_from_slice(&(LOG_FRAME_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(FrameHeader::decode(&bytes), Err(FormatError::FrameOverLimit { .. })));
        assert_eq!(FrameHeader::decode(&[0; 9]), Err(FormatError::UnknownKind { kind: 0 }));
        let mut segment = segment_header();
        segment[6] = 2;
        assert_eq!(check_segment_header(&segment), Err(FormatError::UnsupportedVersion { found: 2, supported: 1 }));
        assert!(matches!(check_segment_header(b"MWSNAP\x01\x00"), Err(FormatError::BadMagic { .. })));
    }

    /// A snapshot's content with entries decodes to the same document range and entries.
    #[test]
    fn snapshot_content_round_trips() {
        let requests = vec![entry("a", b"{}", 1), entry("b/2", b"", u64::MAX)];
        let doc = b"automerge bytes";
        let mut content = SnapshotHeader { doc_bytes: doc.len() as u64, request_count: 2 }.encode().to_vec();
        content.extend_from_slice(doc);
        requests.iter().for_each(|request| request.encode(&mut content));
        assert_eq!(content.len() as u64 + 4, snapshot_file_bytes(doc.len() as u64, &requests));
        let decoded = decode_snapshot_content(&content);
        assert_eq!(decoded, Ok(SnapshotContent { doc: 20..35, requests }));
        content.push(0);
        assert!(matches!(decode_snapshot_content(&content), Err(FormatError::TrailingBytes { .. })));
    }

    /// The boot file is digits and a newline; anything else is refused, never read as 0.
    #[test]
    fn boot_counter_decodes_only_digits_and_a_newline() {
        assert_eq!(decode_boot(encode_boot(0).as_bytes()), Ok(0));
        assert_eq!(decode_boot(encode_boot(u32::MAX).as_bytes()), Ok(u32::MAX));
        for bad in [&b""[..], b"\n", b"7", b"7\n\n", b" 7\n", b"-1\n", b"4294967296\n", b"\0\0"] {
            assert_eq!(decode_boot(bad), Err(FormatError::BadBootCounter), "{bad:?}");
        }
    }

    proptest! {
        /// Any bytes given to the decoders are an error or a value, never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = RequestEntry::decode(&bytes);
            let _ = decode_snapshot_content(&bytes);
            let _ = decode_boot(&bytes);
            let _ = Frame::decode_payload(FrameKind::Request, bytes);
        }

        /// Request entries round trip through their payload encoding.
        #[test]
        fn request_entries_round_trip(
            key in "[a-z0-9/-]{0,40}",
            response in proptest::collection::vec(any::<u8>(), 0..64),
            unix_ms: u64,
        ) {
            let frame = Frame::Request(RequestEntry { key, response, unix_ms });
            let mut payload = Vec::new();
            frame.encode_payload(&mut payload);
            prop_assert_eq!(payload.len() as u64, frame.payload_bytes());
            prop_assert_eq!(Frame::decode_payload(FrameKind::Request, payload), Ok(frame));
        }
    }
}
