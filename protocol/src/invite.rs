//! Invite tokens: what `mesh invite` prints and `mesh join` takes.
//!
//! A token names the mesh, the inviting node (its key: the joiner checks it in the libp2p
//! handshake), addresses to reach it, a one-time secret and an expiry. Text form:
//! `mwinvite1.` followed by the postcard encoding in unpadded base64url. The inviter keeps
//! only a hash of the secret ([`secret_hash`]), so its home never holds a usable token.

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::{INVITE_ADDRS_MAX, INVITE_TOKEN_BYTES_MAX};
use crate::{MeshId, NodeId};

/// The text every token starts with; the digit is the token's format version.
pub const INVITE_TOKEN_PREFIX: &str = "mwinvite1.";
/// Domain of the hash an inviter keeps of a secret.
pub const INVITE_SECRET_DOMAIN: &[u8] = b"meshwork/invite-secret/1";

/// An invite to join a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    pub mesh: MeshId,
    pub inviter: NodeId,
    /// Multiaddrs of the inviter, as text, best first.
    pub addrs: Vec<String>,
    pub secret: [u8; 32],
    /// Milliseconds since the Unix epoch after which the inviter refuses the token.
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("an invite token starts with {INVITE_TOKEN_PREFIX}")]
    Prefix,
    #[error("the invite token is longer than INVITE_TOKEN_BYTES_MAX ({INVITE_TOKEN_BYTES_MAX} bytes)")]
    TooLong,
    #[error("the invite token is damaged: {0}")]
    Damaged(String),
    #[error("the invite token carries more than INVITE_ADDRS_MAX ({INVITE_ADDRS_MAX}) addresses")]
    TooManyAddrs,
}

impl InviteToken {
    /// The token's text form.
    pub fn encode(&self) -> String {
        let mut token = self.clone();
        token.addrs.truncate(INVITE_ADDRS_MAX);
        // Serialising this plain struct into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&token).unwrap_or_default();
        format!("{INVITE_TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(&bytes))
    }

    pub fn decode(text: &str) -> Result<InviteToken, InviteError> {
        let text = text.trim();
        if text.len() > INVITE_TOKEN_BYTES_MAX {
            return Err(InviteError::TooLong);
        }
        let body = text.strip_prefix(INVITE_TOKEN_PREFIX).ok_or(InviteError::Prefix)?;
        let bytes = BASE64URL_NOPAD.decode(body.as_bytes()).map_err(|error| InviteError::Damaged(error.to_string()))?;
        let token: InviteToken = match postcard::take_from_bytes(&bytes) {
            Ok((token, [])) => token,
            Ok(_) => return Err(InviteError::Damaged("bytes after the token".to_owned())),
            Err(error) => return Err(InviteError::Damaged(error.to_string())),
        };
        if token.addrs.len() > INVITE_ADDRS_MAX {
            return Err(InviteError::TooManyAddrs);
        }
        Ok(token)
    }
}

/// What an inviter keeps of a secret: SHA-256 over a domain and the secret.
pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(INVITE_SECRET_DOMAIN);
    hasher.update(secret);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> InviteToken {
        InviteToken {
            mesh: MeshId([3; 16]),
            inviter: NodeId::from_public_key_bytes([5; 32]),
            addrs: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".to_owned()],
            secret: [9; 32],
            expires_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn tokens_round_trip_through_text() {
        let text = token().encode();
        assert!(text.starts_with(INVITE_TOKEN_PREFIX));
        assert_eq!(InviteToken::decode(&format!("  {text}\n")), Ok(token()));
    }

    #[test]
    fn damaged_tokens_are_refused() {
        let text = token().encode();
        assert_eq!(InviteToken::decode(&text[1..]), Err(InviteError::Prefix));
        assert!(matches!(InviteToken::decode(&text[..text.len() - 3]), Err(InviteError::Damaged(_))));
        assert!(matches!(InviteToken::decode(&format!("{text}AA")), Err(InviteError::Damaged(_))));
        assert_eq!(InviteToken::decode(&"x".repeat(INVITE_TOKEN_BYTES_MAX + 1)), Err(InviteError::TooLong));
    }

    #[test]
    fn the_secret_hash_differs_from_the_secret() {
        assert_ne!(secret_hash(&[9; 32]), [9; 32]);
        assert_ne!(secret_hash(&[9; 32]), secret_hash(&[8; 32]));
    }
}
