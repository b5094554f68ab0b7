//! Frames between nodes: version byte, kind byte, payload; on a stream each frame is
//! preceded by its length (u32, big-endian) and capped at [`FRAME_BYTES_MAX`].

/// Largest frame a node accepts or sends. Automerge sync messages exceed 1 MB at times.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Version byte of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of the length prefix on a stream.
pub const LENGTH_PREFIX_BYTES: usize = 4;

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// One message on a stream between nodes: the sync protocol (`/meshwork/sync/1`) carries
/// only [`Frame::Sync`]; the join protocol (`/meshwork/join/1`) the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An Automerge sync message.
    Sync(Vec<u8>),
    /// A joining node presents its invite's secret and its name.
    JoinRequest(JoinRequest),
    /// The inviter refuses the join.
    JoinRefused(JoinRefusal),
    /// The inviter accepted: a piece of its document (`save()` bytes), in order.
    DocumentChunk(Vec<u8>),
    /// The last frame of an accepted join: the document's whole length, to check.
    DocumentEnd { total_bytes: u64 },
}

/// What a joining node sends first on `/meshwork/join/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The invite token's one-time secret.
    pub secret: [u8; 32],
    /// The joining node's name, for `mesh members`.
    pub name: String,
}

/// Why an inviter refused a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRefusal {
    pub code: ErrorCode,
    pub message: String,
}

/// Bytes of document a [`Frame::DocumentChunk`] carries at most.
pub const DOCUMENT_CHUNK_BYTES: usize = 1024 * 1024;

const KIND_SYNC: u8 = 0;
const KIND_JOIN_REQUEST: u8 = 1;
const KIND_JOIN_REFUSED: u8 = 2;
const KIND_DOCUMENT_CHUNK: u8 = 3;
const KIND_DOCUMENT_END: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {0} bytes is over FRAME_BYTES_MAX")]
    TooLarge(usize),
    #[error("frame is empty or lacks its kind")]
    Truncated,
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of kind {kind} does not decode: {reason}")]
    Malformed { kind: u8, reason: String },
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Sync(payload) => (KIND_SYNC, payload.into()),
            Frame::JoinRequest(request) => (KIND_JOIN_REQUEST, encode_payload(request).into()),
            Frame::JoinRefused(refusal) => (KIND_JOIN_REFUSED, encode_payload(refusal).into()),
            Frame::DocumentChunk(chunk) => (KIND_DOCUMENT_CHUNK, chunk.into()),
            Frame::DocumentEnd { total_bytes } => (KIND_DOCUMENT_END, total_bytes.to_be_bytes().to_vec().into()),
        };
        let mut bytes = Vec::with_capacity(2 + payload.len());
        bytes.push(WIRE_VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&payload);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let (kind, payload) = match bytes {
            [WIRE_VERSION, kind, payload @ ..] => (*kind, payload),
            [version, _, ..] => return Err(WireError::UnknownVersion(*version)),
            _ => return Err(WireError::Truncated),
        };
        match kind {
            KIND_SYNC => Ok(Frame::Sync(payload.to_vec())),
            KIND_JOIN_REQUEST => decode_payload(kind, payload).map(Frame::JoinRequest),
            KIND_JOIN_REFUSED => decode_payload(kind, payload).map(Frame::JoinRefused),
            KIND_DOCUMENT_CHUNK => Ok(Frame::DocumentChunk(payload.to_vec())),
            KIND_DOCUMENT_END => {
                let total: [u8; 8] = payload
                    .try_into()
                    .map_err(|_| WireError::Malformed { kind, reason: "the length is not 8 bytes".to_owned() })?;
                Ok(Frame::DocumentEnd { total_bytes: u64::from_be_bytes(total) })
            }
            kind => Err(WireError::UnknownKind(kind)),
        }
    }
}

fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a postcard payload, refusing trailing bytes and any encoding but the canonical one
/// (postcard reads an overlong varint, `82 00` for 2, as the value) so each frame has one encoding.
fn decode_payload<T: Serialize + for<'de> Deserialize<'de>>(kind: u8, payload: &[u8]) -> Result<T, WireError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) if encode_payload(&value) == payload => Ok(value),
        Ok((_, [])) => Err(WireError::Malformed { kind, reason: "the payload is not canonically encoded".to_owned() }),
        Ok((_, rest)) => Err(WireError::Malformed { kind, reason: format!("{} bytes after the payload", rest.len()) }),
        Err(error) => Err(WireError::Malformed { kind, reason: error.to_string() }),
    }
}

/// Prepends the length prefix to an encoded frame.
pub fn length_prefixed(frame: &[u8]) -> Result<Vec<u8>, WireError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(frame.len()));
    }
    let length = u32::try_from(frame.len()).map_err(|_| WireError::TooLarge(frame.len()))?;
    let mut bytes = Vec::with_capacity(LENGTH_PREFIX_BYTES + frame.len());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(frame);
    Ok(bytes)
}

/// Splits a byte stream into frames. Refuses a length over the cap before buffering it.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buffer: Vec<u8>,
}

impl FrameSplitter {
    /// Adds bytes read from the stream; returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(prefix) = self.buffer.get(..LENGTH_PREFIX_BYTES) {
            let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if length > FRAME_BYTES_MAX {
                return Err(WireError::TooLarge(length));
            }
            if self.buffer.len() < LENGTH_PREFIX_BYTES + length {
                break;
            }
            frames.push(self.buffer[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + length].to_vec());
            self.buffer.drain(..LENGTH_PREFIX_BYTES + length);
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_split_stream() {
        let frames = [Frame::Sync(vec![1, 2, 3]), Frame::Sync(Vec::new())];
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend(length_prefixed(&frame.encode()).unwrap());
        }
        let mut splitter = FrameSplitter::default();
        let mut decoded = Vec::new();
        for byte in stream {
            for bytes in splitter.push(&[byte]).unwrap() {
                decoded.push(Frame::decode(&bytes).unwrap());
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn oversize_length_is_refused_before_buffering() {
        let mut splitter = FrameSplitter::default();
        let length = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_be_bytes();
        assert_eq!(splitter.push(&length), Err(WireError::TooLarge(FRAME_BYTES_MAX + 1)));
    }

    #[test]
    fn garbage_frames_are_refused() {
        assert_eq!(Frame::decode(&[]), Err(WireError::Truncated));
        assert_eq!(Frame::decode(&[9, 0]), Err(WireError::UnknownVersion(9)));
        assert_eq!(Frame::decode(&[WIRE_VERSION, 7]), Err(WireError::UnknownKind(7)));
        assert!(matches!(Frame::decode(&[WIRE_VERSION, KIND_JOIN_REQUEST, 1]), Err(WireError::Malformed { .. })));
        assert!(matches!(Frame::decode(&[WIRE_VERSION, KIND_DOCUMENT_END, 1, 2]), Err(WireError::Malformed { .. })));
    }

    #[test]
    fn join_frames_round_trip() {
        let frames = [
            Frame::JoinRequest(JoinRequest { secret: [7; 32], name: "laptop".to_owned() }),
            Frame::JoinRefused(JoinRefusal { code: ErrorCode::GateRefused, message: "used".to_owned() }),
            Frame::DocumentChunk(vec![1, 2, 3]),
            Frame::DocumentEnd { total_bytes: 3 },
        ];
        for frame in frames {
            assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
        }
    }

    /// Found by the `frame_decoder` fuzz target (fuzz/seeds/frame_decoder/overlong-varint-join-refused):
    /// postcard reads an overlong varint as its value, so a join frame had more than one encoding.
    #[test]
    fn a_join_frame_with_an_overlong_varint_is_refused() {
        let overlong_code = [WIRE_VERSION, KIND_JOIN_REFUSED, 0x82, 0x00, 0x00];
        assert!(matches!(Frame::decode(&overlong_code), Err(WireError::Malformed { .. })));
        let mut overlong_name_length = vec![WIRE_VERSION, KIND_JOIN_REQUEST];
        overlong_name_length.extend([7; 32]);
        overlong_name_length.extend([0x81, 0x00, b'a']);
        assert!(matches!(Frame::decode(&overlong_name_length), Err(WireError::Malformed { .. })));
        let canonical = Frame::JoinRefused(JoinRefusal { code: ErrorCode::NodeUnavailable, message: String::new() });
        assert_eq!(Frame::decode(&canonical.encode()), Ok(canonical));
    }

    #[test]
    fn trailing_bytes_after_a_join_request_are_refused() {
        let mut bytes = Frame::JoinRequest(JoinRequest { secret: [7; 32], name: "a".to_owned() }).encode();
        bytes.push(0);
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Malformed { .. })));
    }
}
