//! Who speaks: nodes (ed25519 keys, shown as libp2p PeerIds), agents (`agent@node`) and meshes.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::NAME_BYTES_MAX;

/// A node's public identity: its ed25519 public key.
///
/// Shown everywhere as the libp2p PeerId of that key (`12D3KooW...`): an identity multihash
/// of the protobuf-encoded public key, so the key can be read back from the text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> NodeId {
        NodeId(bytes)
    }

    pub fn public_key_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The libp2p PeerId of this key.
    pub fn peer_id(&self) -> Result<libp2p_identity::PeerId, IdentityError> {
        let key =
            libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey)?;
        Ok(libp2p_identity::PublicKey::from(key).to_peer_id())
    }

    /// Checks a signature made by this node over `message` (strict: no malleable encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    }
}

impl NodeId {
    /// The bytes of this key's PeerId: an identity multihash (code 0, length 36) of the
    /// protobuf-encoded ed25519 key (field 1: type 1, field 2: the 32 key bytes).
    fn peer_id_bytes(&self) -> [u8; 38] {
        let mut bytes = [0u8; 38];
        bytes[..6].copy_from_slice(&[0x00, 36, 0x08, 0x01, 0x12, 0x20]);
        bytes[6..].copy_from_slice(&self.0);
        bytes
    }
}

impl fmt::Display for NodeId {
    /// Built from the bytes, without decompressing the curve point as [`NodeId::peer_id`]
    /// does: ids are shown in every export and key, and that check cost 50 µs each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match libp2p_identity::PeerId::from_bytes(&self.peer_id_bytes()) {
            Ok(peer_id) => write!(f, "{peer_id}"),
            Err(_) => write!(f, "invalid-key-{}", hex(&self.0)),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    /// Parses a PeerId text that embeds an ed25519 key (every meshwork node id does).
    fn from_str(text: &str) -> Result<NodeId, IdentityError> {
        let peer_id = libp2p_identity::PeerId::from_str(text).map_err(|_| IdentityError::BadNodeId)?;
        NodeId::from_peer_id(&peer_id)
    }
}

impl NodeId {
    /// The node id inside a PeerId that embeds an ed25519 key; other PeerIds are refused.
    pub fn from_peer_id(peer_id: &libp2p_identity::PeerId) -> Result<NodeId, IdentityError> {
        // An ed25519 PeerId is an identity multihash: code 0x00, a one-byte length, then
        // the protobuf-encoded public key itself.
        let multihash = peer_id.to_bytes();
        let digest = match multihash.as_slice() {
            [0x00, length, digest @ ..] if usize::from(*length) == digest.len() => digest,
            _ => return Err(IdentityError::BadNodeId),
        };
        let key = libp2p_identity::PublicKey::try_decode_protobuf(digest)
            .map_err(|_| IdentityError::BadNodeId)?
            .try_into_ed25519()
            .map_err(|_| IdentityError::BadNodeId)?;
        Ok(NodeId(key.to_bytes()))
    }
}

/// A node's secret key. Never leaves the node's home.
pub struct NodeKey {
    signing: SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

impl NodeKey {
    /// A key from 32 secret bytes; the caller brings the randomness.
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey { signing: SigningKey::from_bytes(&seed) }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The key file's content: the libp2p protobuf encoding of the keypair, so libp2p
    /// tools and the node's swarm read the very same file.
    pub fn to_libp2p_protobuf(&self) -> Result<Vec<u8>, IdentityError> {
        libp2p_identity::Keypair::ed25519_from_bytes(self.signing.to_bytes())
            .map_err(|_| IdentityError::BadSecretKey)?
            .to_protobuf_encoding()
            .map_err(|_| IdentityError::BadSecretKey)
    }

    pub fn from_libp2p_protobuf(bytes: &[u8]) -> Result<NodeKey, IdentityError> {
        let keypair = libp2p_identity::Keypair::from_protobuf_encoding(bytes)
            .map_err(|_| IdentityError::BadSecretKey)?
            .try_into_ed25519()
            .map_err(|_| IdentityError::BadSecretKey)?;
        let secret = keypair.secret();
        let seed: [u8; 32] = secret.as_ref().try_into().map_err(|_| IdentityError::BadSecretKey)?;
        let key = NodeKey::from_seed(seed);
        if key.node_id().public_key_bytes() != &keypair.public().to_bytes() {
            return Err(IdentityError::BadSecretKey);
        }
        Ok(key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
    #[error("not a meshwork node id (a libp2p PeerId of an ed25519 key, `12D3KooW...`)")]
    BadNodeId,
    #[error("the key file does not hold a libp2p ed25519 keypair")]
    BadSecretKey,
    #[error("{what} must be 1 to {max} bytes of letters, digits, `.`, `_` or `-`: {value:?}")]
    BadName { what: &'static str, max: usize, value: String },
    #[error("not an agent id of the form `agent@node`: {0:?}")]
    BadAgentId(String),
    #[error("not a mesh id (32 hex digits): {0:?}")]
    BadMeshId(String),
}

/// Checks a short name: task ids, agent names, node names.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let well_formed = !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if well_formed {
        Ok(())
    } else {
        Err(IdentityError::BadName { what, max: NAME_BYTES_MAX, value: value.to_owned() })
    }
}

/// The name of a local agent (`claude-1`); unique only together with its node.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    pub fn new(name: &str) -> Result<AgentName, IdentityError> {
        validate_name("an agent name", name)?;
        Ok(AgentName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = IdentityError;
    fn try_from(name: String) -> Result<AgentName, IdentityError> {
        AgentName::new(&name)
    }
}

impl From<AgentName> for String {
    fn from(name: AgentName) -> String {
        name.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An agent's identity, `agent@node`: the node vouches for the agent by signing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct AgentId {
    pub agent: AgentName,
    pub node: NodeId,
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.agent, self.node)
    }
}

impl FromStr for AgentId {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<AgentId, IdentityError> {
        let (agent, node) = text.split_once('@').ok_or_else(|| IdentityError::BadAgentId(text.to_owned()))?;
        Ok(AgentId { agent: AgentName::new(agent)?, node: node.parse()? })
    }
}

/// A mesh's id: the first 16 bytes of a hash over its founder's key and founding stamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeshId(pub [u8; 16]);

impl MeshId {
    /// The id a founder's first membership record must carry. Binding the id to the founder
    /// makes the founding record self-certifying: nobody else can found the same mesh.
    pub fn derive(founder: &NodeId, founded_at_ms: u64) -> MeshId {
        let mut hasher = Sha256::new();
        hasher.update(b"meshwork-mesh-id-v1\0");
        hasher.update(founder.public_key_bytes());
        hasher.update(founded_at_ms.to_be_bytes());
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        MeshId(id)
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

impl FromStr for MeshId {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<MeshId, IdentityError> {
        let bytes = unhex(text).ok_or_else(|| IdentityError::BadMeshId(text.to_owned()))?;
        let id: [u8; 16] = bytes.try_into().map_err(|_| IdentityError::BadMeshId(text.to_owned()))?;
        Ok(MeshId(id))
    }
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Bytes of a lowercase or uppercase hex string, or `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.as_bytes().chunks(2).map(|pair| Some((digit(pair[0])? as u8) << 4 | digit(pair[1])? as u8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node id round-trips through its PeerId text and matches libp2p's own derivation.
    #[test]
    fn node_id_is_the_libp2p_peer_id_of_the_key() {
        let key = NodeKey::from_seed([7; 32]);
        let text = key.node_id().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<NodeId>(), Ok(key.node_id()));
        let libp2p_keypair = libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).unwrap();
        assert_eq!(libp2p_keypair.public().to_peer_id().to_string(), text);
    }

    /// The id is shown from its bytes, without libp2p's key check: the same text for any key.
    #[test]
    fn a_shown_node_id_is_libp2ps_peer_id_text_for_every_key() {
        for seed in 0..=255u8 {
            let node = NodeKey::from_seed([seed; 32]).node_id();
            assert_eq!(node.to_string(), node.peer_id().unwrap().to_string());
        }
    }

    /// The key file is a libp2p protobuf keypair and reads back to the same key.
    #[test]
    fn key_file_round_trips_through_libp2p_encoding() {
        let key = NodeKey::from_seed([9; 32]);
        let bytes = key.to_libp2p_protobuf().unwrap();
        let back = NodeKey::from_libp2p_protobuf(&bytes).unwrap();
        assert_eq!(back.node_id(), key.node_id());
        assert!(NodeKey::from_libp2p_protobuf(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn agent_id_parses_agent_at_node() {
        let node = NodeKey::from_seed([1; 32]).node_id();
        let id: AgentId = format!("claude-1@{node}").parse().unwrap();
        assert_eq!(id.agent.as_str(), "claude-1");
        assert_eq!(id.node, node);
        assert!("no-at-sign".parse::<AgentId>().is_err());
        assert!(format!("bad name@{node}").parse::<AgentId>().is_err());
    }

    #[test]
    fn names_refuse_empty_long_and_odd_characters() {
        assert!(validate_name("x", "WRK-664").is_ok());
        assert!(validate_name("x", "").is_err());
        assert!(validate_name("x", &"a".repeat(NAME_BYTES_MAX + 1)).is_err());
        assert!(validate_name("x", "a/b").is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let key = NodeKey::from_seed([3; 32]);
        let signature = key.sign(b"hello");
        assert!(key.node_id().verify(b"hello", &signature));
        assert!(!key.node_id().verify(b"hellp", &signature));
        assert!(!NodeKey::from_seed([4; 32]).node_id().verify(b"hello", &signature));
    }
}
