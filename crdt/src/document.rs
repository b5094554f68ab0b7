//! The queue document on Automerge: its genesis, and typed reads and writes over the layout
//! that `layout.rs` names.
//!
//! Records sit under flat composite keys, not in per-task maps, so that two nodes creating
//! the same task id offline can never hide each other's records (invariant 3, nothing lost).

use std::collections::BTreeSet;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{
    ActorId, Automerge, AutomergeError, ChangeHash, ObjId, ObjType, Patch, PatchAction, PatchLog, Prop, ROOT, ReadDoc,
};
use meshwork_protocol::{NodeId, RecordId, SignedRecord, TaskId};
use sha2::{Digest, Sha256};

use crate::fields::NodeIdCache;
use crate::layout::{TOP_LEVEL_MAPS, TopMaps};
use crate::resolve::StoredRecord;
use crate::task::TaskFields;

/// Actor of the genesis change: the same bytes on every node, so the change is identical.
pub const GENESIS_ACTOR: &[u8; 16] = b"meshwork-genesis";
/// Version of the document layout, in `meta.schema`.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    #[error("the document could not be loaded: {0}")]
    Load(#[source] AutomergeError),
    #[error("the document lacks the genesis map {0:?}; it is not a meshwork queue")]
    NoGenesis(&'static str),
    #[error("automerge refused a change: {0}")]
    Automerge(#[from] AutomergeError),
    #[error("the document has layout version {found}, newer than this meshwork reads ({supported}); upgrade meshwork")]
    NewerSchema { found: u64, supported: u64 },
}

/// The Automerge document of one mesh.
#[derive(Debug)]
pub struct QueueDoc {
    doc: Automerge,
    maps: TopMaps,
}

/// The actor id of a node's boot: 12 bytes of a hash of the node key, then the boot counter.
/// A fresh boot number per start means a node never reuses an actor id after a crash.
pub fn actor_for(node: &NodeId, boot: u32) -> ActorId {
    let mut hasher = Sha256::new();
    hasher.update(b"meshwork-actor-v1\0");
    hasher.update(node.public_key_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes[..12].copy_from_slice(&digest[..12]);
    bytes[12..].copy_from_slice(&boot.to_be_bytes());
    ActorId::from(bytes.as_slice())
}

/// The boot counter in an actor id of this node, if the actor is one of its boots.
pub fn boot_of(node: &NodeId, actor: &ActorId) -> Option<u32> {
    let ours = actor_for(node, 0);
    let bytes = actor.to_bytes();
    (bytes.len() == 16 && bytes[..12] == ours.to_bytes()[..12])
        .then(|| u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]))
}

impl QueueDoc {
    /// A document holding only the genesis change.
    pub fn genesis() -> QueueDoc {
        let mut doc = Automerge::new().with_actor(ActorId::from(GENESIS_ACTOR.as_slice()));
        let mut tx = doc.transaction();
        for name in TOP_LEVEL_MAPS {
            // A fresh transaction on an empty document: putting a map at the root cannot fail.
            if tx.put_object(ROOT, name, ObjType::Map).is_err() {
                unreachable!("genesis put_object on an empty document");
            }
        }
        tx.commit_with(CommitOptions::default().with_time(0).with_message("meshwork genesis".to_owned()));
        match QueueDoc::from_automerge(doc) {
            Ok(queue) => queue,
            Err(_) => unreachable!("the genesis document has every top-level map"),
        }
    }

    /// The genesis change's bytes, identical on every node.
    pub fn genesis_bytes() -> Vec<u8> {
        QueueDoc::genesis().doc.save()
    }

    /// Loads a snapshot and incremental chunks. Chunks that fail to load are skipped and
    /// returned by index so the caller can report them; the rest still load.
    pub fn load(snapshot: Option<&[u8]>, chunks: &[Vec<u8>]) -> Result<(QueueDoc, Vec<(usize, String)>), DocError> {
        let mut doc = match snapshot {
            Some(bytes) => Automerge::load(bytes).map_err(DocError::Load)?,
            None => Automerge::load(&QueueDoc::genesis_bytes()).map_err(DocError::Load)?,
        };
        if snapshot.is_some() && doc.get(ROOT, "tasks").ok().flatten().is_none() {
            doc.load_incremental(&QueueDoc::genesis_bytes()).map_err(DocError::Load)?;
        }
        let mut skipped = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            if let Err(error) = doc.load_incremental(chunk) {
                skipped.push((index, error.to_string()));
            }
        }
        Ok((QueueDoc::from_automerge(doc)?, skipped))
    }

    /// Wraps a document after checking that it descends from the genesis change.
    pub fn from_automerge(doc: Automerge) -> Result<QueueDoc, DocError> {
        let map = |name: &'static str| -> Result<ObjId, DocError> {
            match doc.get(ROOT, name) {
                Ok(Some((automerge::Value::Object(ObjType::Map), id))) => Ok(id),
                _ => Err(DocError::NoGenesis(name)),
            }
        };
        let maps = TopMaps {
            meta: map("meta")?,
            members: map("members")?,
            probes: map("probes")?,
            tasks: map("tasks")?,
            records: map("records")?,
            leases: map("leases")?,
            inbox: map("inbox")?,
        };
        Ok(QueueDoc { doc, maps })
    }

    pub fn set_actor(&mut self, actor: ActorId) {
        self.doc.set_actor(actor);
    }

    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    pub fn automerge_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }

    pub fn maps(&self) -> &TopMaps {
        &self.maps
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Makes one change (one user action is one change) and returns its bytes for storage.
    /// Nothing is written when `edit` fails.
    pub fn change<F>(&mut self, time_ms: u64, message: &str, edit: F) -> Result<Vec<u8>, DocError>
    where
        F: FnOnce(&mut Transaction<'_>, &TopMaps) -> Result<(), AutomergeError>,
    {
        let heads_before = self.doc.get_heads();
        let mut tx = self.doc.transaction();
        if let Err(error) = edit(&mut tx, &self.maps) {
            tx.rollback();
            return Err(DocError::Automerge(error));
        }
        let time = i64::try_from(time_ms / 1000).unwrap_or(i64::MAX);
        tx.commit_with(CommitOptions::default().with_time(time).with_message(message.to_owned()));
        Ok(self.doc.save_after(&heads_before))
    }

    /// Applies bytes of changes (a chunk from storage or a peer). Returns what they touched.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<Touched, DocError> {
        let mut log = PatchLog::active();
        self.doc.load_incremental_log_patches(bytes, &mut log)?;
        Ok(self.touched_by(&mut log))
    }

    /// Receives a peer's sync message into `state`. Returns what its changes touched.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<Touched, DocError> {
        let mut log = PatchLog::active();
        self.doc.receive_sync_message_log_patches(state, message, &mut log)?;
        Ok(self.touched_by(&mut log))
    }

    /// What the operations recorded in `log` touched. The log holds only what was applied, so
    /// this costs the size of the change, where a diff between heads walks the whole document.
    fn touched_by(&self, log: &mut PatchLog) -> Touched {
        let mut touched = Touched::default();
        for patch in self.doc.make_patches(log) {
            touched.note(&patch, &self.maps);
        }
        touched
    }

    /// Refuses a document written in a newer layout than this build reads; an older or
    /// missing version (a fresh genesis document) is read as it is.
    pub fn check_schema(&self) -> Result<(), DocError> {
        let found = match self.doc.get(&self.maps.meta, "schema") {
            Ok(Some((automerge::Value::Scalar(value), _))) => value.as_u64(),
            _ => None,
        };
        match found {
            Some(found) if found > SCHEMA_VERSION => Err(DocError::NewerSchema { found, supported: SCHEMA_VERSION }),
            _ => Ok(()),
        }
    }

    pub fn meta_str(&self, key: &str) -> Option<String> {
        read_str(&self.doc, &self.maps.meta, key)
    }

    /// A task's fields, or `None` when no such task exists (or its map is unreadable).
    pub fn read_task(&self, id: &TaskId) -> Option<TaskFields> {
        let all = self.doc.get_all(&self.maps.tasks, id.as_str()).ok()?;
        let (_, object) = self.doc.get(&self.maps.tasks, id.as_str()).ok()??;
        let mut fields = crate::fields::read_fields(&self.doc, &object, id, &mut NodeIdCache::default())?;
        fields.id_conflicts = all
            .iter()
            .filter(|(_, other)| *other != object)
            .filter_map(|(_, other)| crate::fields::creator_of(&self.doc, other))
            .collect();
        Some(fields)
    }

    /// The fields of the tasks whose ids fall in `range`, in one pass over that part of the
    /// `tasks` map, in id order.
    pub fn read_tasks_in(&self, range: impl std::ops::RangeBounds<String>) -> Vec<TaskFields> {
        let mut tasks = Vec::new();
        let mut nodes = NodeIdCache::default();
        for item in self.doc.map_range(&self.maps.tasks, range) {
            let Ok(id) = TaskId::new(&item.key) else { continue };
            let fields = if item.conflict {
                self.read_task(&id)
            } else {
                crate::fields::read_fields(&self.doc, &item.id(), &id, &mut nodes)
            };
            tasks.extend(fields);
        }
        tasks
    }

    /// The records stored under a task, decoded and verified; undecodable or forged bytes
    /// come back as `Invalid`.
    /// Whether the document holds a record under a task (without decoding it).
    pub fn has_task_record(&self, task: &TaskId, record: RecordId) -> bool {
        matches!(self.doc.get(&self.maps.records, record_key(task, record)), Ok(Some(_)))
    }

    pub fn read_task_records(&self, id: &TaskId) -> Vec<StoredRecord> {
        self.read_task_records_verified(id, &BTreeSet::new())
    }

    /// [`QueueDoc::read_task_records`], skipping the signature check of records in `verified`.
    pub fn read_task_records_verified(&self, id: &TaskId, verified: &BTreeSet<RecordId>) -> Vec<StoredRecord> {
        let start = format!("{id}/");
        let end = format!("{id}0"); // '0' follows '/' in ASCII, and no id contains '/'.
        self.doc
            .map_range(&self.maps.records, start..end)
            .map(|item| {
                let record = item.key.split_once('/').map_or("", |(_, record)| record);
                stored_record(record, &item.value, verified)
            })
            .collect()
    }

    /// Every signed record of one of the flat record maps (`members`, `probes`), decoded;
    /// the second value counts entries that did not decode.
    pub fn read_flat_records(&self, map: &ObjId) -> (Vec<SignedRecord>, u32) {
        let mut valid = Vec::new();
        let mut invalid = 0;
        for item in self.doc.map_range(map, ..) {
            match value_bytes(&item.value).map(SignedRecord::decode) {
                Some(Ok(signed)) => valid.push(signed),
                _ => invalid += 1,
            }
        }
        (valid, invalid)
    }

    /// The highest boot number of this node that appears among the document's actors.
    pub fn highest_boot_of(&self, node: &NodeId) -> Option<u32> {
        self.doc.get_changes_meta(&[]).iter().filter_map(|meta| boot_of(node, &meta.actor)).max()
    }
}

/// Key of a record under a task in the `records` map.
pub fn record_key(task: &TaskId, record: RecordId) -> String {
    format!("{task}/{record}")
}

/// Key of a membership or probe record in its flat map.
pub fn node_record_key(node: &NodeId, record: RecordId) -> String {
    format!("{node}/{record}")
}

/// Puts a signed task record under its task.
pub fn put_task_record(
    tx: &mut Transaction<'_>,
    maps: &TopMaps,
    task: &TaskId,
    signed: &SignedRecord,
) -> Result<(), AutomergeError> {
    tx.put(&maps.records, record_key(task, signed.id()), signed.bytes().to_vec())
}

pub(crate) fn read_str(doc: &Automerge, object: &ObjId, key: &str) -> Option<String> {
    match doc.get(object, key).ok()?? {
        (automerge::Value::Scalar(value), _) => value.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A record entry of the `records` map: valid when it decodes, verifies, and sits under
/// its own id.
fn stored_record(key_record_id: &str, value: &automerge::ValueRef<'_>, verified: &BTreeSet<RecordId>) -> StoredRecord {
    let decoded =
        value_bytes(value).map(|bytes| SignedRecord::decode_unless_verified(bytes, |id| verified.contains(id)));
    match decoded {
        Some(Ok(signed)) if key_record_id == signed.id().to_string() => StoredRecord::Valid(signed),
        _ => StoredRecord::Invalid,
    }
}

/// The bytes of a map entry, if it holds bytes.
fn value_bytes<'a>(value: &'a automerge::ValueRef<'_>) -> Option<&'a [u8]> {
    match value {
        automerge::ValueRef::Scalar(automerge::ScalarValueRef::Bytes(bytes)) => Some(bytes),
        _ => None,
    }
}

/// What a set of changes touched, so the view refreshes only that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub tasks: BTreeSet<TaskId>,
    pub members: bool,
    pub probes: bool,
    pub meta: bool,
    pub inbox: bool,
    /// Inbox keys of messages put (`agent@node/message_id`), not of their marks: what the
    /// event stream announces as arrived.
    pub messages: BTreeSet<String>,
}

impl Touched {
    /// Adds what `other` touched: the duties of several merges done together.
    pub fn absorb(&mut self, other: &Touched) {
        self.tasks.extend(other.tasks.iter().cloned());
        self.messages.extend(other.messages.iter().cloned());
        self.members |= other.members;
        self.probes |= other.probes;
        self.meta |= other.meta;
        self.inbox |= other.inbox;
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && !self.members && !self.probes && !self.meta && !self.inbox
    }

    fn note(&mut self, patch: &Patch, maps: &TopMaps) {
        let key = match &patch.action {
            PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key.as_str()),
            // A value that arrives and loses to the one already there (two nodes created one
            // task id) changes no visible value, only the conflict: the task's
            // `id_conflicts` must be read again all the same.
            PatchAction::Conflict { prop: Prop::Map(key) } => Some(key.as_str()),
            _ => None,
        };
        let task_of = |text: &str| TaskId::new(text.split('/').next().unwrap_or(text)).ok();
        let top = patch.path.first().map(|(object, _)| object);
        if patch.obj == maps.tasks || patch.obj == maps.records {
            self.tasks.extend(key.and_then(task_of));
        } else if top == Some(&ROOT) && matches!(patch.path.first(), Some((_, Prop::Map(name))) if name == "tasks") {
            if let Some((_, Prop::Map(id))) = patch.path.get(1) {
                self.tasks.extend(task_of(id));
            }
        } else if patch.obj == maps.members {
            self.members = true;
        } else if patch.obj == maps.probes {
            self.probes = true;
        } else if patch.obj == maps.meta {
            self.meta = true;
        } else if patch.obj == maps.inbox || patch.path.iter().any(|(object, _)| *object == maps.inbox) {
            self.inbox = true;
            // A message is `agent@node/id`; its marks are `agent@node/id/mark`.
            if let (PatchAction::PutMap { key, .. }, true) = (&patch.action, patch.obj == maps.inbox)
                && key.matches('/').count() == 1
            {
                self.messages.insert(key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node must build the very same genesis change, or two meshes' top-level maps
    /// would differ; an Automerge upgrade that changed it would break existing meshes. The
    /// hash is also written in docs/PROTOCOL.md.
    #[test]
    fn genesis_change_is_identical_on_every_node_and_pinned() {
        let heads = QueueDoc::genesis().heads();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].to_string(), "d6ff6fe1a5b7d08b579b53bf5e5c0b19e248d7dacc070d9b85973b9f577fb361");
        assert_eq!(QueueDoc::genesis_bytes(), QueueDoc::genesis_bytes());
    }

    /// A document from a newer meshwork is refused, never misread.
    #[test]
    fn a_document_of_a_newer_schema_is_refused() {
        let mut doc = QueueDoc::genesis();
        assert!(doc.check_schema().is_ok());
        doc.change(0, "future", |tx, maps| tx.put(&maps.meta, "schema", SCHEMA_VERSION + 1).map(|_| ())).unwrap();
        assert!(matches!(doc.check_schema(), Err(DocError::NewerSchema { found, .. }) if found == SCHEMA_VERSION + 1));
    }

    /// What a diff between heads says changed: the slow way, the oracle for the patch log.
    fn touched_between(doc: &QueueDoc, before: &[ChangeHash]) -> Touched {
        let mut touched = Touched::default();
        for patch in doc.doc.diff(before, &doc.heads()) {
            touched.note(&patch, &doc.maps);
        }
        touched
    }

    /// Two replicas that both wrote, concurrently, to every map a `Touched` names, and to one
    /// task key (the second writer's value loses and shows only as a conflict).
    fn concurrent_writers() -> (QueueDoc, QueueDoc) {
        let node = NodeId::from_public_key_bytes([7; 32]);
        let mut left = QueueDoc::genesis();
        let mut right = QueueDoc::genesis();
        left.doc.set_actor(actor_for(&node, 1));
        right.doc.set_actor(actor_for(&node, 2));
        for (doc, side) in [(&mut left, "left"), (&mut right, "right")] {
            doc.change(1_000, "task", |tx, maps| {
                let task = tx.put_object(&maps.tasks, "same-id", ObjType::Map)?;
                tx.put(&task, "title", side)?;
                tx.put(&maps.records, format!("{side}-task/record"), vec![1_u8, 2])?;
                Ok(())
            })
            .unwrap();
        }
        right
            .change(2_000, "others", |tx, maps| {
                tx.put(&maps.members, "member/record", vec![3_u8])?;
                tx.put(&maps.probes, "probe/record", vec![4_u8])?;
                tx.put(&maps.inbox, "agent@node/message", "{}")?;
                tx.put(&maps.meta, "mesh_name", "renamed")
            })
            .unwrap();
        (left, right)
    }

    /// The patch log of applied changes names exactly what a diff of the heads names, the
    /// losing side of a concurrently created task included.
    #[test]
    fn applied_changes_touch_what_a_diff_of_the_heads_shows() {
        let (mut left, right) = concurrent_writers();
        let before = left.heads();
        let touched = left.apply(&right.save()).unwrap();
        assert_eq!(touched, touched_between(&left, &before));
        let ids: Vec<&str> = touched.tasks.iter().map(TaskId::as_str).collect();
        assert_eq!(ids, ["right-task", "same-id"]);
        assert!(touched.members && touched.probes && touched.meta && touched.inbox);
        assert!(left.apply(&right.save()).unwrap().is_empty(), "changes seen before touch nothing");
    }

    /// The same holds for changes that arrive by the sync protocol.
    #[test]
    fn synced_changes_touch_what_a_diff_of_the_heads_shows() {
        let (mut left, mut right) = concurrent_writers();
        let before = left.heads();
        let (mut left_state, mut right_state) = (sync::State::new(), sync::State::new());
        let mut touched = Touched::default();
        for _ in 0..10 {
            let to_right = left.doc.generate_sync_message(&mut left_state);
            let to_left = right.doc.generate_sync_message(&mut right_state);
            if to_right.is_none() && to_left.is_none() {
                break;
            }
            if let Some(message) = to_right {
                right.receive_sync_message(&mut right_state, message).unwrap();
            }
            if let Some(message) = to_left {
                let more = left.receive_sync_message(&mut left_state, message).unwrap();
                touched.tasks.extend(more.tasks);
                touched.members |= more.members;
                touched.probes |= more.probes;
                touched.meta |= more.meta;
                touched.inbox |= more.inbox;
                touched.messages.extend(more.messages);
            }
        }
        assert_eq!(left.heads(), right.heads(), "the sync ran to the end");
        assert_eq!(touched, touched_between(&left, &before));
    }

    /// A node's actor ids differ per boot and are recognised as its own.
    #[test]
    fn actor_ids_are_unique_per_boot_and_recognised() {
        let node = NodeId::from_public_key_bytes([7; 32]);
        let other = NodeId::from_public_key_bytes([8; 32]);
        assert_ne!(actor_for(&node, 1), actor_for(&node, 2));
        assert_eq!(boot_of(&node, &actor_for(&node, 41)), Some(41));
        assert_eq!(boot_of(&other, &actor_for(&node, 41)), None);
    }
}
