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
    FIELD_BYTES_MAX, LEASE_MS_MAX, LEASE_MS_MIN, LIST_ITEMS_MAX, MESSAGE_BYTES_MAX, NAME_BYTES_MAX, RECORD_BYTES_MAX,
};
use crate::probe::Probe;
use crate::task_id::TaskId;

/// The version byte every record encoding starts with.
pub const RECORD_VERSION: u8 = 1;
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
    /// Always [`RECORD_VERSION`]; a decoder refuses any other.
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

/// An attempt to hold a task for one generation.
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
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion(version));
        }
        let record: Record = postcard::from_bytes(record_bytes).map_err(|_| RecordError::Malformed("undecodable"))?;
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
    postcard::to_stdvec(record).map_err(|_| RecordError::Malformed("unencodable"))
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
            RecordBody::Claim(claim) => (LEASE_MS_MIN..=LEASE_MS_MAX).contains(&claim.lease_ms),
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
            }),
        }
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
