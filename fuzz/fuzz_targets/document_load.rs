//! Loading a queue document from untrusted bytes, as a node does with a snapshot at start and
//! with the document an inviter sends a joining node (`QueueDoc::load` of a snapshot), or
//! with the change chunks of its log over the genesis change; then opening a `Replica` on it
//! (deriving members, probes and every task's state) and reading it as the node does.
//!
//! What loads must never panic, and must keep what the node relies on after: the document
//! saves to bytes that load again with the same heads, and the replica's derived-state cache
//! opens, decodes for the document and yields the very state that deriving it did.
//!
//! Input: the first byte's low bit picks the path (0: a snapshot, 1: a change chunk over the
//! genesis change), the rest is the document's bytes.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use meshwork_crdt::{CacheUse, DerivedCacheFile, QueueDoc, Replica};
use meshwork_protocol::RecordId;

/// The boot the replicas are opened under (any fixed number).
const BOOT: u32 = 1;

thread_local! {
    /// The records of the seed document, whose signatures a replica need not check again, as
    /// the node skips those its verified-records cache lists (an id is a hash of the signed
    /// bytes, so any other bytes are still checked). Most of a replica's opening time is
    /// otherwise spent on signatures that every input repeats.
    static VERIFIED: BTreeSet<RecordId> = meshwork_fuzz::sample_replica().verified_records().copied().collect();
}

fuzz_target!(|input: &[u8]| {
    let Some((&path, bytes)) = input.split_first() else { return };
    let loaded = if path & 1 == 0 { QueueDoc::load(Some(bytes), &[]) } else { QueueDoc::load(None, &[bytes.to_vec()]) };
    if let Ok((doc, _skipped_chunks)) = loaded {
        check_document(doc);
    }
});

fn check_document(doc: QueueDoc) {
    // The node refuses a document of a newer layout before opening it.
    if doc.check_schema().is_err() {
        return;
    }
    let node = meshwork_fuzz::fuzz_key().node_id();
    let heads = doc.heads();
    let saved = doc.save();
    let replica = Replica::open_with_verified(node, BOOT, doc, VERIFIED.with(Clone::clone));
    read_as_the_node_does(&replica);

    let reloaded = match QueueDoc::load(Some(&saved), &[]) {
        Ok((reloaded, skipped)) => {
            assert!(skipped.is_empty());
            reloaded
        }
        Err(error) => panic!("a loaded document's save() does not load again: {error}"),
    };
    assert_eq!(reloaded.heads(), heads, "a loaded document's save() loads with other heads");

    // The cache of a replica's derived state gives that state back for the same document.
    let Ok(cache_bytes) = replica.encode_derived_cache() else { return };
    let cache = DerivedCacheFile::open(cache_bytes, &node)
        .and_then(|file| file.decode_for(&reloaded))
        .unwrap_or_else(|refused| panic!("a replica's own derived-state cache is refused: {refused}"));
    let (cached, used) = Replica::open_with_cache(node, BOOT, reloaded, VERIFIED.with(Clone::clone), Some(cache));
    assert_eq!(used, CacheUse::Used, "a replica's own cache does not fit its document");
    assert_eq!(cached.mesh(), replica.mesh());
    assert_eq!(cached.members(), replica.members());
    assert_eq!(cached.probes(), replica.probes());
    assert_eq!(cached.tasks(), replica.tasks(), "the cached task states differ from the derived ones");
    assert_eq!(cached.rejected_records(), replica.rejected_records());
}

/// What `task list`, `task ready`, `node status` and `export` read from a replica.
fn read_as_the_node_does(replica: &Replica) {
    let _ = replica.rejected_records();
    let _ = replica.ready_tasks();
    let _ = replica.task_views();
    let _ = replica.export_json();
    for entry in replica.tasks().values() {
        let _ = replica.blocked_by(entry);
        let _ = replica.unmet_here(entry);
        let _ = replica.node_name(&entry.fields.created_by);
    }
    for member in replica.members().current() {
        let _ = replica.node_name(&member.node);
    }
}
