//! `HOME/derived.bin`: the state a node derived from its document (members, probes, each
//! task's fields and state), kept so that a start whose document has the very same heads
//! need not derive it again.
//!
//! Layout: magic `MWDRVD`, version byte 1, a reserved 0 byte; the header, postcard of
//! [`DerivedCacheHeader`]; the state, postcard values of the deriving crate's own types, read
//! one at a time ([`take_derived_part`]); then the first 16 bytes of SHA-256 over everything
//! before.
//!
//! The state's layout belongs to the crate that derives it (`meshwork-crdt`), and only the
//! very build that wrote a cache reads it: the header names that build and the layout version
//! of the state, the node it was derived for and the document's heads. Equal heads mean an
//! identical document, so the derived state is identical too. The file is a cache: a reader
//! that finds it damaged, or made by another build, for another node or another document,
//! ignores it and derives the state from the document.

use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::NodeId;

pub const DERIVED_CACHE_MAGIC: [u8; 6] = *b"MWDRVD";
pub const DERIVED_CACHE_VERSION: u8 = 1;
/// Largest cache file a reader accepts, in bytes; a larger file is not read.
pub const DERIVED_CACHE_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Most document heads a header may list (a document has one head per concurrent branch
/// not yet merged by a later change: a handful).
pub const DERIVED_CACHE_HEADS_MAX: usize = 4096;
/// Longest build name in a header, in bytes.
pub const DERIVED_CACHE_BUILD_BYTES_MAX: usize = 64;
const PREFIX_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 16;
/// Domain of [`node_digest`].
const NODE_DIGEST_DOMAIN: &[u8] = b"meshwork-derived-cache-node-v1\0";

/// What a cached state was derived from, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedCacheHeader {
    /// Version of the state's layout and meaning, owned by the deriving crate, which bumps it
    /// whenever what it derives changes.
    pub state_version: u32,
    /// The deriving crate's version (`CARGO_PKG_VERSION`): another release derives anew.
    pub build: String,
    /// [`node_digest`] of the node the state was derived for (it holds that node's newest
    /// stamp, so it is not another node's state).
    pub node: [u8; 16],
    /// The document's heads (Automerge change hashes), in ascending order.
    pub heads: Vec<[u8; 32]>,
}

/// Why bytes are not an intact derived-state cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerivedCacheError {
    #[error("the file has {bytes} bytes, too short for a cache")]
    Truncated { bytes: u64 },
    #[error("the checksum does not match")]
    ChecksumMismatch,
    #[error("the file does not start with the magic bytes MWDRVD")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads version {DERIVED_CACHE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("the reserved byte is {found}, not 0")]
    ReservedNotZero { found: u8 },
    #[error("the header is malformed: {0}")]
    BadHeader(&'static str),
    #[error("the derived state does not decode: {0}")]
    BadState(String),
    #[error("the derived state does not encode: {0}")]
    Unencodable(String),
}

/// The 16 bytes that name a node in a header: SHA-256 of a domain and its public key.
pub fn node_digest(node: &NodeId) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(NODE_DIGEST_DOMAIN);
    hasher.update(node.public_key_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes
}

/// The file's bytes for a state derived as `header` says.
pub fn encode_derived_cache<T: Serialize + ?Sized>(
    header: &DerivedCacheHeader,
    state: &T,
) -> Result<Vec<u8>, DerivedCacheError> {
    check_header(header)?;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&DERIVED_CACHE_MAGIC);
    bytes.push(DERIVED_CACHE_VERSION);
    bytes.push(0);
    let unencodable = |error: postcard::Error| DerivedCacheError::Unencodable(error.to_string());
    let bytes = postcard::to_extend(header, bytes).map_err(unencodable)?;
    let mut bytes = postcard::to_extend(state, bytes).map_err(unencodable)?;
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..CHECKSUM_BYTES]);
    Ok(bytes)
}

/// Checks a cache file (checksum, magic, version, header) and returns its header and where
/// its state is in `bytes`, for [`take_derived_part`] once the header is found fitting.
pub fn open_derived_cache(bytes: &[u8]) -> Result<(DerivedCacheHeader, Range<usize>), DerivedCacheError> {
    let truncated = DerivedCacheError::Truncated { bytes: bytes.len() as u64 };
    let body_len = bytes.len().checked_sub(CHECKSUM_BYTES).filter(|&len| len >= PREFIX_BYTES).ok_or(truncated)?;
    let (body, checksum) = bytes.split_at(body_len);
    if Sha256::digest(body)[..CHECKSUM_BYTES] != *checksum {
        return Err(DerivedCacheError::ChecksumMismatch);
    }
    let (prefix, rest) = body.split_at(PREFIX_BYTES);
    if prefix[..6] != DERIVED_CACHE_MAGIC {
        return Err(DerivedCacheError::BadMagic);
    }
    if prefix[6] != DERIVED_CACHE_VERSION {
        return Err(DerivedCacheError::UnsupportedVersion { found: prefix[6] });
    }
    if prefix[7] != 0 {
        return Err(DerivedCacheError::ReservedNotZero { found: prefix[7] });
    }
    let (header, state) = postcard::take_from_bytes::<DerivedCacheHeader>(rest)
        .map_err(|_| DerivedCacheError::BadHeader("it does not decode"))?;
    check_header(&header)?;
    Ok((header, body_len - state.len()..body_len))
}

/// Decodes one part of the state from the start of `bytes` (the state is a sequence of
/// postcard values, read one at a time so that the deriving crate can spread the work);
/// returns it and the bytes after it.
pub fn take_derived_part<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), DerivedCacheError> {
    postcard::take_from_bytes::<T>(bytes).map_err(|error| DerivedCacheError::BadState(error.to_string()))
}

fn check_header(header: &DerivedCacheHeader) -> Result<(), DerivedCacheError> {
    if header.build.len() > DERIVED_CACHE_BUILD_BYTES_MAX {
        return Err(DerivedCacheError::BadHeader("the build name is over DERIVED_CACHE_BUILD_BYTES_MAX"));
    }
    if header.heads.len() > DERIVED_CACHE_HEADS_MAX {
        return Err(DerivedCacheError::BadHeader("more heads than DERIVED_CACHE_HEADS_MAX"));
    }
    if !header.heads.is_sorted_by(|a, b| a < b) {
        return Err(DerivedCacheError::BadHeader("the heads are not in ascending order"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> DerivedCacheHeader {
        DerivedCacheHeader {
            state_version: 3,
            build: "0.1.0".to_owned(),
            node: node_digest(&NodeId::from_public_key_bytes([7; 32])),
            heads: vec![[1; 32], [2; 32]],
        }
    }

    /// A cache round trips, and any flipped bit or lost byte is refused.
    #[test]
    fn the_cache_round_trips_and_refuses_any_damage() {
        let state = (42u64, "state".to_owned());
        let bytes = encode_derived_cache(&header(), &state).unwrap();
        let (decoded_header, state_range) = open_derived_cache(&bytes).unwrap();
        assert_eq!(decoded_header, header());
        assert_eq!(take_derived_part::<(u64, String)>(&bytes[state_range]), Ok((state, &[][..])));
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x01;
            assert!(open_derived_cache(&damaged).is_err(), "byte {index}");
        }
        for len in 0..bytes.len() {
            assert!(open_derived_cache(&bytes[..len]).is_err(), "{len} bytes");
        }
    }

    /// The first bytes are the documented magic, version and reserved byte.
    #[test]
    fn the_cache_starts_with_the_documented_prefix() {
        let bytes = encode_derived_cache(&header(), &()).unwrap();
        assert_eq!(&bytes[..8], b"MWDRVD\x01\x00");
    }

    /// The state reads back part by part, and a part longer than the bytes is refused.
    #[test]
    fn the_state_reads_part_by_part() {
        let bytes = encode_derived_cache(&header(), &(1u8, "two".to_owned())).unwrap();
        let (_, state) = open_derived_cache(&bytes).unwrap();
        let (one, rest) = take_derived_part::<u8>(&bytes[state.clone()]).unwrap();
        let (two, rest) = take_derived_part::<String>(rest).unwrap();
        assert_eq!((one, two.as_str(), rest.len()), (1, "two", 0));
        assert!(take_derived_part::<(u8, String, u8)>(&bytes[state]).is_err());
    }

    /// A header whose heads are out of order is neither written nor read.
    #[test]
    fn heads_out_of_order_are_refused() {
        let unordered = DerivedCacheHeader { heads: vec![[2; 32], [1; 32]], ..header() };
        assert!(matches!(encode_derived_cache(&unordered, &()), Err(DerivedCacheError::BadHeader(_))));
    }

    /// Node digests differ between nodes and are stable.
    #[test]
    fn node_digests_name_one_node() {
        let one = NodeId::from_public_key_bytes([1; 32]);
        let two = NodeId::from_public_key_bytes([2; 32]);
        assert_ne!(node_digest(&one), node_digest(&two));
        assert_eq!(node_digest(&one), node_digest(&one));
    }

    proptest! {
        /// Any bytes given to the reader are an error or a value, never a panic.
        #[test]
        fn the_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((_, state)) = open_derived_cache(&bytes) {
                let _ = take_derived_part::<Vec<String>>(&bytes[state]);
            }
        }
    }
}
