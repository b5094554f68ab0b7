//! `SignedRecord::decode` (size, version, canonical postcard, limits, ed25519 signature) on
//! any bytes: never panics, and only the bytes of a record the fixed key signed verify (see
//! `meshwork_fuzz::check_record_bytes`). Seeded with those records, so mutations reach the
//! signature check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    meshwork_fuzz::check_record_bytes(bytes);
});
