//! A replica: the document, the state derived from it, and this node's clock.
//!
//! The derived state is a cache of pure functions of the document: members and probes from
//! their records, each task's [`TaskState`] from [`resolve`]. After any change the touched
//! tasks are resolved again; a membership or probe change resolves every task again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::record::{Membership, MembershipAction, RECORD_VERSION};
use meshwork_protocol::{
    AgentName, Hlc, MeshId, NodeId, NodeKey, Record, RecordBody, RecordId, SignedRecord, Stamp, TaskId,
};

use crate::derived_cache::{CacheUse, DerivedCache, DerivedState, DerivedStateRef};
use crate::document::{DocError, QueueDoc, SCHEMA_VERSION, Touched, actor_for, node_record_key};
use crate::membership::MemberSet;
use crate::probes::ProbeBook;
use crate::ready::{self, ReadyInput};
use crate::resolve::{Holder, ResolveContext, StoredRecord, TaskEntry, claim_terms, resolve, sabotage};
use crate::task::TaskFields;

/// Why [`Replica::sign`] could not sign a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("the document has no mesh id; run `meshwork init`")]
    NoMesh,
    #[error("could not sign a record: {0}")]
    Record(String),
}

/// The queue as one node holds it.
#[derive(Debug)]
pub struct Replica {
    doc: QueueDoc,
    node: NodeId,
    mesh: Option<MeshId>,
    hlc: Hlc,
    members: MemberSet,
    probes: ProbeBook,
    tasks: BTreeMap<TaskId, TaskEntry>,
    /// The newest stamp on any record of the document this node signed.
    own_stamp_max: Stamp,
    /// Records whose signature verified once: a record id is a hash of its signed bytes, so
    /// the check need not run again for the same id (a task's records are read again after
    /// every change to it).
    verified: BTreeSet<RecordId>,
    /// Membership entries that did not decode.
    undecodable_members: u32,
    /// Probe entries that did not decode.
    undecodable_probes: u32,
}

/// The founding of a new mesh: the replica and the changes to persist.
#[derive(Debug)]
pub struct Founded {
    pub replica: Replica,
    pub changes: Vec<Vec<u8>>,
}

impl Replica {
    /// Creates a mesh of one: the genesis change, then a change with the mesh's meta and
    /// the founder's self-signed membership record.
    pub fn found(key: &NodeKey, boot: u32, node_name: &str, mesh_name: &str, now_ms: u64) -> Result<Founded, DocError> {
        let mut doc = QueueDoc::genesis();
        let genesis = doc.save();
        doc.set_actor(actor_for(&key.node_id(), boot));
        let mut hlc = Hlc::default();
        let stamp = hlc.now(now_ms);
        let mesh = MeshId::derive(&key.node_id(), stamp.wall_ms);
        let membership = Membership {
            action: MembershipAction::Add,
            member: key.node_id(),
            name: node_name.to_owned(),
            roles: vec!["founder".to_owned()],
        };
        let record = Record {
            version: RECORD_VERSION,
            mesh,
            signer: key.node_id(),
            agent: None,
            stamp,
            body: RecordBody::Membership(membership),
        };
        let signed = SignedRecord::sign(record, key).map_err(|_| DocError::NoGenesis("members"))?;
        let founding = doc.change(now_ms, "found mesh", |tx, maps| {
            use automerge::transaction::Transactable;
            tx.put(&maps.meta, "schema", SCHEMA_VERSION)?;
            tx.put(&maps.meta, "mesh_id", mesh.to_string())?;
            tx.put(&maps.meta, "mesh_name", mesh_name)?;
            tx.put(&maps.members, node_record_key(&key.node_id(), signed.id()), signed.bytes().to_vec())?;
            Ok(())
        })?;
        let replica = Replica::open(key.node_id(), boot, doc);
        Ok(Founded { replica, changes: vec![genesis, founding] })
    }

    /// Wraps a loaded document for this node's boot and derives every task's state.
    pub fn open(node: NodeId, boot: u32, doc: QueueDoc) -> Replica {
        Replica::open_with_verified(node, boot, doc, BTreeSet::new())
    }

    /// [`Replica::open`], trusting that the records in `verified` were verified before (by
    /// this node, as its verified-records cache says), so their signatures are not checked
    /// again.
    pub fn open_with_verified(node: NodeId, boot: u32, doc: QueueDoc, verified: BTreeSet<RecordId>) -> Replica {
        Replica::open_with_cache(node, boot, doc, verified, None).0
    }

    /// [`Replica::open_with_verified`], taking the derived state from `cache` when it was
    /// derived from this very document (the same heads, so the same changes) and deriving
    /// everything otherwise. The cache was decoded for this node and build
    /// ([`DerivedCacheFile::open`]).
    pub fn open_with_cache(
        node: NodeId,
        boot: u32,
        mut doc: QueueDoc,
        verified: BTreeSet<RecordId>,
        cache: Option<DerivedCache>,
    ) -> (Replica, CacheUse) {
        doc.set_actor(actor_for(&node, boot));
        let mut replica = Replica {
            doc,
            node,
            mesh: None,
            hlc: Hlc::default(),
            members: MemberSet::default(),
            probes: ProbeBook::default(),
            tasks: BTreeMap::new(),
            own_stamp_max: Stamp::default(),
            verified,
            undecodable_members: 0,
            undecodable_probes: 0,
        };
        let used = match cache {
            None => CacheUse::Absent,
            Some(cache) if replica.fits(&cache) => {
                replica.take_derived(cache.state);
                CacheUse::Used
            }
            Some(_) => CacheUse::OtherDocument,
        };
        if used != CacheUse::Used {
            replica.rebuild();
        }
        // The clock restarts after the newest stamp this node ever signed, so its stamps never
        // run backwards across restarts even if the wall clock did.
        replica.hlc = Hlc::starting_after(replica.own_stamp_max);
        (replica, used)
    }

    /// Whether a cache was derived from this replica's document: the same heads. The mesh id
    /// is checked as well, a cheap second look at the one fact every other one hangs on.
    fn fits(&self, cache: &DerivedCache) -> bool {
        let mesh = self.doc.meta_str("mesh_id").and_then(|text| text.parse::<MeshId>().ok());
        cache.is_of(&self.doc.heads()) && cache.state.mesh == mesh
    }

    fn take_derived(&mut self, state: DerivedState) {
        self.mesh = state.mesh;
        self.members = state.members;
        self.probes = state.probes;
        self.tasks = state.tasks;
        self.own_stamp_max = state.own_stamp_max;
        self.undecodable_members = state.undecodable_members;
        self.undecodable_probes = state.undecodable_probes;
    }

    /// The derived-state cache of this replica: everything [`Replica::rebuild`] derives, keyed
    /// by the document's heads now. Every change reaches the document through this replica,
    /// which refreshes what it touched, so the state is that of exactly these heads.
    pub fn encode_derived_cache(&self) -> Result<Vec<u8>, meshwork_protocol::derived_cache::DerivedCacheError> {
        let state = DerivedStateRef {
            mesh: self.mesh,
            members: &self.members,
            probes: &self.probes,
            tasks: &self.tasks,
            own_stamp_max: self.own_stamp_max,
            undecodable_members: self.undecodable_members,
            undecodable_probes: self.undecodable_probes,
            highest_boot: self.doc.highest_boot_of(&self.node),
        };
        DerivedCache::encode(&self.node, &self.doc.heads(), &state)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn mesh(&self) -> Option<MeshId> {
        self.mesh
    }

    pub fn doc(&self) -> &QueueDoc {
        &self.doc
    }

    pub fn doc_mut(&mut self) -> &mut QueueDoc {
        &mut self.doc
    }

    pub fn members(&self) -> &MemberSet {
        &self.members
    }

    pub fn probes(&self) -> &ProbeBook {
        &self.probes
    }

    pub fn tasks(&self) -> &BTreeMap<TaskId, TaskEntry> {
        &self.tasks
    }

    pub fn task(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.tasks.get(id)
    }

    /// A fresh stamp from this node's clock.
    pub fn stamp(&mut self, now_ms: u64) -> Stamp {
        self.hlc.now(now_ms)
    }

    /// Records ignored everywhere in the document: forged, malformed, from non-members.
    pub fn rejected_records(&self) -> u64 {
        let tasks: u64 = self.tasks.values().map(|entry| u64::from(entry.state.rejected)).sum();
        let undecodable = u64::from(self.undecodable_members) + u64::from(self.undecodable_probes);
        tasks + u64::from(self.members.rejected) + u64::from(self.probes.rejected) + undecodable
    }

    /// Signs a record in this node's name, stamped now.
    pub fn sign(
        &mut self,
        key: &NodeKey,
        agent: Option<AgentName>,
        body: RecordBody,
        now_ms: u64,
    ) -> Result<SignedRecord, SignError> {
        assert_eq!(key.node_id(), self.node, "a replica signs with its own node key");
        let mesh = self.mesh.ok_or(SignError::NoMesh)?;
        let record =
            Record { version: RECORD_VERSION, mesh, signer: self.node, agent, stamp: self.hlc.now(now_ms), body };
        SignedRecord::sign(record, key).map_err(|error| SignError::Record(error.to_string()))
    }

    /// Applies changes from storage or a peer and refreshes what they touched.
    pub fn apply_changes(&mut self, bytes: &[u8], now_ms: u64) -> Result<Touched, DocError> {
        let touched = self.doc.apply(bytes)?;
        self.refresh(&touched, now_ms);
        Ok(touched)
    }

    /// Refreshes the derived state after the document changed.
    pub fn refresh(&mut self, touched: &Touched, now_ms: u64) {
        if touched.members || touched.meta {
            self.rebuild();
        } else {
            if touched.probes {
                self.refresh_probes();
            }
            for id in &touched.tasks {
                self.refresh_task(id);
            }
        }
        for id in &touched.tasks {
            if let Some(entry) = self.tasks.get(id) {
                self.hlc.observe(entry.state.updated_at, now_ms);
            }
        }
    }

    /// Derives everything again from the document. Everything it sets is kept in the
    /// derived-state cache (`derived_cache.rs`): a new derived field goes there too, with a
    /// new `DERIVED_STATE_VERSION`.
    pub fn rebuild(&mut self) {
        self.mesh = self.doc.meta_str("mesh_id").and_then(|text| text.parse().ok());
        let maps = self.doc.maps().clone();
        let (members, bad_members) = self.doc.read_flat_records(&maps.members);
        let (probes, bad_probes) = self.doc.read_flat_records(&maps.probes);
        (self.undecodable_members, self.undecodable_probes) = (bad_members, bad_probes);
        let own = |records: &[SignedRecord]| -> Stamp {
            let signed_here = records.iter().filter(|signed| signed.record().signer == self.node);
            signed_here.map(|signed| signed.record().stamp).max().unwrap_or_default()
        };
        self.own_stamp_max = own(&members).max(own(&probes));
        self.members = self.mesh.map(|mesh| MemberSet::derive(mesh, &members)).unwrap_or_default();
        self.probes = ProbeBook::derive(&probes, &self.members);
        self.tasks.clear();
        let context = ResolveContext { members: &self.members, probes: &self.probes };
        // Records are read task by task, so only one task's decoded records are alive at once.
        for fields in self.doc.read_tasks_in(..) {
            let stored = self.doc.read_task_records_verified(&fields.id, &self.verified);
            remember_records(&mut self.verified, &mut self.own_stamp_max, self.node, &stored);
            let state = resolve(&fields, &stored, context);
            self.tasks.insert(fields.id.clone(), TaskEntry::new(fields, state));
        }
    }

    /// Probes changed: only tasks whose claims name requirements (or, for a claim of record
    /// version 1, whose fields do) consult probes, so only they are resolved again (their
    /// fields did not change).
    fn refresh_probes(&mut self) {
        let maps = self.doc.maps().clone();
        let (probes, bad_probes) = self.doc.read_flat_records(&maps.probes);
        self.undecodable_probes = bad_probes;
        // Records are never removed, so the newest own stamp only grows: the same as a rebuild.
        let own =
            probes.iter().filter(|signed| signed.record().signer == self.node).map(|signed| signed.record().stamp);
        self.own_stamp_max = own.fold(self.own_stamp_max, Stamp::max);
        self.probes = ProbeBook::derive(&probes, &self.members);
        let gated: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|entry| {
                let fields = &entry.fields;
                entry.state.claims.values().any(|claim| !claim_terms(fields, &claim.claim).requires.is_empty())
            })
            .map(|entry| entry.fields.id.clone())
            .collect();
        let context = ResolveContext { members: &self.members, probes: &self.probes };
        for id in gated {
            let stored = self.doc.read_task_records_verified(&id, &self.verified);
            if let Some(entry) = self.tasks.get_mut(&id) {
                entry.state = resolve(&entry.fields, &stored, context);
                entry.json.forget();
            }
        }
    }

    fn refresh_task(&mut self, id: &TaskId) {
        let Some(fields) = self.doc.read_task(id) else {
            self.tasks.remove(id);
            return;
        };
        let stored = self.doc.read_task_records_verified(id, &self.verified);
        remember_records(&mut self.verified, &mut self.own_stamp_max, self.node, &stored);
        let context = ResolveContext { members: &self.members, probes: &self.probes };
        let state = resolve(&fields, &stored, context);
        self.tasks.insert(id.clone(), TaskEntry::new(fields, state));
    }

    /// The ids of every record whose signature verified, for the verified-records cache.
    pub fn verified_records(&self) -> impl Iterator<Item = &RecordId> {
        self.verified.iter()
    }

    /// A record this node just signed needs no check when it is read back.
    pub(crate) fn note_signed(&mut self, signed: &SignedRecord) {
        self.verified.insert(signed.id());
    }

    /// Takes in a task this node just created, without reading it back from the document
    /// (a fresh task has no records yet, so its state needs nothing else).
    pub(crate) fn insert_created(&mut self, fields: TaskFields) {
        debug_assert_eq!(
            self.doc.read_task(&fields.id).as_ref(),
            Some(&fields),
            "a created task reads back as written"
        );
        let context = ResolveContext { members: &self.members, probes: &self.probes };
        let state = resolve(&fields, &[], context);
        self.tasks.insert(fields.id.clone(), TaskEntry::new(fields, state));
    }

    pub fn status_of(&self, id: &TaskId) -> Option<TaskStatus> {
        self.tasks.get(id).map(|entry| entry.state.status)
    }

    /// Whether a task is ready for any machine, by the records alone.
    pub fn is_ready(&self, entry: &TaskEntry) -> bool {
        ready::is_ready(self.ready_input(entry), |id| self.status_of(id))
    }

    pub fn blocked_by(&self, entry: &TaskEntry) -> Vec<TaskId> {
        ready::blocked_by(&entry.fields.depends_on, |id| self.status_of(id))
    }

    /// Ready tasks in claim order: highest priority, then oldest, then id. Readiness by the
    /// records alone: stale tasks are not here ([`Replica::ready_tasks_at`]).
    pub fn ready_tasks(&self) -> Vec<&TaskEntry> {
        in_claim_order(self.tasks.values().filter(|entry| self.is_ready(entry)))
    }

    /// The holder of a task that is stale at `now_ms`: claimed, and its holder's lease, as
    /// last renewed in the records, ended before `now_ms` ([`ready::is_stale`]). `None` for a
    /// task that is not claimed or whose lease still holds.
    pub fn stale_holder<'a>(&self, entry: &'a TaskEntry, now_ms: u64) -> Option<&'a Holder> {
        entry.state.holder.as_ref().filter(|holder| ready::is_stale(holder.lease_until_ms, now_ms))
    }

    /// Tasks an agent may claim at `now_ms`, in claim order (highest priority, then oldest,
    /// then id): the ready ones and the stale ones whose dependencies are done and approval
    /// given. A stale task is ordered like an open one, so abandoned work of high priority
    /// goes before fresh work of lower priority and, within a priority, waits its turn by age
    /// like any other: it never starves. `claim` of a stale task is a takeover.
    pub fn ready_tasks_at(&self, now_ms: u64) -> Vec<&TaskEntry> {
        let ready = self.tasks.values().filter(|entry| {
            let stale = self.stale_holder(entry, now_ms).is_some()
                && !sabotage::is_broken(sabotage::BrokenRule::StaleNotOffered);
            ready::is_claimable(self.ready_input(entry), stale, |id| self.status_of(id))
        });
        in_claim_order(ready)
    }

    /// Every task stale at `now_ms`, in id order (`task list --stale`), whether or not its
    /// dependencies are done.
    pub fn stale_tasks(&self, now_ms: u64) -> Vec<&TaskEntry> {
        self.tasks.values().filter(|entry| self.stale_holder(entry, now_ms).is_some()).collect()
    }

    fn ready_input<'a>(&self, entry: &'a TaskEntry) -> ReadyInput<'a> {
        ReadyInput {
            status: entry.state.status,
            depends_on: &entry.fields.depends_on,
            needs_approval: entry.fields.needs_approval,
            approved: entry.state.approved,
        }
    }

    /// The name members know a node by.
    pub fn node_name(&self, node: &NodeId) -> String {
        self.members.name_of(node)
    }
}

/// `entries` in claim order: highest priority, then oldest, then id.
///
/// The sort keys are copied out of the entries first: comparing through the entries, each a
/// kilobyte apart, cost a cache miss per comparison (docs/BENCHMARKS.md, "CLI calls").
fn in_claim_order<'a>(entries: impl Iterator<Item = &'a TaskEntry>) -> Vec<&'a TaskEntry> {
    let mut keyed: Vec<(Reverse<i64>, Stamp, &TaskEntry)> =
        entries.map(|entry| (Reverse(entry.fields.priority), entry.fields.created_at, entry)).collect();
    keyed.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| a.2.fields.id.cmp(&b.2.fields.id)));
    keyed.into_iter().map(|(_, _, entry)| entry).collect()
}

/// Notes the valid records of a task just read: their ids as verified, and the newest stamp
/// among those this node signed (records are never removed, so it only grows, as a rebuild
/// would find it).
fn remember_records(
    verified: &mut BTreeSet<RecordId>,
    own_stamp_max: &mut Stamp,
    node: NodeId,
    stored: &[StoredRecord],
) {
    for record in stored {
        if let StoredRecord::Valid(signed) = record {
            verified.insert(signed.id());
            if signed.record().signer == node {
                *own_stamp_max = (*own_stamp_max).max(signed.record().stamp);
            }
        }
    }
}
