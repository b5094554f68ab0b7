//! Frames between nodes: version byte, kind byte, payload; on a stream each frame is
//! preceded by its length (u32, big-endian) and capped at [`FRAME_BYTES_MAX`].

/// Largest frame a node accepts or sends. Automerge sync messages exceed 1 MB at times.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Version byte of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of the length prefix on a stream.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// One message of the sync protocol (`/meshwork/sync/1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An Automerge sync message.
    Sync(Vec<u8>),
}

const KIND_SYNC: u8 = 0;

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
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let Frame::Sync(payload) = self;
        let mut bytes = Vec::with_capacity(2 + payload.len());
        bytes.push(WIRE_VERSION);
        bytes.push(KIND_SYNC);
        bytes.extend_from_slice(payload);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(WireError::TooLarge(bytes.len()));
        }
        match bytes {
            [WIRE_VERSION, KIND_SYNC, payload @ ..] => Ok(Frame::Sync(payload.to_vec())),
            [WIRE_VERSION, kind, ..] => Err(WireError::UnknownKind(*kind)),
            [version, _, ..] => Err(WireError::UnknownVersion(*version)),
            _ => Err(WireError::Truncated),
        }
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
    }
}
