//! Reading the start caches of the home: the verified-records cache (`verified.bin`) and the
//! derived-state cache (`derived.bin`).
//!
//! Both files are read and checked (checksum, layout, build, node) on a thread of their own
//! while the document loads. The derived state itself is decoded only after the load, and
//! only when the loaded document has the cache's heads: decoded during the load, it would
//! sit beside Automerge's peak of memory (measured: a 100,000-task start peaked at 414 MiB
//! that way, against 254 MiB this way). It is decoded on two threads then: one decodes the
//! task entries, the other builds the map from them. Neither cache is ever needed: missing,
//! damaged or not fitting, a cache is ignored and the node checks every signature and
//! derives every task's state, which only takes longer. The queue actor writes both with
//! each snapshot and at a clean stop.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Instant;

use meshwork_crdt::{CacheRefused, DerivedCache, DerivedCacheFile, QueueDoc, TaskEntry};
use meshwork_protocol::derived_cache::DERIVED_CACHE_BYTES_MAX;
use meshwork_protocol::{NodeId, RecordId};
use tracing::{info, warn};

use crate::home::Home;

/// Task entries the decoding thread hands over at once.
const DECODE_BATCH_ENTRIES: usize = 512;
/// Batches in flight between the decoding thread and the one building the map (a few MiB).
const DECODE_BATCHES_MAX: usize = 8;

/// The start caches as read: empty where a cache was missing, damaged or not fitting.
#[derive(Debug)]
pub(super) struct StartCaches {
    pub(super) verified: BTreeSet<RecordId>,
    /// The derived-state cache, checked but not decoded; or why there is none.
    pub(super) derived: Result<DerivedCacheFile, NoCache>,
    /// How long reading and checking took, on the reading thread.
    pub(super) read_ms: u128,
}

/// Why no derived-state cache is at hand.
#[derive(Debug)]
pub(super) enum NoCache {
    /// No file (a first start), or one that could not be read.
    Absent,
    Refused(CacheRefused),
}

impl NoCache {
    fn as_str(&self) -> &'static str {
        match self {
            NoCache::Absent => "absent",
            NoCache::Refused(refused) => refused.as_str(),
        }
    }
}

/// The start caches being read on their own thread.
#[derive(Debug)]
pub(super) struct Reading {
    thread: std::io::Result<JoinHandle<StartCaches>>,
    home: Home,
    node: NodeId,
}

/// Starts reading the start caches of `home` for `node` on a thread of their own.
pub(super) fn read_in_background(home: &Home, node: NodeId) -> Reading {
    let (thread_home, home) = (home.clone(), home.clone());
    let thread = std::thread::Builder::new().name("start-caches".to_owned()).spawn(move || read(&thread_home, &node));
    Reading { thread, home, node }
}

impl Reading {
    /// Waits for the caches. Should the thread have panicked, the caches count as absent;
    /// should it never have started, they are read here instead.
    pub(super) fn join(self) -> StartCaches {
        match self.thread {
            Ok(thread) => thread.join().unwrap_or_else(|_| {
                warn!("reading the start caches failed; checking every signature and deriving every task's state");
                StartCaches { verified: BTreeSet::new(), derived: Err(NoCache::Absent), read_ms: 0 }
            }),
            Err(error) => {
                warn!(%error, "cannot start a thread to read the start caches; reading them now");
                read(&self.home, &self.node)
            }
        }
    }
}

fn read(home: &Home, node: &NodeId) -> StartCaches {
    let reading = Instant::now();
    let verified = read_verified_cache(&home.verified_cache_path());
    let derived = read_derived_cache(&home.derived_cache_path(), node);
    StartCaches { verified, derived, read_ms: reading.elapsed().as_millis() }
}

/// The verified-records cache, or an empty set when it is missing or damaged (then every
/// signature is checked, which only takes longer).
fn read_verified_cache(path: &Path) -> BTreeSet<RecordId> {
    let Ok(bytes) = fs::read(path) else { return BTreeSet::new() };
    match meshwork_protocol::verified_cache::decode_verified_cache(&bytes) {
        Some(ids) => ids.into_iter().collect(),
        None => {
            warn!(path = %path.display(), "the verified-records cache is damaged; checking every signature");
            BTreeSet::new()
        }
    }
}

/// The derived-state cache, checked for this build and `node`.
fn read_derived_cache(path: &Path, node: &NodeId) -> Result<DerivedCacheFile, NoCache> {
    let bytes = match fs::metadata(path).map(|meta| meta.len()) {
        Ok(len) if len > DERIVED_CACHE_BYTES_MAX => {
            warn!(path = %path.display(), bytes = len, "the derived-state cache is over DERIVED_CACHE_BYTES_MAX; ignoring it");
            return Err(NoCache::Absent);
        }
        Ok(_) => fs::read(path),
        Err(error) => Err(error),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => return Err(NoCache::Absent),
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot read the derived-state cache; deriving every task's state");
            return Err(NoCache::Absent);
        }
    };
    DerivedCacheFile::open(bytes, node).map_err(|refused| {
        report_refusal(path, &refused);
        NoCache::Refused(refused)
    })
}

/// Decodes the derived-state cache if it is of `doc`; returns it and one word for the log
/// (`used`, `absent`, `damaged`, `other-build`, `other-node`, `other-document`).
pub(super) fn decode_for(
    home: &Home,
    derived: Result<DerivedCacheFile, NoCache>,
    doc: &QueueDoc,
) -> (Option<DerivedCache>, &'static str) {
    let file = match derived {
        Ok(file) if file.is_of(doc) => file,
        Ok(_) => {
            report_refusal(&home.derived_cache_path(), &CacheRefused::OtherDocument);
            return (None, CacheRefused::OtherDocument.as_str());
        }
        Err(no_cache) => return (None, no_cache.as_str()),
    };
    match decode_on_two_threads(file) {
        Some(Ok(cache)) => (Some(cache), "used"),
        Some(Err(refused)) => {
            report_refusal(&home.derived_cache_path(), &refused);
            (None, refused.as_str())
        }
        None => (None, "absent"),
    }
}

/// Decodes a cache's task entries on a thread of its own while this one builds the map from
/// them, in batches over a bounded channel. `None` when the thread cannot start or fails
/// (then the state is derived).
fn decode_on_two_threads(file: DerivedCacheFile) -> Option<Result<DerivedCache, CacheRefused>> {
    let (head, mut entries) = match file.split() {
        Ok(parts) => parts,
        Err(refused) => return Some(Err(refused)),
    };
    std::thread::scope(|scope| {
        let (batches, received) =
            std::sync::mpsc::sync_channel::<Vec<Result<TaskEntry, CacheRefused>>>(DECODE_BATCHES_MAX);
        let decoding = std::thread::Builder::new().name("derived-cache".to_owned()).spawn_scoped(scope, move || {
            loop {
                let batch: Vec<_> = entries.by_ref().take(DECODE_BATCH_ENTRIES).collect();
                // An empty batch is the end; a closed channel means the map builder gave up.
                if batch.is_empty() || batches.send(batch).is_err() {
                    return;
                }
            }
        });
        let decoding = match decoding {
            Ok(thread) => thread,
            Err(error) => {
                warn!(%error, "cannot start a thread to decode the derived-state cache; deriving every task's state");
                return None;
            }
        };
        let assembled = head.assemble(received.into_iter().flatten());
        if decoding.join().is_err() {
            warn!("decoding the derived-state cache failed; deriving every task's state");
            return None;
        }
        Some(assembled)
    })
}

fn report_refusal(path: &Path, refused: &CacheRefused) {
    if refused.is_damage() {
        warn!(path = %path.display(), error = %refused, "the derived-state cache is damaged; deriving every task's state");
    } else {
        info!(path = %path.display(), reason = %refused, "the derived-state cache does not fit; deriving every task's state");
    }
}
