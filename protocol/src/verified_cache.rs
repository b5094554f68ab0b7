//! `HOME/verified.bin`: the ids of records whose signatures this node has verified, so a
//! restart need not verify them again (a record id is a hash of the signed bytes, so an id
//! that verified once stands for exactly those bytes).
//!
//! Layout: magic `MWVRFY`, version byte 1, a reserved 0 byte, `count` (u32 little-endian),
//! `count` record ids of 16 bytes, then the first 16 bytes of SHA-256 over everything before.
//! The file is a cache: a reader that finds it damaged ignores it and verifies everything.
//! Trusting it is trusting the home directory, which also holds the node's key.

use sha2::{Digest, Sha256};

use crate::record::RecordId;

pub const VERIFIED_CACHE_MAGIC: [u8; 6] = *b"MWVRFY";
pub const VERIFIED_CACHE_VERSION: u8 = 1;
/// Most ids the cache holds; a node with more verifies the rest at start.
pub const VERIFIED_CACHE_IDS_MAX: usize = 16 * 1024 * 1024;
const HEADER_BYTES: usize = 12;
const CHECKSUM_BYTES: usize = 16;
const ID_BYTES: usize = 16;

/// The file's bytes for these ids (at most [`VERIFIED_CACHE_IDS_MAX`] of them are kept).
pub fn encode_verified_cache<'a>(ids: impl Iterator<Item = &'a RecordId>) -> Vec<u8> {
    let ids: Vec<&RecordId> = ids.take(VERIFIED_CACHE_IDS_MAX).collect();
    let mut bytes = Vec::with_capacity(HEADER_BYTES + ids.len() * ID_BYTES + CHECKSUM_BYTES);
    bytes.extend_from_slice(&VERIFIED_CACHE_MAGIC);
    bytes.push(VERIFIED_CACHE_VERSION);
    bytes.push(0);
    bytes.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..CHECKSUM_BYTES]);
    bytes
}

/// The ids in a cache file, or `None` when the file is not an intact cache.
pub fn decode_verified_cache(bytes: &[u8]) -> Option<Vec<RecordId>> {
    let body_len = bytes.len().checked_sub(CHECKSUM_BYTES)?;
    let (body, checksum) = bytes.split_at(body_len);
    if Sha256::digest(body)[..CHECKSUM_BYTES] != *checksum {
        return None;
    }
    let header = body.get(..HEADER_BYTES)?;
    if header[..6] != VERIFIED_CACHE_MAGIC || header[6] != VERIFIED_CACHE_VERSION || header[7] != 0 {
        return None;
    }
    let count = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let ids = &body[HEADER_BYTES..];
    if count > VERIFIED_CACHE_IDS_MAX || ids.len() != count * ID_BYTES {
        return None;
    }
    Some(ids.chunks_exact(ID_BYTES).map(|chunk| RecordId(chunk.try_into().unwrap_or([0; ID_BYTES]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_refuses_any_damage() {
        let ids = [RecordId([1; 16]), RecordId([2; 16])];
        let bytes = encode_verified_cache(ids.iter());
        assert_eq!(decode_verified_cache(&bytes), Some(ids.to_vec()));
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x01;
            assert_eq!(decode_verified_cache(&damaged), None, "byte {index}");
        }
        assert_eq!(decode_verified_cache(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_verified_cache(&[]), None);
    }
}
