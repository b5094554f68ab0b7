//! The derived-state cache: everything [`Replica::rebuild`] derives from the document, kept
//! beside the snapshot and keyed by the document's heads, so a start whose document has the
//! same heads takes it instead of deriving it again (which reads every task and record).
//!
//! The file's layout is `meshwork_protocol::derived_cache`; this module owns the state inside
//! it, whose layout is this crate's own types in postcard: the head ([`DerivedHead`]'s
//! fields: mesh, members, probes, counters, highest boot), then the task entries as a
//! sequence in id order, last so that they can be decoded one by one ([`TaskEntries`]), on
//! another thread than the one building the map. Only the build that wrote a cache reads it:
//! the header names [`DERIVED_STATE_VERSION`] and this crate's version. A cache is only ever
//! an optimisation: anything that does not fit (damage, another build, another node, another
//! document) is refused and the state is derived.
//!
//! [`Replica::rebuild`]: crate::replica::Replica::rebuild

use std::collections::BTreeMap;
use std::ops::Range;

use automerge::ChangeHash;
use meshwork_protocol::derived_cache::{
    DerivedCacheError, DerivedCacheHeader, encode_derived_cache, node_digest, open_derived_cache, take_derived_part,
};
use meshwork_protocol::{MeshId, NodeId, Stamp, TaskId};
use serde::{Deserialize, Serialize, Serializer};

use crate::document::QueueDoc;
use crate::membership::MemberSet;
use crate::probes::ProbeBook;
use crate::resolve::TaskEntry;

/// Version of the derived state's layout and meaning. Bump it whenever a derived type or the
/// way it is derived changes (`crdt/tests/derived_cache.rs` pins the encoding of a sample,
/// so a changed type fails a test until this moves).
pub const DERIVED_STATE_VERSION: u32 = 4;
/// The build a cache is bound to, besides [`DERIVED_STATE_VERSION`].
pub const DERIVED_STATE_BUILD: &str = env!("CARGO_PKG_VERSION");

/// A replica's derived state, borrowed for writing: the fields of [`HeadFields`], which reads
/// them back (postcard is positional, so the two agree field for field), then the tasks.
#[derive(Debug, Serialize)]
pub(crate) struct DerivedStateRef<'a> {
    pub(crate) mesh: Option<MeshId>,
    pub(crate) members: &'a MemberSet,
    pub(crate) probes: &'a ProbeBook,
    pub(crate) own_stamp_max: Stamp,
    pub(crate) undecodable_members: u32,
    pub(crate) undecodable_probes: u32,
    pub(crate) highest_boot: Option<u32>,
    /// A sequence of entries in id order (each entry holds its id).
    #[serde(serialize_with = "serialize_tasks")]
    pub(crate) tasks: &'a BTreeMap<TaskId, TaskEntry>,
}

fn serialize_tasks<S: Serializer>(tasks: &&BTreeMap<TaskId, TaskEntry>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(tasks.values())
}

/// The head of the state as read back: everything but the tasks.
#[derive(Debug, Deserialize)]
struct HeadFields {
    mesh: Option<MeshId>,
    members: MemberSet,
    probes: ProbeBook,
    own_stamp_max: Stamp,
    undecodable_members: u32,
    undecodable_probes: u32,
    /// Not the replica's own state but derived from the document all the same: the highest
    /// boot of the node among its actors (see [`DerivedCache::highest_boot`]).
    highest_boot: Option<u32>,
}

/// A replica's derived state, as read back from a cache.
#[derive(Debug)]
pub(crate) struct DerivedState {
    pub(crate) mesh: Option<MeshId>,
    pub(crate) members: MemberSet,
    pub(crate) probes: ProbeBook,
    pub(crate) tasks: BTreeMap<TaskId, TaskEntry>,
    pub(crate) own_stamp_max: Stamp,
    pub(crate) undecodable_members: u32,
    pub(crate) undecodable_probes: u32,
    pub(crate) highest_boot: Option<u32>,
}

/// A cache file found intact and of this build and node, its state not decoded yet: decoding
/// is the costly part, so it waits until the document is loaded and known to have the
/// cache's heads ([`DerivedCacheFile::decode_for`]).
#[derive(Debug)]
pub struct DerivedCacheFile {
    bytes: Vec<u8>,
    heads: Vec<ChangeHash>,
    state: Range<usize>,
}

/// The head of a cache's state, decoded; the task entries follow ([`TaskEntries`]).
#[derive(Debug)]
pub struct DerivedHead {
    heads: Vec<ChangeHash>,
    fields: HeadFields,
    tasks: usize,
}

/// The task entries of a cache, decoded one by one (an iterator that can be sent to another
/// thread). An entry that does not decode ends it with an error; so do bytes left after the
/// last entry.
#[derive(Debug)]
pub struct TaskEntries {
    bytes: Vec<u8>,
    at: usize,
    end: usize,
    left: usize,
    failed: bool,
}

/// A cache decoded: the derived state of the document with `heads`. Whether it is of the
/// document at hand, [`crate::Replica::open_with_cache`] checks again by the heads.
#[derive(Debug)]
pub struct DerivedCache {
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) state: DerivedState,
}

/// Why a cache file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheRefused {
    /// The bytes are not an intact cache: worth a warning.
    #[error("the cache is damaged: {0}")]
    Damaged(#[from] DerivedCacheError),
    /// Written by another build (an upgrade): expected once after each.
    #[error("the cache was written by another build ({build}, state version {state_version})")]
    OtherBuild { build: String, state_version: u32 },
    /// Written for another node (a home copied from another node's).
    #[error("the cache was written for another node")]
    OtherNode,
    /// Written for another state of the document (other heads): after a crash, after
    /// changes written once the cache was, or a file restored from a backup.
    #[error("the cache is of another state of the document")]
    OtherDocument,
}

impl CacheRefused {
    /// Whether the refusal means the file is damaged, rather than merely out of date.
    pub fn is_damage(&self) -> bool {
        matches!(self, CacheRefused::Damaged(_))
    }

    /// One word for logs: `damaged`, `other-build`, `other-node`, `other-document`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheRefused::Damaged(_) => "damaged",
            CacheRefused::OtherBuild { .. } => "other-build",
            CacheRefused::OtherNode => "other-node",
            CacheRefused::OtherDocument => "other-document",
        }
    }
}

/// What became of the cache a replica was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The derived state came from the cache.
    Used,
    /// There was no cache: everything was derived.
    Absent,
    /// The cache is of another document (other heads, or another mesh): everything was
    /// derived.
    OtherDocument,
}

fn damaged(reason: &str) -> CacheRefused {
    CacheRefused::Damaged(DerivedCacheError::BadState(reason.to_owned()))
}

impl DerivedCacheFile {
    /// Checks a cache file for `node`: checksum, layout, build and node; the state is left
    /// undecoded.
    pub fn open(bytes: Vec<u8>, node: &NodeId) -> Result<DerivedCacheFile, CacheRefused> {
        let (header, state) = open_derived_cache(&bytes)?;
        if header.state_version != DERIVED_STATE_VERSION || header.build != DERIVED_STATE_BUILD {
            return Err(CacheRefused::OtherBuild { build: header.build, state_version: header.state_version });
        }
        if header.node != node_digest(node) {
            return Err(CacheRefused::OtherNode);
        }
        let heads = header.heads.into_iter().map(ChangeHash).collect();
        Ok(DerivedCacheFile { bytes, heads, state })
    }

    /// Whether the cache was derived from a document with exactly the heads of `doc`.
    pub fn is_of(&self, doc: &QueueDoc) -> bool {
        same_heads(&self.heads, &doc.heads())
    }

    /// Decodes the state if the cache is of `doc`; a cache of other heads is not decoded.
    pub fn decode_for(self, doc: &QueueDoc) -> Result<DerivedCache, CacheRefused> {
        if !self.is_of(doc) {
            return Err(CacheRefused::OtherDocument);
        }
        self.decode()
    }

    /// Decodes the state, whatever document it is of, on this thread.
    pub fn decode(self) -> Result<DerivedCache, CacheRefused> {
        let (head, entries) = self.split()?;
        head.assemble(entries)
    }

    /// Decodes the head of the state and returns it with the task entries, still to decode:
    /// most of the work, which can run on another thread while this one builds the map
    /// ([`DerivedHead::assemble`]).
    pub fn split(self) -> Result<(DerivedHead, TaskEntries), CacheRefused> {
        let state = &self.bytes[self.state.clone()];
        let (fields, rest) = take_derived_part::<HeadFields>(state)?;
        let (tasks, rest) = take_derived_part::<u64>(rest)?;
        let tasks = usize::try_from(tasks).map_err(|_| damaged("the task count is over usize"))?;
        let at = self.state.end - rest.len();
        let entries = TaskEntries { bytes: self.bytes, at, end: self.state.end, left: tasks, failed: false };
        Ok((DerivedHead { heads: self.heads, fields, tasks }, entries))
    }
}

impl Iterator for TaskEntries {
    type Item = Result<TaskEntry, CacheRefused>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            // Every entry is out: the file's bytes go now, and any byte left is damage.
            let trailing = self.end - self.at;
            self.bytes = Vec::new();
            self.failed = true;
            return (trailing > 0).then(|| Err(damaged(&format!("{trailing} bytes follow the task entries"))));
        }
        match take_derived_part::<TaskEntry>(&self.bytes[self.at..self.end]) {
            Ok((entry, rest)) => {
                self.at = self.end - rest.len();
                self.left -= 1;
                Some(Ok(entry))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error.into()))
            }
        }
    }
}

impl DerivedHead {
    /// Builds the decoded cache from the head and the task entries, in the order the file
    /// holds them: ascending ids, each once, as many as the head announced.
    pub fn assemble(
        self,
        entries: impl IntoIterator<Item = Result<TaskEntry, CacheRefused>>,
    ) -> Result<DerivedCache, CacheRefused> {
        let mut tasks: BTreeMap<TaskId, TaskEntry> = BTreeMap::new();
        for entry in entries {
            let entry = entry?;
            if tasks.last_key_value().is_some_and(|(last, _)| *last >= entry.fields.id) {
                return Err(damaged("task entries out of id order"));
            }
            tasks.insert(entry.fields.id.clone(), entry);
        }
        if tasks.len() != self.tasks {
            return Err(damaged("fewer task entries than announced"));
        }
        let HeadFields { mesh, members, probes, own_stamp_max, undecodable_members, undecodable_probes, highest_boot } =
            self.fields;
        let state = DerivedState {
            mesh,
            members,
            probes,
            tasks,
            own_stamp_max,
            undecodable_members,
            undecodable_probes,
            highest_boot,
        };
        Ok(DerivedCache { heads: self.heads, state })
    }
}

impl DerivedCache {
    /// The highest boot of the node among the document's actors, as
    /// [`QueueDoc::highest_boot_of`] finds it (a start takes a boot above it, so an actor id
    /// is never reused), without reading every change's metadata.
    pub fn highest_boot(&self) -> Option<u32> {
        self.state.highest_boot
    }

    /// The cache file of a state derived for `node` from the document with `heads`.
    pub(crate) fn encode(
        node: &NodeId,
        heads: &[ChangeHash],
        state: &DerivedStateRef<'_>,
    ) -> Result<Vec<u8>, DerivedCacheError> {
        let mut heads: Vec<[u8; 32]> = heads.iter().map(|head| head.0).collect();
        heads.sort_unstable();
        heads.dedup();
        let header = DerivedCacheHeader {
            state_version: DERIVED_STATE_VERSION,
            build: DERIVED_STATE_BUILD.to_owned(),
            node: node_digest(node),
            heads,
        };
        encode_derived_cache(&header, state)
    }

    /// Whether the cache was derived from a document with exactly these heads.
    pub(crate) fn is_of(&self, heads: &[ChangeHash]) -> bool {
        same_heads(&self.heads, heads)
    }
}

/// Heads as a cache holds them (ascending, no repeats) against a document's.
fn same_heads(cached: &[ChangeHash], heads: &[ChangeHash]) -> bool {
    let mut heads = heads.to_vec();
    heads.sort_unstable();
    heads.dedup();
    heads == cached
}
