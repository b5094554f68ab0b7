//! The sans-IO sync engine: Automerge's sync protocol per peer, driven by inputs, answering
//! with outputs. The node moves the frames over libp2p; netsim over a simulated network.
//!
//! Time is a parameter, nothing here touches a socket, and a peer that sends an undecodable
//! frame is closed and counted without touching the document.

use std::collections::BTreeMap;

use automerge::sync::{Message, State, SyncDoc};
use meshwork_protocol::NodeId;
use meshwork_protocol::wire::Frame;

use crate::document::Touched;
use crate::replica::Replica;

/// Something that happened to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncInput {
    /// A connection to a peer opened; `saved_state` is the sync state persisted for it.
    Connected {
        peer: NodeId,
        saved_state: Option<Vec<u8>>,
    },
    Disconnected {
        peer: NodeId,
    },
    /// A frame arrived from a peer.
    Frame {
        peer: NodeId,
        bytes: Vec<u8>,
    },
    /// The local document changed; push to every connected peer.
    LocalChange,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutput {
    Send {
        peer: NodeId,
        frame: Vec<u8>,
        /// The message carries changes or asks for some, so the peer will answer it; the
        /// time to that answer is a round trip through both nodes (the settle time uses it).
        expects_reply: bool,
    },
    Close {
        peer: NodeId,
        reason: String,
    },
    /// Changes received from a peer, to write to storage before they count as kept.
    Persist {
        changes: Vec<u8>,
    },
    /// A peer's sync state, to reuse on the next connection.
    PersistPeerState {
        peer: NodeId,
        state: Vec<u8>,
    },
    /// The document changed: these tasks and maps were touched.
    Changed(Touched),
}

#[derive(Debug)]
struct PeerSession {
    state: State,
    connected: bool,
}

/// Per-peer sync state for one replica.
#[derive(Debug, Default)]
pub struct SyncEngine {
    peers: BTreeMap<NodeId, PeerSession>,
    /// Frames refused per peer (oversize, undecodable, invalid).
    pub bad_frames: BTreeMap<NodeId, u64>,
}

impl SyncEngine {
    /// Handles one input. Outputs are in the order the shell must carry them out.
    pub fn handle(&mut self, replica: &mut Replica, input: SyncInput, now_ms: u64) -> Vec<SyncOutput> {
        let mut outputs = Vec::new();
        match input {
            SyncInput::Connected { peer, saved_state } => self.connected(replica, peer, saved_state, &mut outputs),
            SyncInput::Disconnected { peer } => {
                if let Some(session) = self.peers.get_mut(&peer) {
                    session.connected = false;
                    outputs.push(SyncOutput::PersistPeerState { peer, state: session.state.encode() });
                }
            }
            SyncInput::Frame { peer, bytes } => self.frame(replica, peer, &bytes, now_ms, &mut outputs),
            SyncInput::LocalChange => {
                self.close_non_members(replica, &mut outputs);
                self.push_all(replica, &mut outputs);
            }
        }
        outputs
    }

    /// Peers with an open connection.
    pub fn connected_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.iter().filter(|(_, session)| session.connected).map(|(peer, _)| peer)
    }

    fn connected(
        &mut self,
        replica: &Replica,
        peer: NodeId,
        saved_state: Option<Vec<u8>>,
        outputs: &mut Vec<SyncOutput>,
    ) {
        if !is_current_member(replica, &peer) {
            outputs.push(SyncOutput::Close { peer, reason: "not a member of this mesh".to_owned() });
            return;
        }
        // A saved state that does not decode is dropped: a fresh one only costs time.
        let state = saved_state.and_then(|bytes| State::decode(&bytes).ok()).unwrap_or_default();
        self.peers.insert(peer, PeerSession { state, connected: true });
        self.push(replica, peer, outputs);
    }

    fn frame(&mut self, replica: &mut Replica, peer: NodeId, bytes: &[u8], now_ms: u64, outputs: &mut Vec<SyncOutput>) {
        if !is_current_member(replica, &peer) {
            // Removed while connected: nothing it sends counts any more.
            return self.close(peer, "not a member of this mesh", outputs);
        }
        let Some(session) = self.peers.get_mut(&peer).filter(|session| session.connected) else {
            outputs.push(SyncOutput::Close { peer, reason: "frame before the sync session opened".to_owned() });
            return;
        };
        let message = match Frame::decode(bytes) {
            Ok(Frame::Sync(payload)) => Message::decode(&payload).map_err(|error| error.to_string()),
            Ok(_) => Err("a join frame on the sync stream".to_owned()),
            Err(error) => Err(error.to_string()),
        };
        let message = match message {
            Ok(message) => message,
            Err(reason) => return self.refuse(peer, reason, outputs),
        };
        let before = replica.doc().heads();
        let touched = match replica.doc_mut().receive_sync_message(&mut session.state, message) {
            Ok(touched) => touched,
            Err(error) => return self.refuse(peer, error.to_string(), outputs),
        };
        if !touched.is_empty() || replica.doc().heads() != before {
            outputs.push(SyncOutput::Persist { changes: replica.doc().automerge().save_after(&before) });
            replica.refresh(&touched, now_ms);
            let members_changed = touched.members;
            outputs.push(SyncOutput::Changed(touched));
            if members_changed {
                self.close_non_members(replica, outputs);
            }
            // New changes flow on to everyone else too.
            self.push_all(replica, outputs);
        } else {
            self.push(replica, peer, outputs);
        }
    }

    fn refuse(&mut self, peer: NodeId, reason: String, outputs: &mut Vec<SyncOutput>) {
        *self.bad_frames.entry(peer).or_default() += 1;
        if let Some(session) = self.peers.get_mut(&peer) {
            session.connected = false;
        }
        outputs.push(SyncOutput::Close { peer, reason: format!("bad frame: {reason}") });
    }

    /// Ends the sessions of peers that are no longer members (a removal merged or made here):
    /// the shell closes their links, and their frames are refused from now on.
    fn close_non_members(&mut self, replica: &Replica, outputs: &mut Vec<SyncOutput>) {
        let removed: Vec<NodeId> =
            self.connected_peers().filter(|peer| !is_current_member(replica, peer)).copied().collect();
        for peer in removed {
            self.close(peer, "no longer a member of this mesh", outputs);
        }
    }

    /// Ends a peer's session and tells the shell to close its link, keeping its sync state.
    fn close(&mut self, peer: NodeId, reason: &str, outputs: &mut Vec<SyncOutput>) {
        if let Some(session) = self.peers.get_mut(&peer).filter(|session| session.connected) {
            session.connected = false;
            outputs.push(SyncOutput::PersistPeerState { peer, state: session.state.encode() });
        }
        outputs.push(SyncOutput::Close { peer, reason: reason.to_owned() });
    }

    fn push_all(&mut self, replica: &Replica, outputs: &mut Vec<SyncOutput>) {
        let peers: Vec<NodeId> = self.connected_peers().copied().collect();
        for peer in peers {
            self.push(replica, peer, outputs);
        }
    }

    fn push(&mut self, replica: &Replica, peer: NodeId, outputs: &mut Vec<SyncOutput>) {
        let Some(session) = self.peers.get_mut(&peer) else { return };
        // One message at most: once it is generated the state is in flight with our current
        // heads, and Automerge sends nothing more until the peer answers or the heads move. A
        // second call would only build the bloom filter again to say so.
        if let Some(message) = replica.doc().automerge().generate_sync_message(&mut session.state) {
            let expects_reply = !message.changes.is_empty() || !message.need.is_empty();
            outputs.push(SyncOutput::Send { peer, frame: Frame::Sync(message.encode()).encode(), expects_reply });
        }
    }
}

fn is_current_member(replica: &Replica, peer: &NodeId) -> bool {
    replica.members().get(peer).is_some_and(|member| member.is_current())
}
