//! The invites this node issued (`HOME/invites.json`): a hash of each one-time secret, its
//! expiry, and who used it. The queue actor checks joiners against them.

use std::path::PathBuf;

use meshwork_protocol::ErrorCode;
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::limits::INVITES_KEPT_MAX;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::store::StoreHandle;

/// The invites this node issued: `HOME/invites.json`. Only a hash of each secret is kept.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Invites {
    pub(crate) entries: Vec<InviteEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InviteEntry {
    /// Hex of [`meshwork_protocol::invite::secret_hash`].
    pub(crate) secret_hash: String,
    pub(crate) created_ms: u64,
    pub(crate) expires_ms: u64,
    /// The node that used it; an invite admits one node, once.
    pub(crate) used_by: Option<String>,
}

impl Invites {
    pub(crate) fn path(home: &std::path::Path) -> PathBuf {
        home.join("invites.json")
    }

    /// Reads the invites; a damaged file is kept aside and no invite is honoured.
    pub(crate) fn load(path: &std::path::Path) -> Invites {
        let Ok(bytes) = std::fs::read(path) else { return Invites::default() };
        serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "the invites file is damaged; no open invite is honoured");
            let _ = std::fs::rename(path, path.with_extension("json.damaged"));
            Invites::default()
        })
    }

    /// Writes the invites through the store's writer (which fsyncs on its own thread) and
    /// waits until they are durable: an invite handed out must survive a restart, and one
    /// used must stay used.
    pub(crate) async fn save(&self, store: &StoreHandle, path: &std::path::Path) -> Result<(), ErrorBody> {
        // Plain structs of strings and numbers always serialize.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        let durable = store.replace_file(path.to_owned(), bytes).await;
        match durable.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ErrorBody::new(ErrorCode::Internal, format!("cannot save the invites: {error}"))),
            Err(_closed) => Err(ErrorBody::new(ErrorCode::Internal, "cannot save the invites: the store stopped")),
        }
    }

    /// Until when strangers may connect to present an invite. A used invite counts until it
    /// expires too, so that a second node presenting it hears "already used", not silence.
    pub(crate) fn open_until_ms(&self, now_ms: u64) -> u64 {
        self.entries.iter().filter(|entry| entry.expires_ms > now_ms).map(|entry| entry.expires_ms).max().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, entry: InviteEntry, now_ms: u64) {
        self.entries.push(entry);
        while self.entries.len() > INVITES_KEPT_MAX {
            // Forget a closed invite first (used or expired), else the oldest.
            let index = self
                .entries
                .iter()
                .position(|entry| entry.used_by.is_some() || entry.expires_ms <= now_ms)
                .unwrap_or(0);
            self.entries.remove(index);
        }
    }
}
