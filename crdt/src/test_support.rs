//! Builders shared by the crate's tests and benchmarks: keys, meshes and signed records.

use std::collections::BTreeSet;

use meshwork_protocol::record::{Membership, MembershipAction, RECORD_VERSION};
use meshwork_protocol::{MeshId, NodeKey, Record, RecordBody, SignedRecord, Stamp, TaskId};

use crate::membership::MemberSet;
use crate::task::TaskFields;

/// A mesh of three members and one task, for the resolver's tests.
#[derive(Debug)]
pub struct ThreeMembers {
    /// Keys 0 to 2 are members (0 founded the mesh at 1,000 ms, it added 1 and 2 at
    /// 2,000 ms); key 3 is never added: an outsider.
    pub keys: Vec<NodeKey>,
    pub mesh: MeshId,
    pub members: MemberSet,
    /// Task `task`, created by key 0 at 3,000 ms with the given lease, 3 attempts.
    pub fields: TaskFields,
}

/// Builds [`ThreeMembers`] with a task of id `task`.
pub fn three_members(task: &str, lease_ms: u64) -> ThreeMembers {
    let keys: Vec<NodeKey> = (1..=4).map(node_key).collect();
    let (mesh, founding) = founding_record(&keys[0], 1_000);
    let mut membership = vec![founding];
    for key in &keys[1..3] {
        membership.push(membership_record(&keys[0], mesh, 2_000, MembershipAction::Add, key));
    }
    let members = MemberSet::derive(mesh, &membership);
    let fields = TaskFields {
        id: TaskId::new(task).unwrap_or_else(|error| panic!("{error}")),
        title: "t".into(),
        description: String::new(),
        priority: 0,
        labels: vec![],
        depends_on: BTreeSet::new(),
        requires: vec![],
        prefers: vec![],
        checks: vec![],
        files: vec![],
        lease_ms,
        max_attempts: 3,
        needs_approval: false,
        created_by: keys[0].node_id(),
        created_at: Stamp { wall_ms: 3_000, logical: 0 },
        id_conflicts: vec![],
    };
    ThreeMembers { keys, mesh, members, fields }
}

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
