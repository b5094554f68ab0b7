//! A simulated workstation: its key, its clock, what its disk holds, and, while its process
//! runs, the very `Replica` and `SyncEngine` the node binary runs.

use std::collections::BTreeMap;

use meshwork_crdt::sync::SyncEngine;
use meshwork_crdt::{QueueDoc, Replica};
use meshwork_protocol::{AgentName, NodeId, NodeKey, Probe};

use crate::clock::NodeClock;
use crate::net::ConnId;

/// The node's home: what survives a crash.
#[derive(Debug, Default)]
pub struct Disk {
    /// The last boot number, persisted before any write of that boot.
    pub boot: u32,
    /// Change chunks written and synced, in order: the document is these, loaded.
    pub log: Vec<Vec<u8>>,
    /// Changes received from peers and queued to the log but not yet synced (the node does
    /// not wait for that fsync); a crash loses them.
    pub unsynced: Vec<Vec<u8>>,
    /// Each peer's sync state, written when its session ended.
    pub sync_states: BTreeMap<NodeId, Vec<u8>>,
}

impl Disk {
    /// Writes changes and waits for the fsync, as a local operation does before it answers:
    /// the queued writes before them are synced first (the log is written in order).
    pub fn write_durable(&mut self, changes: Vec<u8>) {
        self.flush();
        self.log.push(changes);
    }

    /// Queues received changes without waiting for them.
    pub fn write_behind(&mut self, changes: Vec<u8>) {
        self.unsynced.push(changes);
    }

    pub fn flush(&mut self) {
        self.log.append(&mut self.unsynced);
    }

    /// A crash: what was not synced is gone. Returns how many chunks were lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.unsynced.len();
        self.unsynced.clear();
        lost
    }
}

/// A running node process.
#[derive(Debug)]
pub struct Live {
    pub replica: Replica,
    pub engine: SyncEngine,
    /// The open connection to each peer, by node index.
    pub links: BTreeMap<usize, ConnId>,
    /// What merges touched whose duties wait for `duties_at_us`, as the node binary batches
    /// them (`DUTIES_BATCH_MS` in `node/daemon/src/mesh.rs`).
    pub duties_due: meshwork_crdt::Touched,
    pub duties_at_us: Option<u64>,
}

impl Live {
    pub fn new(replica: Replica) -> Live {
        Live {
            replica,
            engine: SyncEngine::default(),
            links: BTreeMap::new(),
            duties_due: meshwork_crdt::Touched::default(),
            duties_at_us: None,
        }
    }
}

#[derive(Debug)]
pub struct SimNode {
    pub index: usize,
    pub key: NodeKey,
    pub id: NodeId,
    pub name: String,
    pub clock: NodeClock,
    pub slow_us: u64,
    pub gpu: bool,
    pub agents: Vec<AgentName>,
    pub disk: Disk,
    /// `None` while the process is down.
    pub live: Option<Live>,
    /// It holds a document of the mesh (it founded it or joined it).
    pub joined: bool,
    /// One of the members the mesh was founded with (the others join later).
    pub founding: bool,
    /// A member removed it; it keeps running, cut off.
    pub removed: bool,
}

impl SimNode {
    pub fn new(index: usize, key: NodeKey, clock: NodeClock, slow_us: u64, gpu: bool) -> SimNode {
        let agents = ["claude", "codex"]
            .iter()
            .map(|name| AgentName::new(name).unwrap_or_else(|_| unreachable!("a valid agent name")))
            .collect();
        SimNode {
            index,
            id: key.node_id(),
            key,
            name: format!("n{index}"),
            clock,
            slow_us,
            gpu,
            agents,
            disk: Disk::default(),
            live: None,
            joined: false,
            founding: false,
            removed: false,
        }
    }

    pub fn wall_ms(&self, now_us: u64) -> u64 {
        self.clock.wall_ms(now_us)
    }

    /// Joined and not removed, as far as the simulation's own flags know; [`in_mesh`] also
    /// asks the mesh.
    pub fn participates(&self) -> bool {
        self.joined && !self.removed
    }

    /// Starts the process: a new boot, persisted first, then the document from the log. An
    /// actor id the document already holds is never reused.
    pub fn start(&mut self) -> Result<(), String> {
        self.disk.boot += 1;
        let (doc, bad) = QueueDoc::load(None, &self.disk.log).map_err(|error| error.to_string())?;
        if let Some((chunk, error)) = bad.first() {
            return Err(format!("log chunk {chunk} does not load: {error}"));
        }
        if let Some(highest) = doc.highest_boot_of(&self.id) {
            self.disk.boot = self.disk.boot.max(highest + 1);
        }
        let replica = Replica::open(self.id, self.disk.boot, doc);
        self.live = Some(Live::new(replica));
        Ok(())
    }

    /// The probe this node publishes: the `gpu` label when it has one.
    pub fn probe(&self) -> Probe {
        Probe {
            os: "linux".to_owned(),
            arch: "x86_64".to_owned(),
            hostname: self.name.clone(),
            cpus: 8,
            memory_bytes: 32 << 30,
            labels: if self.gpu { vec!["gpu".to_owned()] } else { Vec::new() },
            ..Probe::default()
        }
    }
}

/// Whether `node` is part of the mesh: it participates, and a node that joined late is also a
/// current member by the view of the first live founding participant. A late joiner admitted
/// by a member whose removal it did not know of yet (removed before it signed the add) is not:
/// its add record never counts, so the mesh's gates keep it out, as they must, and the checks
/// leave it out. The view is the mesh's own judgement, from the records, whatever the clocks.
pub fn in_mesh(nodes: &[SimNode], node: usize) -> bool {
    let candidate = &nodes[node];
    if !candidate.participates() {
        return false;
    }
    if candidate.founding {
        return true;
    }
    let reference =
        nodes.iter().filter(|other| other.founding && other.participates()).find_map(|other| other.live.as_ref());
    reference.is_none_or(|live| live.replica.members().get(&candidate.id).is_some_and(|member| member.is_current()))
}
