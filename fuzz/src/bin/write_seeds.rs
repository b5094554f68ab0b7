//! Writes the committed seeds of every fuzz target under `fuzz/seeds/TARGET/` (or under the
//! directory given as the first argument): real frames, the valid records, a small real
//! document and its derived-state cache. Every fixture is deterministic, so running it again
//! writes the same files.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin write_seeds`

use std::path::{Path, PathBuf};

use meshwork_crdt::QueueDoc;
use meshwork_fuzz::{fuzz_key, sample_replica, valid_records};
use meshwork_protocol::ErrorCode;
use meshwork_protocol::record::RECORD_VERSION;
use meshwork_protocol::derived_cache::open_derived_cache;
use meshwork_protocol::wire::{Frame, JoinRefusal, JoinRequest, length_prefixed};

/// Largest seed committed, in bytes.
const SEED_BYTES_MAX: usize = 64 * 1024;

fn main() -> Result<(), String> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let frames = [
        ("sync", Frame::Sync(vec![0x42, 1, 2, 3])),
        ("join-request", Frame::JoinRequest(JoinRequest { secret: [7; 32], name: "laptop".to_owned() })),
        ("join-refused", Frame::JoinRefused(JoinRefusal { code: ErrorCode::GateRefused, message: "used".to_owned() })),
        ("document-chunk", Frame::DocumentChunk(vec![0x85, 0x6f, 0x4a, 0x83])),
        ("document-end", Frame::DocumentEnd { total_bytes: 4 }),
    ];
    let mut stream = vec![15]; // frame_splitter's first byte: chunks of 16 bytes.
    for (name, frame) in &frames {
        let encoded = frame.encode();
        write(&root, "frame_decoder", name, &encoded)?;
        stream.extend(length_prefixed(&encoded).map_err(|error| error.to_string())?);
    }
    write(&root, "frame_splitter", "every-kind", &stream)?;
    for signed in valid_records() {
        let record = signed.record();
        let name = if record.version == RECORD_VERSION {
            record.kind().to_owned()
        } else {
            format!("{}-v{}", record.kind(), record.version)
        };
        write(&root, "record_decoder", &name, signed.bytes())?;
    }

    let replica = sample_replica();
    // document_load's first byte picks the path: 0 a snapshot, 1 a change chunk over genesis.
    let snapshot = |bytes: Vec<u8>| [vec![0], bytes].concat();
    let chunk = |bytes: Vec<u8>| [vec![1], bytes].concat();
    write(&root, "document_load", "genesis", &snapshot(QueueDoc::genesis_bytes()))?;
    write(&root, "document_load", "sample", &snapshot(replica.doc().save()))?;
    // The sample's changes after genesis, as the node's change log holds them.
    let changes = replica.doc().automerge().save_after(&QueueDoc::genesis().heads());
    write(&root, "document_load", "sample-changes", &chunk(changes))?;
    let cache = replica.encode_derived_cache().map_err(|error| error.to_string())?;
    let (header, state) = open_derived_cache(&cache).map_err(|error| error.to_string())?;
    assert_eq!(header.node, meshwork_protocol::derived_cache::node_digest(&fuzz_key().node_id()));
    write(&root, "derived_cache", "sample-state", &cache[state])?;
    Ok(())
}

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > SEED_BYTES_MAX {
        return Err(format!("seed {target}/{name} has {} bytes, over {SEED_BYTES_MAX}", bytes.len()));
    }
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|error| format!("cannot write {}: {error}", path.display()))
}
