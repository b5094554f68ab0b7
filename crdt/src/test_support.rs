//! Builders shared by the crate's tests and benchmarks: keys, meshes and signed records.

use meshwork_protocol::record::{Membership, MembershipAction, RECORD_VERSION};
use meshwork_protocol::{MeshId, NodeKey, Record, RecordBody, SignedRecord, Stamp};

/// A deterministic node key from a small number.
pub fn node_key(seed: u8) -> NodeKey {
    NodeKey::from_seed([seed; 32])
}

/// The self-signed founding record of a mesh founded by `key` at `wall_ms`.
pub fn founding_record(key: &NodeKey, wall_ms: u64) -> (MeshId, SignedRecord) {
    let mesh = MeshId::derive(&key.node_id(), wall_ms);
    (mesh, membership_record(key, mesh, wall_ms, MembershipAction::Add, key))
}

/// A membership record signed by `signer` about `member`.
pub fn membership_record(
    signer: &NodeKey,
    mesh: MeshId,
    wall_ms: u64,
    action: MembershipAction,
    member: &NodeKey,
) -> SignedRecord {
    let name = format!("node-{}", &member.node_id().to_string()[..12]);
    let body = RecordBody::Membership(Membership { action, member: member.node_id(), name, roles: Vec::new() });
    signed(signer, mesh, Stamp { wall_ms, logical: 0 }, None, body)
}

/// Signs any record body for tests.
pub fn signed(key: &NodeKey, mesh: MeshId, stamp: Stamp, agent: Option<&str>, body: RecordBody) -> SignedRecord {
    let record = Record {
        version: RECORD_VERSION,
        mesh,
        signer: key.node_id(),
        agent: agent.map(|name| meshwork_protocol::AgentName::new(name).unwrap_or_else(|error| panic!("{error}"))),
        stamp,
        body,
    };
    SignedRecord::sign(record, key).unwrap_or_else(|error| panic!("test record must sign: {error}"))
}
