//! Every signed probe of the document, by record id, so a claim is judged against the very
//! probe it names.

use std::collections::BTreeMap;

use meshwork_protocol::record::RecordBody;
use meshwork_protocol::{NodeId, Probe, RecordId, SignedRecord, Stamp};
use serde::{Deserialize, Serialize};

use crate::membership::MemberSet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEntry {
    pub node: NodeId,
    pub stamp: Stamp,
    pub probe: Probe,
}

/// The probes of all members, old ones included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeBook {
    by_id: BTreeMap<RecordId, ProbeEntry>,
    /// The newest probe of each node.
    latest: BTreeMap<NodeId, RecordId>,
    pub rejected: u32,
}

impl ProbeBook {
    /// Builds the book from probe records; records not signed by a member at their stamp
    /// are counted and left out.
    pub fn derive(records: &[SignedRecord], members: &MemberSet) -> ProbeBook {
        let mut book = ProbeBook::default();
        for signed in records {
            let record = signed.record();
            let RecordBody::Probe(probe) = &record.body else {
                book.rejected += 1;
                continue;
            };
            if !members.admits(record) {
                book.rejected += 1;
                continue;
            }
            book.by_id
                .insert(signed.id(), ProbeEntry { node: record.signer, stamp: record.stamp, probe: probe.clone() });
        }
        // The newest probe of each node: highest stamp, ties to the higher record id.
        let mut latest: BTreeMap<NodeId, (Stamp, RecordId)> = BTreeMap::new();
        for (id, entry) in &book.by_id {
            let candidate = (entry.stamp, *id);
            let slot = latest.entry(entry.node).or_insert(candidate);
            *slot = (*slot).max(candidate);
        }
        book.latest = latest.into_iter().map(|(node, (_, id))| (node, id)).collect();
        book
    }

    pub fn get(&self, id: &RecordId) -> Option<&ProbeEntry> {
        self.by_id.get(id)
    }

    /// The newest probe a node published, with its record id.
    pub fn latest(&self, node: &NodeId) -> Option<(RecordId, &ProbeEntry)> {
        let id = self.latest.get(node)?;
        Some((*id, self.by_id.get(id)?))
    }
}
