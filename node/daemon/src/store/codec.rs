//! Frames and snapshots to bytes and back, with their CRC-32 checksums.
//!
//! The layouts are `meshwork_protocol::storage`'s; this module adds the checksums (which the
//! protocol crate leaves to the node) and reads segments as a stream, so a segment is never
//! held in memory twice and no header can make the reader allocate more than the file holds.

use std::io::{self, Read, Seek, SeekFrom, Write};

use meshwork_protocol::storage::{
    FormatError, Frame, FrameHeader, FrameKind, LOG_FRAME_HEADER_BYTES, RequestEntry, SEGMENT_HEADER_BYTES,
    SNAPSHOT_HEADER_BYTES, SNAPSHOT_TRAILER_BYTES, SnapshotHeader, check_segment_header, decode_snapshot_content,
};

use super::SkipReason;

/// The checksum of a frame: its length field, its kind byte, its payload.
fn frame_crc32(payload_bytes: u32, kind: FrameKind, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&payload_bytes.to_le_bytes());
    hasher.update(&[kind.as_byte()]);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the frame (header and payload) to `out`; refuses a frame a reader would refuse.
pub(super) fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FormatError> {
    frame.check()?;
    let start = out.len();
    out.extend_from_slice(&[0; LOG_FRAME_HEADER_BYTES]);
    frame.encode_payload(out);
    let payload = &out[start + LOG_FRAME_HEADER_BYTES..];
    let payload_bytes =
        u32::try_from(payload.len()).map_err(|_| FormatError::FrameOverLimit { bytes: payload.len() as u64 })?;
    let kind = frame.kind();
    let crc32 = frame_crc32(payload_bytes, kind, payload);
    let header = FrameHeader { payload_bytes, crc32, kind };
    out[start..start + LOG_FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    Ok(())
}

/// What reading one segment gave: its frames in order, and where and why it stopped early.
#[derive(Debug, Default)]
pub(super) struct SegmentScan {
    pub(super) frames: Vec<Frame>,
    pub(super) stop: Option<ScanStop>,
}

/// Where a segment stopped decoding; everything from `offset` to the end is skipped.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ScanStop {
    pub(super) offset: u64,
    pub(super) reason: SkipReason,
}

/// How one frame read ended, when it did not give a frame.
enum FrameStop {
    /// The file ends inside the frame: a torn write.
    Truncated,
    Corrupt(FormatError),
    Io(io::Error),
}

impl From<io::Error> for FrameStop {
    fn from(error: io::Error) -> FrameStop {
        FrameStop::Io(error)
    }
}

/// Reads a segment of `file_bytes` bytes from its start. An I/O error is the only error;
/// whatever the bytes are, the scan ends with the frames before the first bad one.
pub(super) fn scan_segment(reader: &mut (impl Read + Seek), file_bytes: u64) -> io::Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    if file_bytes == 0 {
        // Created but never written: a crash right after creating the segment.
        return Ok(scan);
    }
    let header_bytes = SEGMENT_HEADER_BYTES as u64;
    if file_bytes < header_bytes {
        scan.stop = Some(ScanStop { offset: 0, reason: SkipReason::TruncatedTail });
        return Ok(scan);
    }
    let mut header = [0; SEGMENT_HEADER_BYTES];
    reader.read_exact(&mut header)?;
    if let Err(error) = check_segment_header(&header) {
        scan.stop = Some(ScanStop { offset: 0, reason: SkipReason::Corrupt(error) });
        return Ok(scan);
    }
    let mut offset = header_bytes;
    while offset < file_bytes {
        match read_frame(reader, file_bytes - offset) {
            Ok((frame, frame_bytes)) => {
                scan.frames.push(frame);
                offset += frame_bytes;
            }
            Err(FrameStop::Io(error)) => return Err(error),
            Err(FrameStop::Truncated) => {
                scan.stop = Some(ScanStop { offset, reason: SkipReason::TruncatedTail });
                break;
            }
            Err(FrameStop::Corrupt(error)) => {
                scan.stop = Some(ScanStop { offset, reason: corrupt_or_zero_tail(reader, offset, error)? });
                break;
            }
        }
    }
    Ok(scan)
}

/// Reads one frame of at most `remaining` bytes; returns it and its length on disk.
fn read_frame(reader: &mut impl Read, remaining: u64) -> Result<(Frame, u64), FrameStop> {
    if remaining < LOG_FRAME_HEADER_BYTES as u64 {
        return Err(FrameStop::Truncated);
    }
    let mut header = [0; LOG_FRAME_HEADER_BYTES];
    reader.read_exact(&mut header)?;
    // A torn write leaves a prefix of the frame, so a whole header is the header written.
    let header = FrameHeader::decode(&header).map_err(FrameStop::Corrupt)?;
    if header.frame_bytes() > remaining {
        return Err(FrameStop::Truncated);
    }
    // Bounded by LOG_FRAME_BYTES_MAX and by what the file holds.
    let mut payload = vec![0; header.payload_bytes as usize];
    reader.read_exact(&mut payload)?;
    let computed = frame_crc32(header.payload_bytes, header.kind, &payload);
    if computed != header.crc32 {
        return Err(FrameStop::Corrupt(FormatError::ChecksumMismatch { stored: header.crc32, computed }));
    }
    let frame = Frame::decode_payload(header.kind, payload).map_err(FrameStop::Corrupt)?;
    Ok((frame, header.frame_bytes()))
}

/// Some file systems (XFS, ext4 with `data=writeback`) can leave a file extended with
/// zeros after a crash: the size reached the disk, the data did not. Such a tail is a torn
/// write like any other, not corruption; frame kind 0 does not exist so it never decodes.
fn corrupt_or_zero_tail(reader: &mut (impl Read + Seek), offset: u64, error: FormatError) -> io::Result<SkipReason> {
    reader.seek(SeekFrom::Start(offset))?;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(SkipReason::TruncatedTail);
        }
        if chunk[..read].iter().any(|&byte| byte != 0) {
            return Ok(SkipReason::Corrupt(error));
        }
    }
}

/// Writes a whole snapshot file: header, document, entries, checksum trailer.
pub(super) fn write_snapshot(out: &mut impl Write, doc: &[u8], requests: &[RequestEntry]) -> io::Result<()> {
    let mut hasher = crc32fast::Hasher::new();
    let mut write = |bytes: &[u8]| -> io::Result<()> {
        hasher.update(bytes);
        out.write_all(bytes)
    };
    let request_count = u32::try_from(requests.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many request entries"))?;
    write(&SnapshotHeader { doc_bytes: doc.len() as u64, request_count }.encode())?;
    write(doc)?;
    let mut entry_bytes = Vec::new();
    for entry in requests {
        entry_bytes.clear();
        entry.encode(&mut entry_bytes);
        write(&entry_bytes)?;
    }
    out.write_all(&hasher.finalize().to_le_bytes())
}

/// A decoded snapshot: the document's bytes (Automerge `save()`) and the request entries.
pub(super) type DecodedSnapshot = (Vec<u8>, Vec<RequestEntry>);

/// Decodes a whole snapshot file.
pub(super) fn decode_snapshot(mut bytes: Vec<u8>) -> Result<DecodedSnapshot, FormatError> {
    let minimum = SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES;
    if bytes.len() < minimum {
        return Err(FormatError::Truncated { needed: minimum as u64, available: bytes.len() as u64 });
    }
    let (content, trailer) = bytes.split_at(bytes.len() - SNAPSHOT_TRAILER_BYTES);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    let content = decode_snapshot_content(content)?;
    // Cut the document out in place rather than copying it.
    bytes.truncate(content.doc.end);
    bytes.drain(..content.doc.start);
    Ok((bytes, content.requests))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use meshwork_protocol::storage::segment_header;

    use super::*;

    fn segment_of(frames: &[Frame]) -> Vec<u8> {
        let mut bytes = segment_header().to_vec();
        for frame in frames {
            encode_frame(frame, &mut bytes).unwrap();
        }
        bytes
    }

    fn scan(bytes: &[u8]) -> SegmentScan {
        scan_segment(&mut Cursor::new(bytes), bytes.len() as u64).unwrap()
    }

    /// A header announcing a huge frame is corrupt and allocates nothing: the goal is that
    /// no bytes on disk make the reader allocate more than the limit; method: a 4 GiB length.
    #[test]
    fn absurd_frame_length_is_corrupt_without_allocating() {
        let mut bytes = segment_of(&[Frame::Changes(b"one".to_vec())]);
        let corrupt_at = bytes.len() as u64;
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 1, 7]);
        let scan = scan(&bytes);
        assert_eq!(scan.frames, vec![Frame::Changes(b"one".to_vec())]);
        let reason = SkipReason::Corrupt(FormatError::FrameOverLimit { bytes: u64::from(u32::MAX) });
        assert_eq!(scan.stop, Some(ScanStop { offset: corrupt_at, reason }));
    }

    /// A zero-filled tail (size on disk, data not) is a torn write, not corruption; zeros
    /// followed by data are corruption. Method: append zeros, then a non-zero byte.
    #[test]
    fn zero_filled_tail_is_a_torn_write() {
        let mut bytes = segment_of(&[Frame::Changes(b"one".to_vec())]);
        let tail_at = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 100]);
        let stop = ScanStop { offset: tail_at, reason: SkipReason::TruncatedTail };
        assert_eq!(scan(&bytes).stop, Some(stop));
        bytes.push(1);
        assert!(matches!(scan(&bytes).stop, Some(ScanStop { reason: SkipReason::Corrupt(_), .. })));
    }

    /// A segment too short for its header is a torn write; a wrong magic is corruption.
    #[test]
    fn segment_header_is_checked() {
        assert!(scan(&[]).stop.is_none());
        let torn = ScanStop { offset: 0, reason: SkipReason::TruncatedTail };
        assert_eq!(scan(&segment_header()[..5]).stop, Some(torn));
        let bad_magic = scan(b"MWSNAP\x01\x00");
        assert!(matches!(bad_magic.stop, Some(ScanStop { offset: 0, reason: SkipReason::Corrupt(_) })));
    }

    /// A snapshot round trips; any flipped bit is refused. Method: flip each byte in turn.
    #[test]
    fn snapshot_round_trips_and_refuses_every_flipped_byte() {
        let requests = vec![RequestEntry { key: "k".into(), response: b"r".to_vec(), unix_ms: 9 }];
        let mut bytes = Vec::new();
        write_snapshot(&mut bytes, b"doc bytes", &requests).unwrap();
        assert_eq!(decode_snapshot(bytes.clone()), Ok((b"doc bytes".to_vec(), requests)));
        for index in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 0x40;
            assert!(decode_snapshot(flipped).is_err(), "byte {index}");
        }
    }
}
