//! Signed records: the only way a node says who holds what.
//!
//! A record is encoded canonically (postcard 1.0 wire format of [`Record`], version byte
//! first), signed with the node's key over a domain-separated message, and identified by a
//! hash of the signed bytes. `docs/PROTOCOL.md` specifies the bytes with test vectors.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::Stamp;
use crate::identity::{AgentName, MeshId, NodeId, NodeKey, hex, unhex};
use crate::limits::{
    ATTEMPTS_MAX, FIELD_BYTES_MAX, LEASE_MS_MAX, LEASE_MS_MIN, LIST_ITEMS_MAX, MESSAGE_BYTES_MAX, NAME_BYTES_MAX,
    RECORD_BYTES_MAX,
};
use crate::probe::Probe;
use crate::requirement::Requirement;
use crate::task_id::TaskId;

/// The version byte every record this build signs starts with. Version 2 added the terms of a
/// claim ([`Claim::requires`], [`Claim::max_attempts`]); every other kind is encoded as in
/// version 1.
pub const RECORD_VERSION: u8 = 2;
/// The first version, still read: its records decode as they always did, and a version-1
/// claim names no terms ([`Claim::names_terms`]).
pub const RECORD_VERSION_LEGACY: u8 = 1;
/// Prefix of the message a record signature covers, so a record signature can never be
/// mistaken for a signature over anything else the node key signs.
pub const RECORD_SIGNATURE_DOMAIN: &[u8] = b"meshwork-record-v1\0";
/// Prefix of the hash that names a record.
pub const RECORD_ID_DOMAIN: &[u8] = b"meshwork-record-id-v1\0";
/// Length of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// What a node signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`] in every record signed now; [`RECORD_VERSION_LEGACY`] in records
    /// signed before claims named their terms. A decoder refuses any other.
    pub version: u8,
    /// The mesh the record belongs to; a record replayed into another mesh is invalid there.
    pub mesh: MeshId,
    /// The node that signed the record.
    pub signer: NodeId,
    /// The local agent the node vouches for, if an agent made it.
    pub agent: Option<AgentName>,
    pub stamp: Stamp,
    pub body: RecordBody,
}

/// The kinds of record. The variant order is the wire tag: append new kinds, never reorder.
///
/// `Ack` is a member's vote for a quorum claim (`claim --quorum`): the claim counts once a
/// majority of current members voted for it, and only a member's first vote per task and
/// generation counts (invariant 7, quorum claims are exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordBody {
    Claim(Claim),
    Renew { task: TaskId, claim: RecordId },
    Release { task: TaskId, claim: RecordId, reason: String },
    Progress { task: TaskId, claim: RecordId, message: String, percent: Option<u8> },
    Handoff(Handoff),
    Done { task: TaskId, claim: RecordId, summary: String },
    Fail { task: TaskId, claim: RecordId, reason: String },
    Approve { task: TaskId },
    Cancel { task: TaskId, reason: String },
    Membership(Membership),
    Probe(Probe),
    Ack { task: TaskId, claim: RecordId, generation: u32 },
}

/// An attempt to hold a task for one generation, on the terms the claimer saw.
///
/// The resolver judges a claim by what it names (its probe, its requirements, its attempt
/// limit), never by the task's plain fields, which are unsigned and editable: so no edit of a
/// field can make a claim stop counting after it counted (invariant 4, finished stays
/// finished). An edit binds the claims made by nodes that saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub task: TaskId,
    /// The generation the claimer saw: how often the task was opened again.
    pub generation: u32,
    /// 1 + the highest claim Lamport number the claimer saw on this task.
    pub lamport: u64,
    /// How long the claim holds without a renewal.
    pub lease_ms: u64,
    /// The signed probe the claimer judged itself against (invariant 6, gates hold).
    pub probe: Option<RecordId>,
    /// Counts only once a majority of members acknowledged it (`claim --quorum`).
    pub quorum: bool,
    /// The task's hard requirements as the claimer saw them, in canonical order
    /// ([`Claim::canonical_requirements`]): the claim counts only if the probe it names meets
    /// every one. Empty in a version-1 claim.
    pub requires: Vec<Requirement>,
    /// The task's attempt limit as the claimer saw it: the claim counts only while fewer of
    /// the task's generations than this have failed. At least 1 in a version-2 claim; 0 only
    /// in a version-1 claim, which names no terms.
    pub max_attempts: u32,
}

impl Claim {
    /// Whether the claim names its terms (`requires`, `max_attempts`): every claim of record
    /// version 2 does; a version-1 claim does not, and the resolver judges it by the task's
    /// fields as it always did.
    pub fn names_terms(&self) -> bool {
        self.max_attempts != 0
    }

    /// Requirements in the order a claim names them: sorted by their text, bytewise, without
    /// duplicates. One list has one encoding, so one claim has one id.
    pub fn canonical_requirements(requirements: &[Requirement]) -> Vec<Requirement> {
        let mut texts: Vec<(String, &Requirement)> =
            requirements.iter().map(|requirement| (requirement.to_string(), requirement)).collect();
        texts.sort_by(|a, b| a.0.cmp(&b.0));
        texts.dedup_by(|a, b| a.0 == b.0);
        texts.into_iter().map(|(_, requirement)| requirement.clone()).collect()
    }

    /// Whether the requirements are in canonical order, each text within `FIELD_BYTES_MAX`.
    fn requirements_are_canonical(&self) -> bool {
        let texts: Vec<String> = self.requires.iter().map(ToString::to_string).collect();
        texts.len() <= LIST_ITEMS_MAX
            && texts.iter().all(|text| text.len() <= FIELD_BYTES_MAX)
            && texts.windows(2).all(|pair| pair[0] < pair[1])
    }
}

/// Evidence a holder leaves for whoever comes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub task: TaskId,
    pub claim: RecordId,
    pub commits: Vec<String>,
    pub files: Vec<String>,
    pub tests: Vec<String>,
    pub risks: Vec<String>,
    pub next: String,
}

/// A change of who belongs to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub action: MembershipAction,
    pub member: NodeId,
    /// The member's human name (`laptop`, `gpu-box`).
    pub name: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipAction {
    Add,
    Remove,
}

/// A record's name: the first 16 bytes of SHA-256 over [`RECORD_ID_DOMAIN`] and the signed
/// bytes. Equal records have equal ids, so a replayed or duplicated record adds nothing;
/// a forged copy has other bytes and so another id, and can never hide the real one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId(pub [u8; 16]);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

impl std::str::FromStr for RecordId {
    type Err = RecordError;
    fn from_str(text: &str) -> Result<RecordId, RecordError> {
        let bytes = unhex(text).ok_or(RecordError::Malformed("record id is not hex"))?;
        Ok(RecordId(bytes.try_into().map_err(|_| RecordError::Malformed("record id is not 16 bytes"))?))
    }
}

/// Why bytes are not a valid signed record. The resolver counts these; nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record of {0} bytes is over RECORD_BYTES_MAX")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    #[error("record signature does not verify")]
    BadSignature,
}

/// A record with its signature, as stored in the document and sent between nodes.
///
/// Built only by [`SignedRecord::sign`] or [`SignedRecord::decode`], so holding one means
/// its signature verified and its encoding is canonical.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRecord {
    record: Record,
    bytes: Vec<u8>,
    id: RecordId,
}

impl fmt::Debug for SignedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRecord").field("id", &self.id).field("record", &self.record).finish()
    }
}

impl SignedRecord {
    /// Signs a record. The signer field must name the key's node.
    pub fn sign(record: Record, key: &NodeKey) -> Result<SignedRecord, RecordError> {
        assert_eq!(record.signer, key.node_id(), "a node signs only records in its own name");
        record.check_limits()?;
        let mut bytes = encode_record(&record)?;
        let signature = key.sign(&signature_message(&bytes));
        bytes.extend_from_slice(&signature);
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let id = record_id(&bytes);
        Ok(SignedRecord { record, bytes, id })
    }

    /// Decodes and verifies signed bytes: size, version, canonical encoding, limits and
    /// signature. Whether the signer may sign (membership) is the resolver's question.
    pub fn decode(bytes: &[u8]) -> Result<SignedRecord, RecordError> {
        SignedRecord::decode_unless_verified(bytes, |_| false)
    }

    /// [`SignedRecord::decode`], skipping the signature check for a record whose id the
    /// caller has seen verify before. The id is a hash over the signed bytes, so equal ids
    /// mean equal bytes and the earlier check holds; every other check still runs.
    pub fn decode_unless_verified(
        bytes: &[u8],
        verified_before: impl Fn(&RecordId) -> bool,
    ) -> Result<SignedRecord, RecordError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let split = bytes.len().checked_sub(SIGNATURE_BYTES).ok_or(RecordError::Malformed("too short"))?;
        let (record_bytes, signature) = bytes.split_at(split);
        let version = *record_bytes.first().ok_or(RecordError::Malformed("empty"))?;
        let record = match version {
            RECORD_VERSION => postcard::from_bytes::<Record>(record_bytes).ok(),
            RECORD_VERSION_LEGACY => legacy::decode(record_bytes),
            other => return Err(RecordError::UnknownVersion(other)),
        };
        let record = record.ok_or(RecordError::Malformed("undecodable"))?;
        // Canonical: exactly one encoding per record, so one record has exactly one id.
        if encode_record(&record)? != record_bytes {
            return Err(RecordError::Malformed("not canonically encoded"));
        }
        record.check_limits()?;
        let signature: &[u8; SIGNATURE_BYTES] =
            signature.try_into().map_err(|_| RecordError::Malformed("signature length"))?;
        let id = record_id(bytes);
        if !verified_before(&id) && !record.signer.verify(&signature_message(record_bytes), signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(SignedRecord { record, bytes: bytes.to_vec(), id })
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn id(&self) -> RecordId {
        self.id
    }
}

fn encode_record(record: &Record) -> Result<Vec<u8>, RecordError> {
    let encoded = match record.version {
        RECORD_VERSION => postcard::to_stdvec(record).ok(),
        RECORD_VERSION_LEGACY => legacy::encode(record),
        other => return Err(RecordError::UnknownVersion(other)),
    };
    encoded.ok_or(RecordError::Malformed("unencodable"))
}

/// Records of version 1. Every kind but `claim` has the bytes of version 2; a version-1 claim
/// ends after `quorum`, without the terms version 2 added. In memory it is a [`Claim`] with no
/// requirements and `max_attempts` 0, which no version-2 claim has.
mod legacy {
    use super::*;

    /// A version-1 claim record, field for field as it was encoded.
    #[derive(Serialize, Deserialize)]
    struct ClaimRecord {
        version: u8,
        mesh: MeshId,
        signer: NodeId,
        agent: Option<AgentName>,
        stamp: Stamp,
        body: ClaimBody,
    }

    /// `RecordBody` of version 1, as far as claims go: the claim is variant 0 (tag `00`).
    #[derive(Serialize, Deserialize)]
    enum ClaimBody {
        Claim(ClaimV1),
    }

    #[derive(Serialize, Deserialize)]
    struct ClaimV1 {
        task: TaskId,
        generation: u32,
        lamport: u64,
        lease_ms: u64,
        probe: Option<RecordId>,
        quorum: bool,
    }

    pub(super) fn decode(record_bytes: &[u8]) -> Option<Record> {
        if let Ok(old) = postcard::from_bytes::<ClaimRecord>(record_bytes) {
            let ClaimBody::Claim(claim) = old.body;
            let claim = Claim {
                task: claim.task,
                generation: claim.generation,
                lamport: claim.lamport,
                lease_ms: claim.lease_ms,
                probe: claim.probe,
                quorum: claim.quorum,
                requires: Vec::new(),
                max_attempts: 0,
            };
            let (version, mesh, signer, agent, stamp) = (old.version, old.mesh, old.signer, old.agent, old.stamp);
            return Some(Record { version, mesh, signer, agent, stamp, body: RecordBody::Claim(claim) });
        }
        // Any other kind of version 1 has the layout of today.
        postcard::from_bytes::<Record>(record_bytes).ok().filter(|record| !matches!(record.body, RecordBody::Claim(_)))
    }

    pub(super) fn encode(record: &Record) -> Option<Vec<u8>> {
        let RecordBody::Claim(claim) = &record.body else { return postcard::to_stdvec(record).ok() };
        // A version-1 claim cannot carry terms: there are no bytes for them.
        if claim.names_terms() || !claim.requires.is_empty() {
            return None;
        }
        let old = ClaimRecord {
            version: record.version,
            mesh: record.mesh,
            signer: record.signer,
            agent: record.agent.clone(),
            stamp: record.stamp,
            body: ClaimBody::Claim(ClaimV1 {
                task: claim.task.clone(),
                generation: claim.generation,
                lamport: claim.lamport,
                lease_ms: claim.lease_ms,
                probe: claim.probe,
                quorum: claim.quorum,
            }),
        };
        postcard::to_stdvec(&old).ok()
    }
}

fn signature_message(record_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(RECORD_SIGNATURE_DOMAIN.len() + record_bytes.len());
    message.extend_from_slice(RECORD_SIGNATURE_DOMAIN);
    message.extend_from_slice(record_bytes);
    message
}

fn record_id(signed_bytes: &[u8]) -> RecordId {
    let mut hasher = Sha256::new();
    hasher.update(RECORD_ID_DOMAIN);
    hasher.update(signed_bytes);
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    RecordId(id)
}

impl Record {
    /// The task a record is about, if it is about one.
    pub fn task(&self) -> Option<&TaskId> {
        match &self.body {
            RecordBody::Claim(claim) => Some(&claim.task),
            RecordBody::Handoff(handoff) => Some(&handoff.task),
            RecordBody::Renew { task, .. }
            | RecordBody::Release { task, .. }
            | RecordBody::Progress { task, .. }
            | RecordBody::Done { task, .. }
            | RecordBody::Fail { task, .. }
            | RecordBody::Approve { task }
            | RecordBody::Cancel { task, .. }
            | RecordBody::Ack { task, .. } => Some(task),
            RecordBody::Membership(_) | RecordBody::Probe(_) => None,
        }
    }

    /// The claim a record continues (renew, release, progress, handoff, done, fail): always
    /// one of its signer's own claims. An `ack` names another node's claim and continues
    /// nothing, so it is not here.
    pub fn claim_ref(&self) -> Option<RecordId> {
        match &self.body {
            RecordBody::Renew { claim, .. }
            | RecordBody::Release { claim, .. }
            | RecordBody::Progress { claim, .. }
            | RecordBody::Done { claim, .. }
            | RecordBody::Fail { claim, .. } => Some(*claim),
            RecordBody::Handoff(handoff) => Some(handoff.claim),
            RecordBody::Claim(_)
            | RecordBody::Approve { .. }
            | RecordBody::Cancel { .. }
            | RecordBody::Membership(_)
            | RecordBody::Probe(_)
            | RecordBody::Ack { .. } => None,
        }
    }

    /// The record kind's name as shown to people and in JSON (`claim`, `done`).
    pub fn kind(&self) -> &'static str {
        match &self.body {
            RecordBody::Claim(_) => "claim",
            RecordBody::Renew { .. } => "renew",
            RecordBody::Release { .. } => "release",
            RecordBody::Progress { .. } => "progress",
            RecordBody::Handoff(_) => "handoff",
            RecordBody::Done { .. } => "done",
            RecordBody::Fail { .. } => "fail",
            RecordBody::Approve { .. } => "approve",
            RecordBody::Cancel { .. } => "cancel",
            RecordBody::Membership(_) => "membership",
            RecordBody::Probe(_) => "probe",
            RecordBody::Ack { .. } => "ack",
        }
    }

    /// Checks every free-text and list field against [`crate::limits`].
    pub fn check_limits(&self) -> Result<(), RecordError> {
        let message = |text: &str| text.len() <= MESSAGE_BYTES_MAX;
        let list =
            |items: &[String]| items.len() <= LIST_ITEMS_MAX && items.iter().all(|item| item.len() <= FIELD_BYTES_MAX);
        let within = match &self.body {
            RecordBody::Claim(claim) => {
                let terms = if self.version == RECORD_VERSION_LEGACY {
                    !claim.names_terms() && claim.requires.is_empty()
                } else {
                    (1..=ATTEMPTS_MAX).contains(&claim.max_attempts) && claim.requirements_are_canonical()
                };
                (LEASE_MS_MIN..=LEASE_MS_MAX).contains(&claim.lease_ms) && terms
            }
            RecordBody::Renew { .. } | RecordBody::Approve { .. } | RecordBody::Ack { .. } => true,
            RecordBody::Release { reason, .. }
            | RecordBody::Fail { reason, .. }
            | RecordBody::Cancel { reason, .. } => message(reason),
            RecordBody::Progress { message: text, percent, .. } => message(text) && percent.is_none_or(|p| p <= 100),
            RecordBody::Done { summary, .. } => message(summary),
            RecordBody::Handoff(handoff) => {
                list(&handoff.commits)
                    && list(&handoff.files)
                    && list(&handoff.tests)
                    && list(&handoff.risks)
                    && message(&handoff.next)
            }
            RecordBody::Membership(membership) => membership.name.len() <= NAME_BYTES_MAX && list(&membership.roles),
            RecordBody::Probe(probe) => {
                let short = |text: &String| text.len() <= FIELD_BYTES_MAX;
                let texts =
                    [&probe.os, &probe.os_version, &probe.kernel, &probe.arch, &probe.hostname, &probe.cpu_model];
                texts.into_iter().all(short)
                    && probe.tools.len() <= LIST_ITEMS_MAX
                    && probe.tools.iter().all(|(name, version)| short(name) && short(version))
                    && list(&probe.labels)
                    && probe.gpus.len() <= LIST_ITEMS_MAX
                    && probe.gpus.iter().all(|gpu| short(&gpu.model))
            }
        };
        if within { Ok(()) } else { Err(RecordError::Malformed("a field is over its limit")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_record(key: &NodeKey) -> Record {
        Record {
            version: RECORD_VERSION,
            mesh: MeshId([5; 16]),
            signer: key.node_id(),
            agent: Some(AgentName::new("claude-1").unwrap()),
            stamp: Stamp { wall_ms: 1_795_241_464_120, logical: 0 },
            body: RecordBody::Claim(Claim {
                task: TaskId::new("WRK-664").unwrap(),
                generation: 0,
                lamport: 1,
                lease_ms: 1_800_000,
                probe: None,
                quorum: false,
                requires: vec!["os=linux".parse().unwrap(), "tool:cargo".parse().unwrap()],
                max_attempts: 3,
            }),
        }
    }

    /// Signs bytes as they are, canonical or not, as a forger with a member's key could.
    fn sign_bytes(mut bytes: Vec<u8>, key: &NodeKey) -> Vec<u8> {
        let signature = key.sign(&signature_message(&bytes));
        bytes.extend_from_slice(&signature);
        bytes
    }

    fn claim_of(record: &Record) -> &Claim {
        match &record.body {
            RecordBody::Claim(claim) => claim,
            other => panic!("not a claim: {other:?}"),
        }
    }

    fn unhex_test(text: &str) -> Vec<u8> {
        unhex(text).expect("test hex")
    }

    /// A claim signed before claims named their terms (record version 1: the `claim` test
    /// vector of that version, bytes and signature as published) still decodes, to the same
    /// record id, names no terms, and encodes back to exactly its bytes.
    #[test]
    fn a_version_1_claim_still_decodes_and_names_no_terms() {
        let record_bytes = "01b344c1156a2cf798daaab0ced720b22a8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0108636c617564652d31b8a2ebe59f3400000757524b2d3636340001c0ee6d0000";
        let signature = "21ad06e5f31e4a6ecd1a47b32e7a12de85e5c27488d85bbfcfd6cca487ff778992d89c453fea366281da19bdffb3649bcf3c0ceb1b6ed6beb3adc640f1662c06";
        let mut bytes = unhex_test(record_bytes);
        bytes.extend(unhex_test(signature));
        let decoded = SignedRecord::decode(&bytes).unwrap();
        assert_eq!(decoded.id().to_string(), "458fdfd492fa26418724678a69583e95");
        assert_eq!(decoded.record().version, RECORD_VERSION_LEGACY);
        let claim = claim_of(decoded.record());
        assert!(!claim.names_terms());
        assert!(claim.requires.is_empty());
        assert_eq!(encode_record(decoded.record()).unwrap(), unhex_test(record_bytes));
        // Signed again by its key, it is the very same record.
        let key = NodeKey::from_seed([1; 32]);
        assert_eq!(SignedRecord::sign(decoded.record().clone(), &key).unwrap(), decoded);
    }

    /// Any other kind of version 1 (the published `done` vector of that version) decodes too.
    #[test]
    fn a_version_1_done_still_decodes() {
        let record_bytes = "01b344c1156a2cf798daaab0ced720b22a8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0108636c617564652d3198f7eee59f3400050757524b2d363634458fdfd492fa26418724678a69583e950a74657374732070617373";
        let signature = "53500ab778b71e9033d2443b4f8f70b13dab8730014867578b56fc6bf214fea2dc8417817db091642eca4963cca4ff407a8b44217ec7de673299b75c49dcf10b";
        let mut bytes = unhex_test(record_bytes);
        bytes.extend(unhex_test(signature));
        let decoded = SignedRecord::decode(&bytes).unwrap();
        assert_eq!(decoded.id().to_string(), "9ea62f9b310eff586e787a848f4ef1ed");
        assert!(matches!(decoded.record().body, RecordBody::Done { .. }));
    }

    /// A version-1 record cannot carry terms, and a version-2 claim must: neither signs.
    #[test]
    fn terms_go_with_version_2_claims_only() {
        let key = NodeKey::from_seed([1; 32]);
        let legacy_with_terms = Record { version: RECORD_VERSION_LEGACY, ..claim_record(&key) };
        assert!(SignedRecord::sign(legacy_with_terms, &key).is_err());
        let mut without_terms = claim_record(&key);
        if let RecordBody::Claim(claim) = &mut without_terms.body {
            claim.max_attempts = 0;
        }
        assert!(SignedRecord::sign(without_terms.clone(), &key).is_err());
        // Nor does it decode, signed as bytes by a member that skips the check.
        let bytes = sign_bytes(postcard::to_stdvec(&without_terms).unwrap(), &key);
        assert!(SignedRecord::decode(&bytes).is_err());
    }

    /// A claim's requirements have one encoding: sorted by text, no duplicates, each in its
    /// canonical text. Anything else is refused, even with a valid signature.
    #[test]
    fn a_claim_names_its_requirements_in_one_canonical_encoding() {
        let key = NodeKey::from_seed([1; 32]);
        let with = |texts: &[&str]| {
            let mut record = claim_record(&key);
            if let RecordBody::Claim(claim) = &mut record.body {
                claim.requires = texts.iter().map(|text| text.parse().unwrap()).collect();
            }
            record
        };
        for texts in [&["tool:cargo", "os=linux"][..], &["os=linux", "os=linux"]] {
            let bytes = sign_bytes(postcard::to_stdvec(&with(texts)).unwrap(), &key);
            assert!(SignedRecord::decode(&bytes).is_err(), "{texts:?}");
            assert!(SignedRecord::sign(with(texts), &key).is_err(), "{texts:?}");
        }
        // `mem>=1024M` reads as `mem>=1G`, which encodes otherwise: not canonical.
        let canonical = postcard::to_stdvec(&with(&["mem>=1G"])).unwrap();
        let short = b"mem>=1G";
        let at = canonical.windows(short.len()).position(|window| window == short).unwrap();
        let mut longer = canonical[..at - 1].to_vec();
        longer.push(10);
        longer.extend_from_slice(b"mem>=1024M");
        longer.extend_from_slice(&canonical[at + short.len()..]);
        let bytes = sign_bytes(longer, &key);
        assert_eq!(SignedRecord::decode(&bytes), Err(RecordError::Malformed("not canonically encoded")));
        // The canonical order is the texts' bytewise order.
        let unsorted = with(&["tool:cargo", "os=linux", "tool:cargo"]);
        let sorted = Claim::canonical_requirements(&claim_of(&unsorted).requires);
        let texts: Vec<String> = sorted.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["os=linux", "tool:cargo"]);
    }

    #[test]
    fn signed_records_decode_to_the_same_record_and_id() {
        let key = NodeKey::from_seed([1; 32]);
        let signed = SignedRecord::sign(claim_record(&key), &key).unwrap();
        let decoded = SignedRecord::decode(signed.bytes()).unwrap();
        assert_eq!(decoded, signed);
    }

    /// An ack is about its task and decodes back to itself, but continues no claim of its
    /// signer: it names another node's claim.
    #[test]
    fn an_ack_is_about_its_task_and_continues_no_claim() {
        let key = NodeKey::from_seed([1; 32]);
        let claim = SignedRecord::sign(claim_record(&key), &key).unwrap();
        let task = TaskId::new("WRK-664").unwrap();
        let ack = Record {
            agent: None,
            body: RecordBody::Ack { task: task.clone(), claim: claim.id(), generation: 0 },
            ..claim_record(&key)
        };
        let signed = SignedRecord::sign(ack, &key).unwrap();
        assert_eq!(SignedRecord::decode(signed.bytes()).unwrap(), signed);
        assert_eq!(signed.record().task(), Some(&task));
        assert_eq!(signed.record().claim_ref(), None);
        assert_eq!(signed.record().kind(), "ack");
    }

    /// Flipping any single byte of a signed record makes it invalid, never a different valid record.
    #[test]
    fn any_flipped_byte_is_refused() {
        let key = NodeKey::from_seed([1; 32]);
        let signed = SignedRecord::sign(claim_record(&key), &key).unwrap();
        for index in 0..signed.bytes().len() {
            let mut bytes = signed.bytes().to_vec();
            bytes[index] ^= 0x01;
            assert!(SignedRecord::decode(&bytes).is_err(), "byte {index}");
        }
    }

    #[test]
    fn truncated_extended_and_oversized_bytes_are_refused() {
        let key = NodeKey::from_seed([1; 32]);
        let signed = SignedRecord::sign(claim_record(&key), &key).unwrap();
        let bytes = signed.bytes();
        assert!(SignedRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.insert(bytes.len() - SIGNATURE_BYTES, 0);
        assert!(SignedRecord::decode(&longer).is_err());
        assert_eq!(
            SignedRecord::decode(&vec![1; RECORD_BYTES_MAX + 1]),
            Err(RecordError::TooLarge(RECORD_BYTES_MAX + 1))
        );
        assert!(SignedRecord::decode(&[]).is_err());
    }

    /// Remembering a verified id skips the signature check for exactly those bytes: a
    /// forgery of the same record has other bytes, so another id, and is still checked.
    #[test]
    fn a_remembered_id_skips_the_signature_check_only_for_the_same_bytes() {
        let key = NodeKey::from_seed([1; 32]);
        let signed = SignedRecord::sign(claim_record(&key), &key).unwrap();
        let remembered = signed.id();
        let again = SignedRecord::decode_unless_verified(signed.bytes(), |id| *id == remembered).unwrap();
        assert_eq!(again, signed);
        let mut forged = signed.bytes().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let checked = SignedRecord::decode_unless_verified(&forged, |id| *id == remembered);
        assert_eq!(checked, Err(RecordError::BadSignature));
    }

    /// A record signed by one key but naming another signer fails verification.
    #[test]
    fn forged_signer_is_refused() {
        let honest = NodeKey::from_seed([1; 32]);
        let forger = NodeKey::from_seed([2; 32]);
        let record = claim_record(&honest);
        let mut bytes = encode_record(&record).unwrap();
        let signature = forger.sign(&signature_message(&bytes));
        bytes.extend_from_slice(&signature);
        assert_eq!(SignedRecord::decode(&bytes), Err(RecordError::BadSignature));
    }
}
