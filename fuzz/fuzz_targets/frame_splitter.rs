//! `FrameSplitter` on any byte stream, fed in chunks: it yields exactly the frames a reader
//! of the whole stream at once finds, in order, none over `FRAME_BYTES_MAX`, and refuses a
//! length prefix over the cap as soon as the prefix is complete. Every frame it yields is also
//! checked as `frame_decoder` checks one.
//!
//! Input: the first byte sets the chunk length (1 to 256 bytes), the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_protocol::wire::{FRAME_BYTES_MAX, FrameSplitter, LENGTH_PREFIX_BYTES, WireError};

/// What a reader holding the whole stream finds: the complete frames before the first length
/// over the cap, and that length if there is one.
fn split_at_once(mut stream: &[u8]) -> (Vec<Vec<u8>>, Option<usize>) {
    let mut frames = Vec::new();
    while let Some((prefix, rest)) = stream.split_first_chunk::<LENGTH_PREFIX_BYTES>() {
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > FRAME_BYTES_MAX {
            return (frames, Some(length));
        }
        let Some((frame, rest)) = rest.split_at_checked(length) else { break };
        frames.push(frame.to_vec());
        stream = rest;
    }
    (frames, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&chunk_byte, stream)) = input.split_first() else { return };
    let chunk_bytes = usize::from(chunk_byte) + 1;
    let (expected, too_large) = split_at_once(stream);
    let mut splitter = FrameSplitter::default();
    let mut frames = Vec::new();
    let mut refused = None;
    for chunk in stream.chunks(chunk_bytes) {
        match splitter.push(chunk) {
            Ok(complete) => frames.extend(complete),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    for frame in &frames {
        assert!(frame.len() <= FRAME_BYTES_MAX, "the splitter yielded a frame of {} bytes", frame.len());
        meshwork_fuzz::check_frame_bytes(frame);
    }
    match (too_large, refused) {
        (None, None) => assert_eq!(frames, expected, "the splitter's frames differ from the stream's"),
        (Some(length), Some(error)) => {
            assert_eq!(error, WireError::TooLarge(length));
            // Frames completed by the chunk that also held the oversize length are dropped
            // with the error (the link closes): the splitter yields a prefix of the frames.
            assert!(expected.starts_with(&frames), "the splitter's frames are not the stream's first frames");
        }
        (too_large, refused) => {
            panic!("the stream has a length over the cap: {too_large:?}, the splitter refused: {refused:?}")
        }
    }
});
