//! The derived-state cache only ever saves time: a replica opened from the cache of its own
//! document is exactly the replica that derived everything, and any other cache (of other
//! heads, another node or build, damaged) is refused and the state derived.

use std::collections::BTreeSet;

use meshwork_crdt::derived_cache::{DERIVED_STATE_BUILD, DERIVED_STATE_VERSION};
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{CacheRefused, CacheUse, DerivedCache, DerivedCacheFile, QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, EditTask, HandoffRequest};
use meshwork_protocol::derived_cache::{DerivedCacheHeader, node_digest, open_derived_cache};
use meshwork_protocol::probe::Probe;
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::{AgentName, NodeKey, TaskId};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const NOW_MS: u64 = 1_800_000_000_000;

fn probe(hostname: &str) -> Probe {
    Probe { os: "linux".into(), arch: "x86_64".into(), hostname: hostname.into(), cpus: 8, ..Probe::default() }
}

fn id(text: &str) -> TaskId {
    TaskId::new(text).unwrap()
}

fn add(replica: &mut Replica, key: &NodeKey, request: AddTask, now_ms: u64) -> TaskId {
    let agent = AgentName::new("agent").unwrap();
    replica.add_task(Speaker { key, agent: &agent }, &request, now_ms, 7).unwrap().task
}

fn task(text: &str) -> AddTask {
    AddTask { id: Some(text.to_owned()), title: format!("task {text}"), ..AddTask::default() }
}

/// Every kind of derived fact at once, on node 1 of a mesh of two: members, a probe of each
/// node, tasks open, gated, approved, claimed with progress and a handoff, done with a
/// claim of the other node that lost, failed, cancelled, edited, and a task with a forged
/// record and a member entry that does not decode (both counted as rejected).
fn busy_replica() -> (NodeKey, Replica) {
    let (one, two) = (node_key(1), node_key(2));
    let agent = AgentName::new("agent").unwrap();
    let mut a = Replica::found(&one, 1, "one", "mesh", NOW_MS).unwrap().replica;
    let joined = Membership { action: MembershipAction::Add, member: two.node_id(), name: "two".into(), roles: vec![] };
    a.change_membership(&one, joined, NOW_MS + 1).unwrap();
    a.publish_probe(&one, probe("one"), NOW_MS + 2).unwrap();
    let mut b = Replica::open(two.node_id(), 1, QueueDoc::load(Some(&a.doc().save()), &[]).unwrap().0);
    b.publish_probe(&two, probe("two"), NOW_MS + 3).unwrap();
    a.apply_changes(&b.doc().save(), NOW_MS + 4).unwrap();

    let (sa, sb) = (Speaker { key: &one, agent: &agent }, Speaker { key: &two, agent: &agent });
    add(&mut a, &one, task("OPEN"), NOW_MS + 10);
    add(&mut a, &one, AddTask { requires: vec!["os=linux".into(), "cpus>=4".into()], ..task("GATED") }, NOW_MS + 11);
    add(&mut a, &one, AddTask { needs_approval: true, ..task("APPROVED") }, NOW_MS + 12);
    add(&mut a, &one, AddTask { after: vec!["OPEN".into()], ..task("AFTER") }, NOW_MS + 13);
    for text in ["HELD", "DONE", "FAILED", "CANCELLED", "FORGED"] {
        add(&mut a, &one, task(text), NOW_MS + 14);
    }
    a.approve(sa, &id("APPROVED"), NOW_MS + 20).unwrap();
    a.claim(sa, &id("GATED"), NOW_MS + 21).unwrap();
    a.claim(sa, &id("HELD"), NOW_MS + 22).unwrap();
    a.progress(sa, &id("HELD"), "half way", Some(50), NOW_MS + 23).unwrap();
    let handoff = HandoffRequest { commits: vec!["abc".into()], next: "review".into(), ..HandoffRequest::default() };
    a.handoff(sa, &id("HELD"), &handoff, NOW_MS + 24).unwrap();
    // Both nodes claim DONE before they hear of each other: one claim loses.
    b.apply_changes(&a.doc().save(), NOW_MS + 25).unwrap();
    b.claim(sb, &id("DONE"), NOW_MS + 26).unwrap();
    let _ = a.claim(sa, &id("DONE"), NOW_MS + 26);
    a.apply_changes(&b.doc().save(), NOW_MS + 27).unwrap();
    b.apply_changes(&a.doc().save(), NOW_MS + 27).unwrap();
    let winner =
        if a.task(&id("DONE")).unwrap().state.holder.as_ref().unwrap().node == one.node_id() { &mut a } else { &mut b };
    let winner_key = if winner.node() == one.node_id() { &one } else { &two };
    winner.done(Speaker { key: winner_key, agent: &agent }, &id("DONE"), "shipped", NOW_MS + 28).unwrap();
    a.claim(sa, &id("FAILED"), NOW_MS + 29).unwrap();
    a.fail(sa, &id("FAILED"), "broke", NOW_MS + 30).unwrap();
    a.cancel(sa, &id("CANCELLED"), "not needed", NOW_MS + 31).unwrap();
    let edit = EditTask { title: Some("edited".into()), priority: Some(3), ..EditTask::default() };
    a.edit_task(sa, &id("OPEN"), &edit, NOW_MS + 32).unwrap();
    // Garbage under a task and among the members, written on node 2 and merged, as a peer's
    // change would arrive.
    b.apply_changes(&a.doc().save(), NOW_MS + 33).unwrap();
    b.doc_mut()
        .change(NOW_MS + 34, "garbage", |tx, maps| {
            use automerge::transaction::Transactable;
            tx.put(&maps.records, "FORGED/00112233445566778899aabbccddeeff", b"not a record".to_vec())?;
            tx.put(&maps.members, "somebody/00112233445566778899aabbccddeeff", b"not a record".to_vec())?;
            Ok(())
        })
        .unwrap();
    a.apply_changes(&b.doc().save(), NOW_MS + 35).unwrap();
    (one, a)
}

fn load(saved: &[u8]) -> QueueDoc {
    QueueDoc::load(Some(saved), &[]).unwrap().0
}

/// Opens a saved document as `key`'s node at a new boot, with `cache` if any.
fn reopen(key: &NodeKey, saved: &[u8], cache: Option<DerivedCache>) -> (Replica, CacheUse) {
    Replica::open_with_cache(key.node_id(), 9, load(saved), BTreeSet::new(), cache)
}

fn decode(bytes: &[u8], key: &NodeKey) -> DerivedCache {
    open_and_decode(bytes, key).unwrap()
}

fn open_and_decode(bytes: &[u8], key: &NodeKey) -> Result<DerivedCache, CacheRefused> {
    DerivedCacheFile::open(bytes.to_vec(), &key.node_id())?.decode()
}

/// Two replicas hold the same derived state, as everything a caller can see shows it.
fn assert_same_state(left: &mut Replica, right: &mut Replica) {
    assert_eq!(left.export_json(), right.export_json());
    assert_eq!(left.tasks(), right.tasks());
    assert_eq!(left.rejected_records(), right.rejected_records());
    assert_eq!(left.members(), right.members());
    assert_eq!(left.probes(), right.probes());
    assert_eq!(left.mesh(), right.mesh());
    assert_eq!(left.stamp(0), right.stamp(0), "the clock restarts after the same stamp");
    assert_eq!(left.encode_derived_cache().unwrap(), right.encode_derived_cache().unwrap());
}

/// Goal: the cache is exact. Method: derive everything from a saved busy document, open the
/// same document from the cache the live replica wrote, compare everything.
#[test]
fn a_replica_opened_from_the_cache_of_its_document_equals_one_that_derived_everything() {
    let (key, live) = busy_replica();
    assert!(live.rejected_records() >= 2, "the sample holds rejected records");
    let saved = live.doc().save();
    let (mut derived, nothing) = reopen(&key, &saved, None);
    assert_eq!(nothing, CacheUse::Absent);
    let (mut cached, used) = reopen(&key, &saved, Some(decode(&live.encode_derived_cache().unwrap(), &key)));
    assert_eq!(used, CacheUse::Used);
    assert_same_state(&mut cached, &mut derived);
    assert_eq!(live.encode_derived_cache().unwrap(), derived.encode_derived_cache().unwrap(), "kept = derived");
}

/// A cache of an older document (other heads) is not used: the state is derived.
#[test]
fn a_cache_of_other_heads_is_refused_and_the_state_derived() {
    let (key, mut live) = busy_replica();
    let old_cache = live.encode_derived_cache().unwrap();
    add(&mut live, &key, task("LATER"), NOW_MS + 100);
    let saved = live.doc().save();
    let (mut stale, used) = reopen(&key, &saved, Some(decode(&old_cache, &key)));
    assert_eq!(used, CacheUse::OtherDocument);
    let (mut derived, _) = reopen(&key, &saved, None);
    assert_same_state(&mut stale, &mut derived);
    assert!(stale.task(&id("LATER")).is_some());
    let file = DerivedCacheFile::open(old_cache, &key.node_id()).unwrap();
    assert_eq!(file.decode_for(&load(&saved)).unwrap_err(), CacheRefused::OtherDocument, "not even decoded");
}

/// The cache also answers the highest boot of the node among the document's actors, as
/// reading every change would (a start takes a boot above it).
#[test]
fn the_cache_knows_the_highest_boot_of_its_node() {
    let (key, live) = busy_replica();
    let saved = live.doc().save();
    let file = DerivedCacheFile::open(live.encode_derived_cache().unwrap(), &key.node_id()).unwrap();
    let cache = file.decode_for(&load(&saved)).unwrap();
    assert_eq!(cache.highest_boot(), load(&saved).highest_boot_of(&key.node_id()));
    assert_eq!(cache.highest_boot(), Some(1));
}

/// A cache written for another node, or by another build, is refused before its state is
/// even decoded.
#[test]
fn a_cache_of_another_node_or_build_is_refused() {
    let (key, live) = busy_replica();
    let bytes = live.encode_derived_cache().unwrap();
    let other = node_key(2).node_id();
    assert_eq!(DerivedCacheFile::open(bytes.clone(), &other).unwrap_err(), CacheRefused::OtherNode);
    let (header, state) = open_derived_cache(&bytes).unwrap();
    let state = &bytes[state];
    for header in [
        DerivedCacheHeader { state_version: DERIVED_STATE_VERSION + 1, ..header.clone() },
        DerivedCacheHeader { build: format!("{DERIVED_STATE_BUILD}-other"), ..header.clone() },
    ] {
        let rewritten = with_state_bytes(&header, state);
        assert!(matches!(open_and_decode(&rewritten, &key), Err(CacheRefused::OtherBuild { .. })));
    }
    assert!(open_and_decode(&with_state_bytes(&header, state), &key).is_ok());
}

/// A cache file's bytes from a header and raw state bytes, checksum included.
fn with_state_bytes(header: &DerivedCacheHeader, state: &[u8]) -> Vec<u8> {
    let mut bytes = b"MWDRVD\x01\x00".to_vec();
    bytes.extend_from_slice(&postcard_header(header));
    bytes.extend_from_slice(state);
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..16]);
    bytes
}

/// The postcard bytes of a header, taken from an encoded cache with an empty state.
fn postcard_header(header: &DerivedCacheHeader) -> Vec<u8> {
    let bytes = meshwork_protocol::derived_cache::encode_derived_cache(header, &()).unwrap();
    bytes[8..bytes.len() - 16].to_vec()
}

/// Any flipped bit and any truncation is refused, without a panic; the replica then derives.
#[test]
fn a_damaged_cache_is_refused_without_panic() {
    let (key, live) = busy_replica();
    let bytes = live.encode_derived_cache().unwrap();
    for index in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[index] ^= 0x10;
        let refused = open_and_decode(&damaged, &key).unwrap_err();
        assert!(refused.is_damage(), "byte {index}: {refused}");
    }
    for len in (0..bytes.len()).step_by(7) {
        assert!(open_and_decode(&bytes[..len], &key).is_err(), "{len} bytes");
    }
    assert!(open_and_decode(&[], &key).is_err());
}

/// The encoding of the derived state is pinned. When this fails because a derived type
/// (TaskFields, TaskState and its parts, MemberSet, ProbeBook) or the derivation changed,
/// bump `DERIVED_STATE_VERSION` so no build reads another's cache as its own, then refresh
/// with `UPDATE_EXPECT=1`. (A change to records, ops or Automerge moves it too: then only
/// refresh.)
#[test]
fn the_derived_state_encoding_is_pinned_to_its_version() {
    let (_, live) = busy_replica();
    let bytes = live.encode_derived_cache().unwrap();
    let (header, state) = open_derived_cache(&bytes).unwrap();
    let state = &bytes[state];
    let digest: String = Sha256::digest(state)[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    let pinned = format!("state version {}: {} bytes, sha256 {digest}", header.state_version, state.len());
    expect_test::expect!["state version 4: 2558 bytes, sha256 c50c03a7f9fb4231929e7298bb114ac7"].assert_eq(&pinned);
    assert_eq!(header.node, node_digest(&live.node()));
}

/// One step of a random history on a mesh of two.
#[derive(Debug, Clone)]
struct Step {
    node: usize,
    kind: u8,
    task: usize,
    merge: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (0..2usize, 0u8..10, 0..3usize, any::<bool>()).prop_map(|(node, kind, task, merge)| Step {
        node,
        kind,
        task,
        merge,
    })
}

fn run_step(replicas: &mut [Replica; 2], keys: &[NodeKey; 2], step: &Step, now_ms: u64) {
    let agent = AgentName::new("agent").unwrap();
    let speaker = Speaker { key: &keys[step.node], agent: &agent };
    let replica = &mut replicas[step.node];
    let task = id(["T0", "T1", "T2"][step.task]);
    // Refused operations (a claim of a held task, done of a task not held) are part of the
    // history too: they must leave the state as it was.
    let _ = match step.kind {
        0 => replica.add_task(speaker, &task_request(&task), now_ms, now_ms).map(|_| ()),
        1 | 2 => replica.claim(speaker, &task, now_ms).map(|_| ()),
        3 => replica.progress(speaker, &task, "p", Some(10), now_ms).map(|_| ()),
        4 => replica.done(speaker, &task, "d", now_ms).map(|_| ()),
        5 => replica.fail(speaker, &task, "f", now_ms).map(|_| ()),
        6 => replica.release(speaker, &task, "r", now_ms).map(|_| ()),
        7 => replica.cancel(speaker, &task, "c", now_ms).map(|_| ()),
        8 => replica.publish_probe(&keys[step.node], probe(&format!("h{now_ms}")), now_ms).map(|_| ()),
        _ => replica.approve(speaker, &task, now_ms).map(|_| ()),
    };
    if step.merge {
        let other = replicas[1 - step.node].doc().save();
        replicas[step.node].apply_changes(&other, now_ms).unwrap();
    }
}

fn task_request(task: &TaskId) -> AddTask {
    let requires = if task.as_str() == "T2" { vec!["cpus>=2".to_owned()] } else { Vec::new() };
    AddTask { id: Some(task.as_str().to_owned()), title: task.as_str().to_owned(), requires, ..AddTask::default() }
}

fn mesh_of_two() -> ([NodeKey; 2], [Replica; 2]) {
    let keys = [node_key(1), node_key(2)];
    let mut a = Replica::found(&keys[0], 1, "one", "mesh", NOW_MS).unwrap().replica;
    let joined =
        Membership { action: MembershipAction::Add, member: keys[1].node_id(), name: "two".into(), roles: vec![] };
    a.change_membership(&keys[0], joined, NOW_MS).unwrap();
    let b = Replica::open(keys[1].node_id(), 1, load(&a.doc().save()));
    (keys, [a, b])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Goal: what the cache holds is what a start would derive. Method: random histories of
    /// operations and merges on two nodes; after each, every replica's state kept step by step
    /// encodes to the same cache as a replica that derived everything from the saved
    /// document, and a replica opened from that cache equals the derived one.
    #[test]
    fn the_state_kept_step_by_step_is_the_state_a_start_derives(steps in proptest::collection::vec(step(), 1..24)) {
        let (keys, mut replicas) = mesh_of_two();
        for (index, step) in steps.iter().enumerate() {
            run_step(&mut replicas, &keys, step, NOW_MS + 1_000 * (index as u64 + 1));
        }
        for (replica, key) in replicas.iter().zip(&keys) {
            let saved = replica.doc().save();
            let kept = replica.encode_derived_cache().unwrap();
            let (mut derived, _) = reopen(key, &saved, None);
            prop_assert_eq!(&kept, &derived.encode_derived_cache().unwrap());
            let (mut cached, used) = reopen(key, &saved, Some(decode(&kept, key)));
            prop_assert_eq!(used, CacheUse::Used);
            assert_same_state(&mut cached, &mut derived);
        }
    }

    /// Any state bytes under an intact header and checksum decode or are refused, never a
    /// panic.
    #[test]
    fn any_state_bytes_are_refused_or_decoded_never_a_panic(state in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = node_key(1);
        let header = DerivedCacheHeader {
            state_version: DERIVED_STATE_VERSION,
            build: DERIVED_STATE_BUILD.to_owned(),
            node: node_digest(&key.node_id()),
            heads: vec![],
        };
        let _ = open_and_decode(&with_state_bytes(&header, &state), &key);
    }
}
