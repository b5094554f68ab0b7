// Wired into the node by the daemon module.

//! Durable storage of the queue document in the node home.
//!
//! The formats are `meshwork_protocol::storage`'s; this module does the I/O. Start at
//! [`open`]: it recovers what `doc/` holds and returns a [`StoreWriter`], which appends log
//! frames ([`StoreWriter::append`]) and compacts them into snapshots
//! ([`StoreWriter::compact`]). The daemon hands the writer to [`StoreHandle::spawn`], a
//! thread that batches concurrent submissions into one fsync (group commit). [`next_boot`]
//! hands out boot numbers from `home/boot`.
//!
//! A frame is acknowledged only after `sync_data` returned, so a crash or a kill -9 loses
//! nothing that was acknowledged (DESIGN "Storage"). A corrupt file is reported in
//! [`Recovered::skipped`] and left in place; recovery goes on with the other files.

mod boot;
mod codec;
mod fsio;
mod group;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use meshwork_protocol::storage::FormatError;

pub(crate) use boot::next_boot;
pub(crate) use group::StoreHandle;
pub(crate) use recover::{SkipReason, open};

/// A segment that holds at least this many bytes is closed and the next frames go to a new
/// one, so no segment grows without bound between compactions.
pub(crate) const SEGMENT_ROTATE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// How a store is written.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// See [`SEGMENT_ROTATE_BYTES_DEFAULT`].
    pub(crate) segment_rotate_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig { segment_rotate_bytes: SEGMENT_ROTATE_BYTES_DEFAULT }
    }
}

/// Why the store could not do what it was asked. I/O errors sit in an `Arc` so one failed
/// batch can answer each of its submissions with the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StoreError {
    #[error("cannot create the directory {path}: {source}; check that the node home is writable")]
    CreateDir { path: PathBuf, source: Arc<io::Error> },
    #[error("cannot read {path}: {source}; check its permissions, or move it out of the directory to start without it")]
    Read { path: PathBuf, source: Arc<io::Error> },
    #[error("cannot write {path}: {source}; free some disk space or check the permissions, then retry")]
    Write { path: PathBuf, source: Arc<io::Error> },
    #[error("cannot flush {path} to disk: {source}; the write is not durable, check the disk and retry")]
    Sync { path: PathBuf, source: Arc<io::Error> },
    #[error("cannot store into {path}: {reason}; split the change or the response into smaller ones")]
    OverLimit { path: PathBuf, reason: FormatError },
    #[error(
        "{path} holds a file numbered {sequence}, too high to number another after it; move the store files aside and restart the node"
    )]
    SequenceExhausted { path: PathBuf, sequence: u64 },
    #[error(
        "the boot counter {path} is corrupt ({reason}); let the node rebuild it from the document, or write a number above every boot this node used"
    )]
    BootCorrupt { path: PathBuf, reason: FormatError },
    #[error("the boot counter {path} is at its highest value; move the node to a new home with a fresh node key")]
    BootExhausted { path: PathBuf },
    #[error("cannot start the storage thread for {path}: {source}; check the process limits and restart the node")]
    SpawnThread { path: PathBuf, source: Arc<io::Error> },
    #[error("the storage thread for {path} has stopped; restart the node")]
    Closed { path: PathBuf },
}

impl StoreError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Read { path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Write { path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn sync(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Sync { path: path.into(), source: Arc::new(source) }
    }
}
