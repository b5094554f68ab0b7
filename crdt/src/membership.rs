//! Who belongs to the mesh, derived from signed membership records.
//!
//! The founder's record is self-certifying (the mesh id is a hash of the founder's key and
//! founding stamp); every later record counts only if its signer was a member at its stamp.
//! Records a node signs after its removal do not count.

use std::collections::BTreeMap;

use meshwork_protocol::record::{MembershipAction, RecordBody};
use meshwork_protocol::{MeshId, NodeId, SignedRecord, Stamp};
use serde::{Deserialize, Serialize};

/// A member's intervals of membership and the facts shown about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    pub name: String,
    pub roles: Vec<String>,
    pub added_by: NodeId,
    pub added_at: Stamp,
    /// `[from, until)` stamps; `until` is `None` while the node is a member.
    pub intervals: Vec<(Stamp, Option<Stamp>)>,
}

impl Member {
    pub fn is_current(&self) -> bool {
        self.intervals.last().is_some_and(|(_, until)| until.is_none())
    }
}

/// The members of one mesh, as the membership records say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSet {
    /// The mesh these members belong to; records of any other mesh count for nothing.
    mesh: Option<MeshId>,
    members: BTreeMap<NodeId, Member>,
    /// Membership records that did not count (wrong mesh, signer not a member, ...).
    pub rejected: u32,
}

impl MemberSet {
    /// Derives the members from every membership record of the document, in any order.
    pub fn derive(mesh: MeshId, records: &[SignedRecord]) -> MemberSet {
        let mut ordered: Vec<&SignedRecord> = records.iter().collect();
        // One order on every node: by stamp, then by record id.
        ordered.sort_by_key(|signed| (signed.record().stamp, signed.id()));
        let mut set = MemberSet { mesh: Some(mesh), ..MemberSet::default() };
        for signed in ordered {
            if !set.apply(mesh, signed) {
                set.rejected += 1;
            }
        }
        set
    }

    fn apply(&mut self, mesh: MeshId, signed: &SignedRecord) -> bool {
        let record = signed.record();
        let RecordBody::Membership(membership) = &record.body else { return false };
        if record.mesh != mesh {
            return false;
        }
        let is_founding = self.members.is_empty()
            && membership.action == MembershipAction::Add
            && membership.member == record.signer
            && MeshId::derive(&record.signer, record.stamp.wall_ms) == mesh;
        if !is_founding && !self.is_member_at(&record.signer, record.stamp) {
            return false;
        }
        match membership.action {
            MembershipAction::Add => {
                let member = self.members.entry(membership.member).or_insert_with(|| Member {
                    node: membership.member,
                    name: membership.name.clone(),
                    roles: membership.roles.clone(),
                    added_by: record.signer,
                    added_at: record.stamp,
                    intervals: Vec::new(),
                });
                if !member.is_current() {
                    member.intervals.push((record.stamp, None));
                }
                member.name = membership.name.clone();
                member.roles = membership.roles.clone();
            }
            MembershipAction::Remove => {
                let Some(member) = self.members.get_mut(&membership.member) else { return false };
                if let Some((_, until @ None)) = member.intervals.last_mut() {
                    *until = Some(record.stamp);
                }
            }
        }
        true
    }

    /// Whether a record counts here: of this mesh, signed by a member at its stamp.
    pub fn admits(&self, record: &meshwork_protocol::Record) -> bool {
        self.mesh == Some(record.mesh) && self.is_member_at(&record.signer, record.stamp)
    }

    /// Whether `node` was a member at `stamp` (the stamp of a record it signed).
    pub fn is_member_at(&self, node: &NodeId, stamp: Stamp) -> bool {
        self.members.get(node).is_some_and(|member| {
            member.intervals.iter().any(|(from, until)| *from <= stamp && until.is_none_or(|until| stamp < until))
        })
    }

    /// The members at `stamp`, by node id: the electorate of a claim made then.
    pub fn at(&self, stamp: Stamp) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied().filter(move |node| self.is_member_at(node, stamp))
    }

    /// How many nodes were members at `stamp`.
    pub fn count_at(&self, stamp: Stamp) -> usize {
        self.at(stamp).count()
    }

    pub fn get(&self, node: &NodeId) -> Option<&Member> {
        self.members.get(node)
    }

    /// Current members, by node id.
    pub fn current(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|member| member.is_current())
    }

    /// The human name of a node, or its id when it never was a member.
    pub fn name_of(&self, node: &NodeId) -> String {
        self.members.get(node).map_or_else(|| node.to_string(), |member| member.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{founding_record, membership_record, node_key};

    /// The founder is a member from its founding stamp; a node it adds joins later; a removed
    /// node stops counting at the removal stamp.
    #[test]
    fn membership_follows_add_and_remove_records() {
        let founder = node_key(1);
        let joiner = node_key(2);
        let (mesh, founding) = founding_record(&founder, 1000);
        let added = membership_record(&founder, mesh, 2000, MembershipAction::Add, &joiner);
        let removed = membership_record(&founder, mesh, 3000, MembershipAction::Remove, &joiner);
        let set = MemberSet::derive(mesh, &[removed, added, founding]);
        let at = |wall_ms| Stamp { wall_ms, logical: 0 };
        assert!(set.is_member_at(&founder.node_id(), at(1000)));
        assert!(!set.is_member_at(&joiner.node_id(), at(1999)));
        assert!(set.is_member_at(&joiner.node_id(), at(2500)));
        assert!(!set.is_member_at(&joiner.node_id(), at(3000)));
        assert_eq!(set.rejected, 0);
    }

    /// A node that is not a member cannot add itself or others, and a founding record for a
    /// mesh id it does not hash to counts for nothing.
    #[test]
    fn outsiders_cannot_add_members() {
        let founder = node_key(1);
        let outsider = node_key(3);
        let (mesh, founding) = founding_record(&founder, 1000);
        let self_added = membership_record(&outsider, mesh, 2000, MembershipAction::Add, &outsider);
        let (_, foreign_founding) = founding_record(&outsider, 500);
        let set = MemberSet::derive(mesh, &[founding, self_added, foreign_founding]);
        assert!(!set.is_member_at(&outsider.node_id(), Stamp { wall_ms: 5000, logical: 0 }));
        assert_eq!(set.rejected, 2);
    }
}
