//! Fixtures and checks shared by the fuzz targets (`fuzz_targets/`) and the seed writer
//! (`src/bin/write_seeds.rs`): one fixed node key, the valid records it signs, a small real
//! document, and the properties each target asserts.
//!
//! Every fixture is deterministic (fixed keys, fixed times), so the committed seeds match what
//! the targets build at run time.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use meshwork_crdt::{QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, HandoffRequest};
use meshwork_protocol::derived_cache::{DerivedCacheHeader, encode_derived_cache, node_digest};
use meshwork_protocol::probe::{Gpu, Probe};
use meshwork_protocol::record::{
    Claim, Handoff, Membership, MembershipAction, RECORD_VERSION, RECORD_VERSION_LEGACY, RecordError, SIGNATURE_BYTES,
};
use meshwork_protocol::wire::{Frame, FrameSplitter, length_prefixed};
use meshwork_protocol::{AgentName, MeshId, NodeKey, Record, RecordBody, SignedRecord, Stamp, TaskId};
use sha2::{Digest, Sha256};

/// The wall clock of every fixture, in milliseconds since the Unix epoch (2027-01-15).
pub const NOW_MS: u64 = 1_800_000_000_000;
/// Bytes of the checksum that ends a derived-state cache file (docs/PROTOCOL.md).
const DERIVED_CACHE_CHECKSUM_BYTES: usize = 16;

/// The node every fixture is signed by and every document is opened for.
pub fn fuzz_key() -> &'static NodeKey {
    static KEY: OnceLock<NodeKey> = OnceLock::new();
    KEY.get_or_init(|| NodeKey::from_seed([1; 32]))
}

/// A second member, so the sample document has a membership change besides the founding.
fn other_key() -> NodeKey {
    NodeKey::from_seed([2; 32])
}

/// One valid signed record of every kind, signed by [`fuzz_key`].
pub fn valid_records() -> &'static [SignedRecord] {
    static RECORDS: OnceLock<Vec<SignedRecord>> = OnceLock::new();
    RECORDS.get_or_init(build_valid_records)
}

/// Whether `bytes` are exactly one of [`valid_records`]: the only bytes that may verify,
/// since no other key signed anything and signatures cannot be forged.
pub fn is_valid_encoding(bytes: &[u8]) -> bool {
    valid_records().iter().any(|signed| signed.bytes() == bytes)
}

fn build_valid_records() -> Vec<SignedRecord> {
    let key = fuzz_key();
    let node = key.node_id();
    let mesh = MeshId::derive(&node, NOW_MS);
    let task = TaskId::new("WRK-1").unwrap_or_else(|error| panic!("fixture task id: {error}"));
    let agent = AgentName::new("claude-1").unwrap_or_else(|error| panic!("fixture agent name: {error}"));
    let sign = |logical: u32, agent: Option<AgentName>, body: RecordBody| {
        let record = Record {
            version: RECORD_VERSION,
            mesh,
            signer: node,
            agent,
            stamp: Stamp { wall_ms: NOW_MS, logical },
            body,
        };
        SignedRecord::sign(record, key).unwrap_or_else(|error| panic!("fixture record must sign: {error}"))
    };
    let founding = sign(
        0,
        None,
        RecordBody::Membership(Membership {
            action: MembershipAction::Add,
            member: node,
            name: "fuzz".to_owned(),
            roles: vec!["founder".to_owned()],
        }),
    );
    let probe = Probe {
        os: "linux".to_owned(),
        arch: "x86_64".to_owned(),
        hostname: "fuzz".to_owned(),
        cpus: 2,
        memory_bytes: 8 << 30,
        gpus: vec![Gpu { model: "gpu".to_owned(), memory_bytes: 1 << 30 }],
        tools: BTreeMap::from([("cargo".to_owned(), "1.95.0".to_owned())]),
        labels: vec!["isolated".to_owned()],
        ..Probe::default()
    };
    let probe = sign(1, None, RecordBody::Probe(probe));
    let claim = sign(
        2,
        Some(agent.clone()),
        RecordBody::Claim(Claim {
            task: task.clone(),
            generation: 0,
            lamport: 1,
            lease_ms: 1_800_000,
            probe: Some(probe.id()),
            quorum: true,
            requires: Claim::canonical_requirements(&["tool:cargo".parse().expect("a requirement")]),
            max_attempts: 3,
        }),
    );
    let claim_id = claim.id();
    let handoff = Handoff {
        task: task.clone(),
        claim: claim_id,
        commits: vec!["abc123".to_owned()],
        files: vec!["src/lib.rs".to_owned()],
        tests: vec!["cargo test".to_owned()],
        risks: Vec::new(),
        next: "review".to_owned(),
    };
    let bodies = [
        RecordBody::Renew { task: task.clone(), claim: claim_id },
        RecordBody::Progress { task: task.clone(), claim: claim_id, message: "half way".to_owned(), percent: Some(50) },
        RecordBody::Handoff(handoff),
        RecordBody::Release { task: task.clone(), claim: claim_id, reason: "lunch".to_owned() },
        RecordBody::Done { task: task.clone(), claim: claim_id, summary: "shipped".to_owned() },
        RecordBody::Fail { task: task.clone(), claim: claim_id, reason: "broke".to_owned() },
        RecordBody::Approve { task: task.clone() },
        RecordBody::Cancel { task: task.clone(), reason: "not needed".to_owned() },
        RecordBody::Ack { task, claim: claim_id, generation: 0 },
    ];
    let mut records = vec![founding, probe, claim];
    for (logical, body) in (3..).zip(bodies) {
        records.push(sign(logical, Some(agent.clone()), body));
    }
    // A claim of record version 1, which names no terms: nodes still read them.
    let legacy_claim = Claim {
        task: TaskId::new("WRK-1").unwrap_or_else(|error| panic!("fixture task id: {error}")),
        generation: 0,
        lamport: 1,
        lease_ms: 1_800_000,
        probe: None,
        quorum: false,
        requires: Vec::new(),
        max_attempts: 0,
    };
    let legacy = Record {
        version: RECORD_VERSION_LEGACY,
        mesh,
        signer: node,
        agent: Some(agent),
        stamp: Stamp { wall_ms: NOW_MS, logical: 100 },
        body: RecordBody::Claim(legacy_claim),
    };
    records.push(SignedRecord::sign(legacy, key).unwrap_or_else(|error| panic!("fixture record must sign: {error}")));
    records
}

/// The checks on bytes offered as a signed record: a record decodes only if it is one the
/// fixed key signed; skipping the signature check skips nothing else; what decodes is
/// canonical (signing its record again gives the same bytes).
pub fn check_record_bytes(bytes: &[u8]) {
    let decoded = SignedRecord::decode(bytes);
    let unchecked = SignedRecord::decode_unless_verified(bytes, |_| true);
    match &decoded {
        Ok(signed) => {
            assert!(is_valid_encoding(bytes), "bytes no one signed verify as {signed:?}");
            assert_eq!(signed.bytes(), bytes);
            assert_eq!(unchecked.as_ref(), Ok(signed), "skipping the signature check changed the outcome");
        }
        Err(RecordError::BadSignature) => {
            assert!(unchecked.is_ok(), "a record refused only for its signature fails other checks: {unchecked:?}")
        }
        Err(error) => {
            assert_eq!(unchecked.as_ref().err(), Some(error), "skipping the signature check changed the error")
        }
    }
    if is_valid_encoding(bytes) {
        assert!(decoded.is_ok(), "a validly signed record is refused: {decoded:?}");
    }
    // One encoding per record: the fixed key signing the decoded record again writes the same
    // record bytes (ed25519 signatures are deterministic, but the signature may be another).
    if let Ok(unchecked) = unchecked
        && unchecked.record().signer == fuzz_key().node_id()
        && let Ok(again) = SignedRecord::sign(unchecked.record().clone(), fuzz_key())
    {
        let record_bytes = bytes.len() - SIGNATURE_BYTES;
        assert_eq!(again.bytes()[..record_bytes], bytes[..record_bytes], "a record has two encodings");
    }
}

/// The checks on bytes offered as one frame: a frame decodes from exactly the bytes it encodes
/// to (one encoding per frame), and passes a length-prefixed stream unchanged.
pub fn check_frame_bytes(bytes: &[u8]) {
    let Ok(frame) = Frame::decode(bytes) else { return };
    let encoded = frame.encode();
    assert_eq!(Frame::decode(&encoded).as_ref(), Ok(&frame), "a decoded frame does not decode again from its encoding");
    assert_eq!(encoded, bytes, "the frame {frame:?} decodes from bytes other than its encoding");
    let stream =
        length_prefixed(&encoded).unwrap_or_else(|error| panic!("a decoded frame does not fit a stream: {error}"));
    let split = FrameSplitter::default().push(&stream);
    assert_eq!(split, Ok(vec![encoded]), "a length-prefixed frame does not split back to itself");
}

/// A small real document: a mesh of two members, the fixed node's probe, and tasks open,
/// approved, held with progress and a handoff, done, failed and cancelled.
pub fn sample_replica() -> Replica {
    let key = fuzz_key();
    let agent = AgentName::new("agent").unwrap_or_else(|error| panic!("fixture agent name: {error}"));
    let speaker = Speaker { key, agent: &agent };
    let founded = Replica::found(key, 1, "fuzz", "fuzz-mesh", NOW_MS).unwrap_or_else(|error| panic!("found: {error}"));
    let mut replica = founded.replica;
    let other = other_key();
    let joined =
        Membership { action: MembershipAction::Add, member: other.node_id(), name: "other".into(), roles: vec![] };
    must(replica.change_membership(key, joined, NOW_MS + 1));
    let probe =
        Probe { os: "linux".into(), arch: "x86_64".into(), hostname: "fuzz".into(), cpus: 2, ..Probe::default() };
    must(replica.publish_probe(key, probe, NOW_MS + 2));
    let id = |text: &str| TaskId::new(text).unwrap_or_else(|error| panic!("fixture task id: {error}"));
    let task = |text: &str| AddTask { id: Some(text.to_owned()), title: format!("task {text}"), ..AddTask::default() };
    for (offset, text) in (10..).zip(["OPEN", "HELD", "DONE", "FAILED", "CANCELLED"]) {
        must(replica.add_task(speaker, &task(text), NOW_MS + offset, 7));
    }
    let gated = AddTask {
        requires: vec!["os=linux".into()],
        needs_approval: true,
        after: vec!["OPEN".into()],
        ..task("GATED")
    };
    must(replica.add_task(speaker, &gated, NOW_MS + 20, 7));
    must(replica.approve(speaker, &id("GATED"), NOW_MS + 21));
    must(replica.claim(speaker, &id("HELD"), NOW_MS + 22));
    must(replica.progress(speaker, &id("HELD"), "half way", Some(50), NOW_MS + 23));
    let handoff = HandoffRequest { commits: vec!["abc".into()], next: "review".into(), ..HandoffRequest::default() };
    must(replica.handoff(speaker, &id("HELD"), &handoff, NOW_MS + 24));
    must(replica.claim(speaker, &id("DONE"), NOW_MS + 25));
    must(replica.done(speaker, &id("DONE"), "shipped", NOW_MS + 26));
    must(replica.claim(speaker, &id("FAILED"), NOW_MS + 27));
    must(replica.fail(speaker, &id("FAILED"), "broke", NOW_MS + 28));
    must(replica.cancel(speaker, &id("CANCELLED"), "not needed", NOW_MS + 29));
    replica
}

fn must<T>(result: Result<T, meshwork_crdt::OpError>) -> T {
    result.unwrap_or_else(|error| panic!("fixture op: {error}"))
}

/// The bytes of a derived-state cache file holding `state`, written by this build for
/// [`fuzz_key`]'s node and a document with `heads` (ascending): the layout of
/// `meshwork_protocol::derived_cache` with a valid checksum, so a target reaches the state's
/// decoding. An empty state encodes to nothing in postcard, hence the splice.
pub fn derived_cache_file(state: &[u8], heads: Vec<[u8; 32]>) -> Option<Vec<u8>> {
    let header = DerivedCacheHeader {
        state_version: meshwork_crdt::derived_cache::DERIVED_STATE_VERSION,
        build: meshwork_crdt::derived_cache::DERIVED_STATE_BUILD.to_owned(),
        node: node_digest(&fuzz_key().node_id()),
        heads,
    };
    let mut bytes = encode_derived_cache(&header, &()).ok()?;
    bytes.truncate(bytes.len() - DERIVED_CACHE_CHECKSUM_BYTES);
    bytes.extend_from_slice(state);
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..DERIVED_CACHE_CHECKSUM_BYTES]);
    Some(bytes)
}

/// The heads of a document as a cache header lists them: ascending, no repeats.
pub fn sorted_heads(doc: &QueueDoc) -> Vec<[u8; 32]> {
    let mut heads: Vec<[u8; 32]> = doc.heads().iter().map(|head| head.0).collect();
    heads.sort_unstable();
    heads.dedup();
    heads
}
