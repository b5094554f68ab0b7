//! The address book: `HOME/network.json`, the listening ports chosen on the first start and
//! the addresses last seen for each peer, so a restarted node listens where its peers look
//! for it and redials them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use meshwork_protocol::limits::PEER_ADDRS_MAX;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Most peers the book remembers; beyond it the ones not seen longest are forgotten.
const PEERS_KEPT_MAX: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AddressBook {
    /// The UDP port of the QUIC listener, once chosen.
    pub(crate) quic_port: Option<u16>,
    /// The TCP port, once chosen.
    pub(crate) tcp_port: Option<u16>,
    /// Each peer's addresses (node id text -> multiaddrs), newest first.
    pub(crate) peers: BTreeMap<String, PeerEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerEntry {
    pub(crate) addrs: Vec<String>,
    pub(crate) last_seen_ms: u64,
}

impl AddressBook {
    /// Reads the book; a missing file is an empty book, a damaged one is reported and
    /// replaced by an empty book (it only costs finding the peers again).
    pub(crate) fn load(path: &Path) -> AddressBook {
        let Ok(bytes) = std::fs::read(path) else { return AddressBook::default() };
        match serde_json::from_slice(&bytes) {
            Ok(book) => book,
            Err(error) => {
                warn!(path = %path.display(), %error, "the address book is damaged; starting with an empty one");
                AddressBook::default()
            }
        }
    }

    /// The book's file content (`HOME/peers.json`), for the store's writer.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain maps of strings and numbers always serialize.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Notes addresses of a peer, newest first; true when the book changed.
    pub(crate) fn note(&mut self, peer: &str, addrs: &[Multiaddr], now_ms: u64) -> bool {
        let entry = self.peers.entry(peer.to_owned()).or_default();
        let before = entry.addrs.clone();
        for addr in addrs.iter().rev() {
            let text = addr.to_string();
            entry.addrs.retain(|known| *known != text);
            entry.addrs.insert(0, text);
        }
        entry.addrs.truncate(PEER_ADDRS_MAX);
        entry.last_seen_ms = now_ms;
        let changed = entry.addrs != before;
        if self.peers.len() > PEERS_KEPT_MAX
            && let Some(oldest) =
                self.peers.iter().min_by_key(|(_, entry)| entry.last_seen_ms).map(|(peer, _)| peer.clone())
        {
            self.peers.remove(&oldest);
        }
        changed
    }

    /// A peer's addresses that parse.
    pub(crate) fn addrs_of(&self, peer: &str) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|entry| entry.addrs.iter().filter_map(|addr| addr.parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Where the book lives in a home.
pub(crate) fn book_path(home: &Path) -> PathBuf {
    home.join("network.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_addresses_come_first_and_are_capped() {
        let mut book = AddressBook::default();
        let addrs: Vec<Multiaddr> =
            (0..PEER_ADDRS_MAX + 4).map(|port| format!("/ip4/10.0.0.1/tcp/{}", 1000 + port).parse().unwrap()).collect();
        assert!(book.note("peer", &addrs, 1));
        assert_eq!(book.addrs_of("peer").len(), PEER_ADDRS_MAX);
        let newest: Multiaddr = "/ip4/10.0.0.2/udp/9/quic-v1".parse().unwrap();
        assert!(book.note("peer", std::slice::from_ref(&newest), 2));
        assert_eq!(book.addrs_of("peer").first(), Some(&newest));
        assert!(!book.note("peer", std::slice::from_ref(&newest), 3), "the same address again changes nothing");
    }

    #[test]
    fn a_damaged_book_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = book_path(dir.path());
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(AddressBook::load(&path), AddressBook::default());
        let mut book = AddressBook { quic_port: Some(4001), ..AddressBook::default() };
        book.note("peer", &["/ip4/127.0.0.1/tcp/1".parse().unwrap()], 5);
        std::fs::write(&path, book.encode()).unwrap();
        assert_eq!(AddressBook::load(&path), book);
    }
}
