//! `Frame::decode` on any bytes: never panics, and a frame that decodes has exactly one
//! encoding, which decodes to the same frame and passes a length-prefixed stream unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    meshwork_fuzz::check_frame_bytes(bytes);
});
