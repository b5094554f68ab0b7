//! The derived-state cache (`HOME/derived.bin`) read back: any bytes as a whole file
//! (`DerivedCacheFile::open`), and any bytes as the state inside a file that is otherwise
//! intact (this build, the fixed node, the sample document's heads, a valid checksum), so
//! the fuzzer reaches the decoding of the state rather than the checksum.
//!
//! A state that decodes is opened into a replica of the sample document, and that replica's
//! own cache must decode to the same state again. The file is a cache only the node itself
//! writes, so a panic here matters less than in the other targets, but it still must not
//! take the node down at start.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use meshwork_crdt::{CacheUse, DerivedCacheFile, QueueDoc, Replica};
use meshwork_fuzz::{derived_cache_file, fuzz_key, sample_replica, sorted_heads};
use meshwork_protocol::RecordId;

const BOOT: u32 = 1;

/// The sample document, its heads and the ids of its records (a state whose mesh is not the
/// sample's makes the replica derive everything from the document: its records need not be
/// verified again on every input).
struct Sample {
    doc: QueueDoc,
    heads: Vec<[u8; 32]>,
    verified: BTreeSet<RecordId>,
}

thread_local! {
    static SAMPLE: Sample = {
        let replica = sample_replica();
        let heads = sorted_heads(replica.doc());
        let verified = replica.verified_records().copied().collect();
        let doc = QueueDoc::from_automerge(replica.doc().automerge().clone());
        Sample { doc: doc.unwrap_or_else(|error| panic!("the sample document: {error}")), heads, verified }
    };
}

/// A copy of the sample document (a replica takes its document).
fn sample_doc() -> QueueDoc {
    let copy = SAMPLE.with(|sample| sample.doc.automerge().clone());
    QueueDoc::from_automerge(copy).unwrap_or_else(|error| panic!("the sample document: {error}"))
}

fuzz_target!(|state: &[u8]| {
    let node = fuzz_key().node_id();
    if let Ok(file) = DerivedCacheFile::open(state.to_vec(), &node) {
        let _ = file.decode();
    }
    let Some(bytes) = derived_cache_file(state, SAMPLE.with(|sample| sample.heads.clone())) else { return };
    let file = DerivedCacheFile::open(bytes, &node)
        .unwrap_or_else(|refused| panic!("an intact cache file for this node and build is refused: {refused}"));
    let Ok(cache) = file.decode() else { return };
    let verified = SAMPLE.with(|sample| sample.verified.clone());
    let (replica, used) = Replica::open_with_cache(node, BOOT, sample_doc(), verified.clone(), Some(cache));
    let _ = replica.rejected_records();
    let _ = replica.ready_tasks();
    let _ = replica.task_views();
    if used != CacheUse::Used {
        return;
    }
    // The state taken from the cache writes a cache that reads back to the same state.
    let Ok(again) = replica.encode_derived_cache() else { return };
    let cache = DerivedCacheFile::open(again, &node)
        .and_then(DerivedCacheFile::decode)
        .unwrap_or_else(|refused| panic!("a replica's own derived-state cache is refused: {refused}"));
    let (reopened, used) = Replica::open_with_cache(node, BOOT, sample_doc(), verified, Some(cache));
    assert_eq!(used, CacheUse::Used);
    assert_eq!(reopened.members(), replica.members());
    assert_eq!(reopened.probes(), replica.probes());
    assert_eq!(reopened.tasks(), replica.tasks());
});
