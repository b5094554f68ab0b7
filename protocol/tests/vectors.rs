//! `docs/PROTOCOL.md` specifies bytes; these tests hold the code and the document to each other.
//!
//! The test vectors in the document are fenced blocks whose info string is `vector NAME`,
//! holding `key = value` lines: the inputs, then what the code makes of them. Each block is
//! recomputed here with the real code (`NodeKey::from_seed`, `MeshId::derive`,
//! `SignedRecord::sign`, ...) and compared field by field. After a deliberate change of an
//! encoding, refresh the blocks from the code with
//! `UPDATE_VECTORS=1 cargo test -p meshwork-protocol --test vectors`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshwork_protocol::api::API_VERSION;
use meshwork_protocol::hlc::HLC_DRIFT_MS_MAX;
use meshwork_protocol::identity::hex;
use meshwork_protocol::limits;
use meshwork_protocol::record::{
    Claim, Membership, MembershipAction, RECORD_ID_DOMAIN, RECORD_SIGNATURE_DOMAIN, RECORD_VERSION,
    RECORD_VERSION_LEGACY, SIGNATURE_BYTES,
};
use meshwork_protocol::storage::{
    self, BOOT_FILE_BYTES_MAX, BOOT_FILE_NAME, DOC_DIR_NAME, FILE_SEQUENCE_DIGITS, FILE_SEQUENCE_MAX, FrameHeader,
    FrameKind, LOG_FRAME_BYTES_MAX, LOG_FRAME_HEADER_BYTES, REQUEST_KEY_BYTES_MAX, RequestEntry,
    SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SNAPSHOT_BYTES_MAX, SNAPSHOT_FORMAT_VERSION,
    SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC, SNAPSHOT_TRAILER_BYTES, SnapshotHeader, TEMP_FILE_SUFFIX,
};
use meshwork_protocol::task_id::GENERATED_TASK_ID_PREFIX;
use meshwork_protocol::wire::{self, FRAME_BYTES_MAX, Frame, FrameSplitter, LENGTH_PREFIX_BYTES, WIRE_VERSION};
use meshwork_protocol::{
    AgentId, AgentName, ErrorCode, MeshId, NodeId, NodeKey, Record, RecordBody, SignedRecord, Stamp, TaskId,
};
use sha2::{Digest, Sha256};

/// The fixed inputs every vector shares.
const NODE_SEED: [u8; 32] = [1; 32];
const FOUNDED_AT_MS: u64 = 1_795_241_464_120;
const DONE_AT_MS: u64 = 1_795_241_524_120;
const AGENT: &str = "claude-1";
const TASK: &str = "WRK-664";

/// One vector: its name and its `key = value` lines, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vector {
    name: String,
    fields: Vec<(String, String)>,
}

impl Vector {
    fn new(name: &str) -> Vector {
        Vector { name: name.to_owned(), fields: Vec::new() }
    }

    fn push(&mut self, key: &str, value: impl ToString) {
        self.fields.push((key.to_owned(), value.to_string()));
    }
}

/// Goal: every value in PROTOCOL.md's test vectors is what the code computes today.
/// Method: recompute each vector from its inputs and compare every field by name.
#[test]
fn protocol_md_test_vectors_match_the_code() {
    let path = protocol_md_path();
    let text = read(&path);
    let computed = computed_vectors();
    if std::env::var_os("UPDATE_VECTORS").is_some_and(|value| value != "0") {
        let updated = rewrite_vectors(&text, &computed);
        if updated != text {
            // Through a temporary file, so the other tests never read a half-written document.
            let temporary = path.with_extension("md.tmp");
            std::fs::write(&temporary, updated)
                .and_then(|()| std::fs::rename(&temporary, &path))
                .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
            eprintln!("rewrote the test vectors in {}", path.display());
        }
    }
    let text = read(&path);
    let documented = parse_vectors(&text);
    let mut failures = Vec::new();
    for vector in &computed {
        match documented.iter().filter(|doc| doc.name == vector.name).count() {
            0 => {
                failures.push(format!("vector {}: missing; add a ```vector {0} block to docs/PROTOCOL.md", vector.name))
            }
            1 => {}
            count => failures.push(format!("vector {}: appears {count} times", vector.name)),
        }
    }
    for doc in &documented {
        let Some(vector) = computed.iter().find(|vector| vector.name == doc.name) else {
            failures.push(format!("vector {}: no such vector in protocol/tests/vectors.rs", doc.name));
            continue;
        };
        compare(vector, doc, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "docs/PROTOCOL.md disagrees with the code (after a deliberate encoding change run \
         `UPDATE_VECTORS=1 cargo test -p meshwork-protocol --test vectors`):\n{}",
        failures.join("\n")
    );
}

/// Goal: the limits table documents every limit with its current value.
/// Method: read `protocol/src/limits.rs` as text, evaluate each `pub const`, find its row.
#[test]
fn limits_table_lists_every_limit() {
    let source = read(&manifest_dir().join("src/limits.rs"));
    let text = read(&protocol_md_path());
    let rows = table_rows(section(&text, "## Limits"));
    let constants = pub_consts(&source);
    assert!(constants.len() >= 10, "found only {} constants in limits.rs; did its syntax change?", constants.len());
    // The evaluator reads only products of integers; check it against the compiled values.
    let compiled = compiled_limits();
    let mut failures = Vec::new();
    for (name, expression) in &constants {
        let Some(value) = evaluate(expression) else {
            failures.push(format!("{name}: cannot evaluate `{expression}`; teach `evaluate` in vectors.rs"));
            continue;
        };
        if let Some(compiled) = compiled.get(name.as_str()) {
            assert_eq!(value, *compiled, "{name}: the evaluator misread `{expression}`");
        }
        match rows.get(name.as_str()) {
            None => failures.push(format!("{name}: no row in the limits table of docs/PROTOCOL.md")),
            Some(cell) if first_word(cell) != value.to_string() => {
                failures.push(format!("{name}: the limits table says {cell:?}, limits.rs says {value}"))
            }
            Some(_) => {}
        }
    }
    for name in rows.keys() {
        if !constants.iter().any(|(constant, _)| constant == name) {
            failures.push(format!("{name}: in the limits table but not in limits.rs"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Goal: the constants the document names outside the limits table (wire, storage, record,
/// clock, API) have the values the code has. Method: find each by name in any table row.
#[test]
fn constants_named_in_protocol_md_match_the_code() {
    let text = read(&protocol_md_path());
    let rows = table_rows(&text);
    let constants: [(&str, u64); 19] = [
        ("RECORD_VERSION", u64::from(RECORD_VERSION)),
        ("SIGNATURE_BYTES", SIGNATURE_BYTES as u64),
        ("WIRE_VERSION", u64::from(WIRE_VERSION)),
        ("FRAME_BYTES_MAX", FRAME_BYTES_MAX as u64),
        ("LENGTH_PREFIX_BYTES", LENGTH_PREFIX_BYTES as u64),
        ("HLC_DRIFT_MS_MAX", HLC_DRIFT_MS_MAX),
        ("API_VERSION", u64::from(API_VERSION)),
        ("SEGMENT_FORMAT_VERSION", u64::from(SEGMENT_FORMAT_VERSION)),
        ("SEGMENT_HEADER_BYTES", SEGMENT_HEADER_BYTES as u64),
        ("SNAPSHOT_FORMAT_VERSION", u64::from(SNAPSHOT_FORMAT_VERSION)),
        ("SNAPSHOT_HEADER_BYTES", SNAPSHOT_HEADER_BYTES as u64),
        ("SNAPSHOT_TRAILER_BYTES", SNAPSHOT_TRAILER_BYTES as u64),
        ("LOG_FRAME_HEADER_BYTES", LOG_FRAME_HEADER_BYTES as u64),
        ("LOG_FRAME_BYTES_MAX", u64::from(LOG_FRAME_BYTES_MAX)),
        ("SNAPSHOT_BYTES_MAX", SNAPSHOT_BYTES_MAX),
        ("REQUEST_KEY_BYTES_MAX", REQUEST_KEY_BYTES_MAX as u64),
        ("FILE_SEQUENCE_DIGITS", FILE_SEQUENCE_DIGITS as u64),
        ("FILE_SEQUENCE_MAX", FILE_SEQUENCE_MAX),
        ("BOOT_FILE_BYTES_MAX", BOOT_FILE_BYTES_MAX as u64),
    ];
    let mut failures = Vec::new();
    for (name, value) in constants {
        match rows.get(name) {
            None => failures.push(format!("{name}: no table row names it in docs/PROTOCOL.md")),
            Some(cell) if first_word(cell) != value.to_string() => {
                failures.push(format!("{name}: docs/PROTOCOL.md says {cell:?}, the code says {value}"))
            }
            Some(_) => {}
        }
    }
    let text_constants = [
        ("RECORD_SIGNATURE_DOMAIN", c_string(RECORD_SIGNATURE_DOMAIN)),
        ("RECORD_ID_DOMAIN", c_string(RECORD_ID_DOMAIN)),
        ("GENERATED_TASK_ID_PREFIX", GENERATED_TASK_ID_PREFIX.to_owned()),
        ("SEGMENT_MAGIC", String::from_utf8_lossy(&SEGMENT_MAGIC).into_owned()),
        ("SNAPSHOT_MAGIC", String::from_utf8_lossy(&SNAPSHOT_MAGIC).into_owned()),
        ("DOC_DIR_NAME", DOC_DIR_NAME.to_owned()),
        ("BOOT_FILE_NAME", BOOT_FILE_NAME.to_owned()),
        ("TEMP_FILE_SUFFIX", TEMP_FILE_SUFFIX.to_owned()),
    ];
    for (name, value) in text_constants {
        let shown = format!("`{value}`");
        if !rows.get(name).is_some_and(|cell| cell.contains(&shown)) {
            failures.push(format!("{name}: docs/PROTOCOL.md must show it as {shown} in a table row"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Goal: the error table gives every code its contract exit status. Method: one row per code.
#[test]
fn error_table_gives_every_code_its_exit_status() {
    let text = read(&protocol_md_path());
    let rows = table_rows(section(&text, "## Error codes"));
    for code in ErrorCode::ALL {
        let cell = rows.get(code.as_str()).unwrap_or_else(|| panic!("{code}: no row in the error table"));
        assert_eq!(first_word(cell), code.exit_status().to_string(), "{code}: wrong exit status in the error table");
    }
}

fn computed_vectors() -> Vec<Vector> {
    let key = NodeKey::from_seed(NODE_SEED);
    let mesh = MeshId::derive(&key.node_id(), FOUNDED_AT_MS);
    let (claim, claim_vector) = claim_vector(&key, mesh);
    vec![
        identity_vector(&key),
        task_id_vector(&key),
        claim_vector,
        legacy_claim_vector(&key, mesh),
        done_vector(&key, mesh, claim.id()),
        membership_vector(&key, mesh),
        ack_vector(&key, mesh, claim.id()),
        crdt_derivations_vector(&key),
        wire_vector(),
        storage_vector(),
    ]
}

fn identity_vector(key: &NodeKey) -> Vector {
    let node = key.node_id();
    let mut vector = Vector::new("identity");
    vector.push("node_seed", hex(&NODE_SEED));
    vector.push("public_key", hex(node.public_key_bytes()));
    vector.push("peer_id_bytes", hex(&node.peer_id().expect("the seed gives a valid key").to_bytes()));
    vector.push("node_id", node);
    vector.push("key_file", hex(&key.to_libp2p_protobuf().expect("the key encodes")));
    vector.push("agent_id", AgentId { agent: agent(), node });
    vector.push("founded_at_ms", FOUNDED_AT_MS);
    vector.push("mesh_id", MeshId::derive(&node, FOUNDED_AT_MS));
    // The derived values read back to the same key.
    assert_eq!(node.to_string().parse::<NodeId>(), Ok(node));
    let key_file = key.to_libp2p_protobuf().expect("the key encodes");
    assert_eq!(NodeKey::from_libp2p_protobuf(&key_file).map(|key| key.node_id()), Ok(node));
    vector
}

fn task_id_vector(key: &NodeKey) -> Vector {
    let stamp = Stamp { wall_ms: FOUNDED_AT_MS, logical: 3 };
    let random = 0x0123_4567_89ab_cdef_u64;
    let mut vector = Vector::new("task-id");
    vector.push("node_seed", hex(&NODE_SEED));
    vector.push("stamp.wall_ms", stamp.wall_ms);
    vector.push("stamp.logical", stamp.logical);
    vector.push("random", format!("{random:#018x}"));
    vector.push("task_id", TaskId::generate(&key.node_id(), stamp, random));
    vector
}

fn claim_vector(key: &NodeKey, mesh: MeshId) -> (SignedRecord, Vector) {
    let stamp = Stamp { wall_ms: FOUNDED_AT_MS, logical: 0 };
    let requires = ["os=linux", "tool:cargo"].map(|text| text.parse().expect("a requirement"));
    let claim = Claim {
        task: task(),
        generation: 0,
        lamport: 1,
        lease_ms: limits::LEASE_MS_DEFAULT,
        probe: None,
        quorum: false,
        requires: Claim::canonical_requirements(&requires),
        max_attempts: limits::ATTEMPTS_DEFAULT,
    };
    let record = record(key, mesh, Some(agent()), stamp, RecordBody::Claim(claim.clone()));
    let signed = SignedRecord::sign(record.clone(), key).expect("the claim signs");
    let mut vector = Vector::new("claim");
    push_header_inputs(&mut vector, mesh, &record);
    vector.push("body", "claim");
    vector.push("claim.task", &claim.task);
    vector.push("claim.generation", claim.generation);
    vector.push("claim.lamport", claim.lamport);
    vector.push("claim.lease_ms", claim.lease_ms);
    vector.push("claim.probe", "none");
    vector.push("claim.quorum", claim.quorum);
    let texts: Vec<String> = claim.requires.iter().map(ToString::to_string).collect();
    vector.push("claim.requires", texts.join(","));
    vector.push("claim.max_attempts", claim.max_attempts);
    // Each field's own bytes, so an implementer can find where an encoding goes wrong.
    let parts = [
        ("encoding.version", postcard(&record.version)),
        ("encoding.mesh", postcard(&record.mesh)),
        ("encoding.signer", postcard(&record.signer)),
        ("encoding.agent", postcard(&record.agent)),
        ("encoding.stamp.wall_ms", postcard(&record.stamp.wall_ms)),
        ("encoding.stamp.logical", postcard(&record.stamp.logical)),
        ("encoding.body.tag", body_tag(&record.body, &postcard(&claim))),
        ("encoding.claim.task", postcard(&claim.task)),
        ("encoding.claim.generation", postcard(&claim.generation)),
        ("encoding.claim.lamport", postcard(&claim.lamport)),
        ("encoding.claim.lease_ms", postcard(&claim.lease_ms)),
        ("encoding.claim.probe", postcard(&claim.probe)),
        ("encoding.claim.quorum", postcard(&claim.quorum)),
        ("encoding.claim.requires", postcard(&claim.requires)),
        ("encoding.claim.max_attempts", postcard(&claim.max_attempts)),
    ];
    let concatenated: Vec<u8> = parts.iter().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
    assert_eq!(concatenated, record_bytes(&signed), "the field encodings must add up to the record bytes");
    for (name, bytes) in parts {
        vector.push(name, hex(&bytes));
    }
    push_signed_outputs(&mut vector, &signed);
    (signed, vector)
}

/// A claim of record version 1, before claims named their terms: the same claim without
/// `requires` and `max_attempts`. Nodes still read such records (and judge them by the
/// task's fields); this pins that their bytes, signature and id are what they always were.
fn legacy_claim_vector(key: &NodeKey, mesh: MeshId) -> Vector {
    let stamp = Stamp { wall_ms: FOUNDED_AT_MS, logical: 0 };
    let claim = Claim {
        task: task(),
        generation: 0,
        lamport: 1,
        lease_ms: limits::LEASE_MS_DEFAULT,
        probe: None,
        quorum: false,
        requires: Vec::new(),
        max_attempts: 0,
    };
    let record =
        Record { version: RECORD_VERSION_LEGACY, ..record(key, mesh, Some(agent()), stamp, RecordBody::Claim(claim)) };
    let signed = SignedRecord::sign(record.clone(), key).expect("a version-1 claim signs");
    let mut vector = Vector::new("claim-v1");
    push_header_inputs(&mut vector, mesh, &record);
    vector.push("version", record.version);
    vector.push("body", "claim");
    vector.push("claim.task", TASK);
    vector.push("claim.generation", 0);
    vector.push("claim.lamport", 1);
    vector.push("claim.lease_ms", limits::LEASE_MS_DEFAULT);
    vector.push("claim.probe", "none");
    vector.push("claim.quorum", false);
    push_signed_outputs(&mut vector, &signed);
    vector
}

fn done_vector(key: &NodeKey, mesh: MeshId, claim: meshwork_protocol::RecordId) -> Vector {
    let stamp = Stamp { wall_ms: DONE_AT_MS, logical: 0 };
    let summary = "tests pass";
    let body = RecordBody::Done { task: task(), claim, summary: summary.to_owned() };
    let record = record(key, mesh, Some(agent()), stamp, body);
    let signed = SignedRecord::sign(record.clone(), key).expect("the done signs");
    let mut vector = Vector::new("done");
    push_header_inputs(&mut vector, mesh, &record);
    vector.push("body", "done");
    vector.push("done.task", TASK);
    vector.push("done.claim", claim);
    vector.push("done.summary", summary);
    vector.push("encoding.body", hex(&postcard(&record.body)));
    push_signed_outputs(&mut vector, &signed);
    vector
}

fn membership_vector(key: &NodeKey, mesh: MeshId) -> Vector {
    let stamp = Stamp { wall_ms: FOUNDED_AT_MS, logical: 0 };
    let membership = Membership {
        action: MembershipAction::Add,
        member: key.node_id(),
        name: "laptop".to_owned(),
        roles: vec!["founder".to_owned()],
    };
    assert_eq!(MeshId::derive(&key.node_id(), stamp.wall_ms), mesh, "a founding record names the mesh it founds");
    let record = record(key, mesh, None, stamp, RecordBody::Membership(membership.clone()));
    let signed = SignedRecord::sign(record.clone(), key).expect("the membership signs");
    let mut vector = Vector::new("membership");
    push_header_inputs(&mut vector, mesh, &record);
    vector.push("body", "membership");
    vector.push("membership.action", "add");
    vector.push("membership.member", membership.member);
    vector.push("membership.name", &membership.name);
    vector.push("membership.roles", membership.roles.join(","));
    vector.push("encoding.body", hex(&postcard(&record.body)));
    push_signed_outputs(&mut vector, &signed);
    vector
}

fn ack_vector(key: &NodeKey, mesh: MeshId, claim: meshwork_protocol::RecordId) -> Vector {
    let stamp = Stamp { wall_ms: FOUNDED_AT_MS, logical: 1 };
    let body = RecordBody::Ack { task: task(), claim, generation: 0 };
    let record = record(key, mesh, None, stamp, body);
    let signed = SignedRecord::sign(record.clone(), key).expect("the ack signs");
    let mut vector = Vector::new("ack");
    push_header_inputs(&mut vector, mesh, &record);
    vector.push("body", "ack");
    vector.push("ack.task", TASK);
    vector.push("ack.claim", claim);
    vector.push("ack.generation", 0);
    vector.push("encoding.body", hex(&postcard(&record.body)));
    push_signed_outputs(&mut vector, &signed);
    vector
}

/// `crdt::document::actor_for` and `crdt::resolve::rendezvous`, restated from the formulas
/// PROTOCOL.md gives: `protocol` cannot depend on `crdt`, so this pins the document's
/// formulas, which were checked against those functions when the vector was written.
fn crdt_derivations_vector(key: &NodeKey) -> Vector {
    let node = key.node_id();
    let boot = 1u32;
    let actor_digest = sha256(&[b"meshwork-actor-v1\0", node.public_key_bytes()]);
    let mut actor = actor_digest[..12].to_vec();
    actor.extend_from_slice(&boot.to_be_bytes());
    let rendezvous_digest = sha256(&[b"meshwork-rendezvous-v1\0", TASK.as_bytes(), &[0], node.public_key_bytes()]);
    let rendezvous = u64::from_be_bytes(rendezvous_digest[..8].try_into().expect("8 bytes"));
    let mut vector = Vector::new("crdt-derivations");
    vector.push("node_seed", hex(&NODE_SEED));
    vector.push("boot", boot);
    vector.push("actor_id", hex(&actor));
    vector.push("rendezvous.task", TASK);
    vector.push("rendezvous", rendezvous);
    vector
}

fn wire_vector() -> Vector {
    let payload = vec![0xa1, 0xb2, 0xc3];
    let frame = Frame::Sync(payload.clone()).encode();
    let stream = wire::length_prefixed(&frame).expect("a small frame fits");
    assert_eq!(FrameSplitter::default().push(&stream), Ok(vec![frame.clone()]));
    assert_eq!(Frame::decode(&frame), Ok(Frame::Sync(payload.clone())));
    let mut vector = Vector::new("wire");
    vector.push("kind", "sync");
    vector.push("payload", hex(&payload));
    vector.push("frame", hex(&frame));
    vector.push("stream", hex(&stream));
    vector
}

fn storage_vector() -> Vector {
    let entry = RequestEntry { key: "req-1".to_owned(), response: br#"{"ok":true}"#.to_vec(), unix_ms: FOUNDED_AT_MS };
    let mut payload = Vec::new();
    entry.encode(&mut payload);
    let kind = FrameKind::Request;
    let payload_bytes = u32::try_from(payload.len()).expect("a small payload");
    let crc = crc32(&[&payload_bytes.to_le_bytes(), &[kind.as_byte()], &payload]);
    let header = FrameHeader { payload_bytes, crc32: crc, kind };
    let mut frame = header.encode().to_vec();
    frame.extend_from_slice(&payload);
    let doc = [0x85, 0x6f, 0x4a, 0x83]; // A placeholder: the layout does not read the document.
    let mut snapshot = SnapshotHeader { doc_bytes: doc.len() as u64, request_count: 1 }.encode().to_vec();
    snapshot.extend_from_slice(&doc);
    entry.encode(&mut snapshot);
    let decoded = storage::decode_snapshot_content(&snapshot).expect("the snapshot content decodes");
    assert_eq!(decoded.requests, vec![entry.clone()]);
    let trailer = crc32(&[&snapshot]);
    snapshot.extend_from_slice(&trailer.to_le_bytes());
    let boot = 7;
    assert_eq!(storage::decode_boot(storage::encode_boot(boot).as_bytes()), Ok(boot));
    let mut vector = Vector::new("storage");
    vector.push("segment_header", hex(&storage::segment_header()));
    vector.push("request.key", &entry.key);
    vector.push("request.response", String::from_utf8_lossy(&entry.response));
    vector.push("request.unix_ms", entry.unix_ms);
    vector.push("request_payload", hex(&payload));
    vector.push("frame.kind", kind.as_byte());
    vector.push("frame.crc32", format!("{crc:#010x}"));
    vector.push("frame", hex(&frame));
    vector.push("snapshot.doc", hex(&doc));
    vector.push("snapshot", hex(&snapshot));
    vector.push("boot", boot);
    vector.push("boot_file", hex(storage::encode_boot(boot).as_bytes()));
    vector
}

/// A NUL-terminated domain string as the document writes it: `meshwork-record-v1\0`.
fn c_string(bytes: &[u8]) -> String {
    let text = bytes.strip_suffix(b"\0").expect("domain strings end with NUL");
    format!("{}\\0", String::from_utf8_lossy(text))
}

fn record(key: &NodeKey, mesh: MeshId, agent: Option<AgentName>, stamp: Stamp, body: RecordBody) -> Record {
    Record { version: RECORD_VERSION, mesh, signer: key.node_id(), agent, stamp, body }
}

fn push_header_inputs(vector: &mut Vector, mesh: MeshId, record: &Record) {
    vector.push("node_seed", hex(&NODE_SEED));
    vector.push("mesh", mesh);
    vector.push("signer", record.signer);
    vector.push("agent", record.agent.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string));
    vector.push("stamp.wall_ms", record.stamp.wall_ms);
    vector.push("stamp.logical", record.stamp.logical);
}

fn push_signed_outputs(vector: &mut Vector, signed: &SignedRecord) {
    let decoded = SignedRecord::decode(signed.bytes()).expect("a signed record decodes");
    assert_eq!(&decoded, signed, "decoding gives back the record and its id");
    vector.push("record_bytes", hex(record_bytes(signed)));
    vector.push("signature", hex(&signed.bytes()[signed.bytes().len() - SIGNATURE_BYTES..]));
    vector.push("signed_bytes_length", signed.bytes().len());
    vector.push("record_id", signed.id());
}

fn record_bytes(signed: &SignedRecord) -> &[u8] {
    &signed.bytes()[..signed.bytes().len() - SIGNATURE_BYTES]
}

/// The variant tag of a body: its encoding without the encoding of its fields.
fn body_tag(body: &RecordBody, fields: &[u8]) -> Vec<u8> {
    let bytes = postcard(body);
    assert!(bytes.ends_with(fields), "a body is its tag followed by its fields");
    bytes[..bytes.len() - fields.len()].to_vec()
}

fn postcard<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("the value encodes")
}

fn agent() -> AgentName {
    AgentName::new(AGENT).expect("a valid agent name")
}

fn task() -> TaskId {
    TaskId::new(TASK).expect("a valid task id")
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// CRC-32/ISO-HDLC (zlib's `crc32`), bit by bit: the storage layouts name it, and the node
/// computes it with `crc32fast`, which `protocol` does not depend on.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn crc32_matches_the_standard_check_value() {
    // Goal: the checksum in the storage vector is zlib's. Method: the catalogue's check value.
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
}

fn protocol_md_path() -> PathBuf {
    manifest_dir().join("../docs/PROTOCOL.md")
}

/// This crate's directory in the checkout being tested. Cargo sets `CARGO_MANIFEST_DIR` when
/// it runs a test, and that wins over the compile-time value: a binary reused from another
/// checkout that shares the target directory must still read this checkout's files.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

const FENCE: &str = "```";
const VECTOR_FENCE: &str = "```vector ";

/// The vector blocks of the document, in order.
fn parse_vectors(text: &str) -> Vec<Vector> {
    let mut vectors = Vec::new();
    let mut current: Option<Vector> = None;
    for (number, line) in text.lines().enumerate() {
        let Some(vector) = current.as_mut() else {
            current = line.strip_prefix(VECTOR_FENCE).map(|name| Vector::new(name.trim()));
            continue;
        };
        if line.trim() == FENCE {
            vectors.extend(current.take());
            continue;
        }
        let (key, value) = line.split_once(" = ").unwrap_or_else(|| {
            panic!(
                "docs/PROTOCOL.md line {}: vector {} holds a line that is not `key = value`",
                number + 1,
                vector.name
            )
        });
        vector.push(key.trim(), value.trim());
    }
    assert!(current.is_none(), "docs/PROTOCOL.md: a vector block is not closed");
    vectors
}

/// The document with every known vector block's lines replaced by the computed ones.
fn rewrite_vectors(text: &str, computed: &[Vector]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.lines() {
        if skipping {
            if line.trim() != FENCE {
                continue;
            }
            skipping = false;
        } else if let Some(vector) =
            line.strip_prefix(VECTOR_FENCE).and_then(|name| computed.iter().find(|v| v.name == name.trim()))
        {
            out.push_str(line);
            out.push('\n');
            for (key, value) in &vector.fields {
                out.push_str(&format!("{key} = {value}\n"));
            }
            skipping = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn compare(computed: &Vector, documented: &Vector, failures: &mut Vec<String>) {
    let name = &computed.name;
    let failures_before = failures.len();
    let documented_fields: BTreeMap<&str, &str> =
        documented.fields.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    for (key, value) in &computed.fields {
        match documented_fields.get(key.as_str()) {
            None => failures.push(format!("vector {name}, field {key}: missing (the code gives {value})")),
            Some(doc) if doc != value => {
                failures.push(format!("vector {name}, field {key}: the document says {doc}, the code gives {value}"))
            }
            Some(_) => {}
        }
    }
    for (key, _) in &documented.fields {
        if !computed.fields.iter().any(|(computed_key, _)| computed_key == key) {
            failures.push(format!("vector {name}, field {key}: the code computes no such field"));
        }
    }
    // Same fields, same values: the order must match too, so the blocks read as the code writes them.
    let computed_order: Vec<&str> = computed.fields.iter().map(|(key, _)| key.as_str()).collect();
    let documented_order: Vec<&str> = documented.fields.iter().map(|(key, _)| key.as_str()).collect();
    if failures.len() == failures_before && computed_order != documented_order {
        failures.push(format!("vector {name}: fields out of order; expected {computed_order:?}"));
    }
}

/// The text from a heading line to the next heading of the same level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .lines()
        .scan(0, |offset, line| {
            let here = *offset;
            *offset += line.len() + 1;
            Some((here, line))
        })
        .find(|(_, line)| line.trim_end() == heading)
        .map(|(offset, _)| offset)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no heading {heading:?}"));
    let level = heading.split(' ').next().unwrap_or("##");
    let body = &text[start + heading.len()..];
    let end = body.match_indices(&format!("\n{level} ")).map(|(index, _)| index).next().unwrap_or(body.len());
    &body[..end]
}

/// Table rows whose first cell is a code span: that name to the second cell.
fn table_rows(text: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        // `| a | b | ... |` splits into an empty first and last cell around the real ones.
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let (first, second) = (cells[1], cells[2]);
        // The error table leads with the exit status, then the code.
        let (name, value) = if first.starts_with('`') { (first, second) } else { (second, first) };
        if let Some(name) = name.strip_prefix('`').and_then(|name| name.strip_suffix('`')) {
            rows.entry(name.to_owned()).or_insert_with(|| value.to_owned());
        }
    }
    rows
}

fn first_word(cell: &str) -> String {
    cell.split_whitespace().next().unwrap_or("").trim_matches('`').to_owned()
}

/// `NAME -> expression` of every `pub const` in a source file.
fn pub_consts(source: &str) -> Vec<(String, String)> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(':')?;
            let (_, expression) = rest.split_once('=')?;
            Some((name.trim().to_owned(), expression.trim().trim_end_matches(';').trim().to_owned()))
        })
        .collect()
}

/// Evaluates a product of integer literals (`7 * 24 * 3600 * 1000`, `-1000`).
fn evaluate(expression: &str) -> Option<i128> {
    expression.split('*').try_fold(1i128, |product, factor| {
        let factor: i128 = factor.trim().replace('_', "").parse().ok()?;
        product.checked_mul(factor)
    })
}

/// The limits as compiled, to check [`evaluate`] against.
fn compiled_limits() -> BTreeMap<&'static str, i128> {
    use meshwork_protocol::limits::*;
    BTreeMap::from([
        ("TITLE_BYTES_MAX", TITLE_BYTES_MAX as i128),
        ("DESCRIPTION_BYTES_MAX", DESCRIPTION_BYTES_MAX as i128),
        ("MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX as i128),
        ("FIELD_BYTES_MAX", FIELD_BYTES_MAX as i128),
        ("LIST_ITEMS_MAX", LIST_ITEMS_MAX as i128),
        ("DEPENDENCIES_MAX", DEPENDENCIES_MAX as i128),
        ("RECORDS_PER_TASK_MAX", RECORDS_PER_TASK_MAX as i128),
        ("NAME_BYTES_MAX", NAME_BYTES_MAX as i128),
        ("RECORD_BYTES_MAX", RECORD_BYTES_MAX as i128),
        ("PRIORITY_MIN", i128::from(PRIORITY_MIN)),
        ("PRIORITY_MAX", i128::from(PRIORITY_MAX)),
        ("LEASE_MS_MIN", i128::from(LEASE_MS_MIN)),
        ("LEASE_MS_MAX", i128::from(LEASE_MS_MAX)),
        ("LEASE_MS_DEFAULT", i128::from(LEASE_MS_DEFAULT)),
        ("ATTEMPTS_MAX", i128::from(ATTEMPTS_MAX)),
        ("ATTEMPTS_DEFAULT", i128::from(ATTEMPTS_DEFAULT)),
        ("REQUEST_ID_BYTES_MAX", REQUEST_ID_BYTES_MAX as i128),
        ("API_BODY_BYTES_MAX", API_BODY_BYTES_MAX as i128),
    ])
}
