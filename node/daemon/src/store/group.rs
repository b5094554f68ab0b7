//! Group commit: one thread owns the writer; concurrent submissions share its fsyncs.
//!
//! fsync blocks for milliseconds, so it runs on a dedicated std thread, never on a tokio
//! worker. The thread takes every submission already queued, writes them in the order they
//! were received, fsyncs once, then answers them all.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use meshwork_protocol::storage::{Frame, RequestEntry};

use super::StoreError;
use super::writer::{Counters, StoreCounters, StoreWriter};

/// Capacity of the submission queue: a submitter waits for room beyond this many.
pub(crate) const SUBMISSIONS_QUEUED_MAX: usize = 1024;

/// Most commands one batch takes, so a steady stream of submissions still gets answers.
const BATCH_COMMANDS_MAX: usize = SUBMISSIONS_QUEUED_MAX;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// What the storage thread is asked to do.
#[derive(Debug)]
enum Command {
    Append {
        frames: Vec<Frame>,
        reply: Reply,
    },
    Compact {
        snapshot: Vec<u8>,
        requests: Vec<RequestEntry>,
        reply: Reply,
    },
    /// Write a file of the home beside the store (a sync state, a start cache, the invites)
    /// durably, in order with everything queued before.
    ReplaceFile {
        path: PathBuf,
        bytes: Vec<u8>,
        reply: Reply,
    },
    /// Answer everything before, then stop.
    Shutdown {
        reply: Reply,
    },
}

impl Command {
    fn refuse(self, error: StoreError) {
        let (Command::Append { reply, .. }
        | Command::Compact { reply, .. }
        | Command::ReplaceFile { reply, .. }
        | Command::Shutdown { reply }) = self;
        let _ = reply.send(Err(error));
    }
}

/// The storage thread, reached through a cloneable handle over a bounded channel.
#[derive(Debug, Clone)]
pub(crate) struct StoreHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    dir: PathBuf,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl StoreHandle {
    /// Starts the storage thread, which owns `writer` until [`StoreHandle::shutdown`].
    pub(crate) fn spawn(writer: StoreWriter) -> Result<StoreHandle, StoreError> {
        let dir = writer.dir().to_owned();
        let counters = writer.shared_counters();
        let (commands, receiver) = mpsc::channel(SUBMISSIONS_QUEUED_MAX);
        let span = tracing::info_span!("store", dir = %dir.display());
        let thread = std::thread::Builder::new()
            .name("meshwork-store".to_owned())
            .spawn(move || span.in_scope(|| run(writer, receiver)))
            .map_err(|source| StoreError::SpawnThread { path: dir.clone(), source: source.into() })?;
        Ok(StoreHandle { commands, counters, dir, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Queues `frames` to be appended in one piece. Submissions are written in the order they
    /// are queued; the receiver resolves once the frames are durable (or with the error of
    /// their batch). A frame over a limit is refused at once, without touching the batch.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it resolves, nothing was queued.
    pub(crate) async fn submit(&self, frames: Vec<Frame>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        match frames.iter().find_map(|frame| frame.check().err()) {
            Some(reason) => {
                let _ = reply.send(Err(StoreError::OverLimit { path: self.dir.clone(), reason }));
            }
            None => self.send(Command::Append { frames, reply }).await,
        }
        answer
    }

    /// [`StoreHandle::submit`], then waits until the frames are durable.
    ///
    /// # Cancel safety
    /// Not cancel safe: once queued the frames are written even if the future is dropped.
    pub(crate) async fn write(&self, frames: Vec<Frame>) -> Result<(), StoreError> {
        let answer = self.submit(frames).await;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Queues a compaction after every submission queued before it; see
    /// [`StoreWriter::compact`] for what `snapshot` must hold.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it resolves, nothing was queued.
    pub(crate) async fn compact(
        &self,
        snapshot: Vec<u8>,
        requests: Vec<RequestEntry>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Compact { snapshot, requests, reply }).await;
        answer
    }

    /// Queues a durable write of a whole file (through a temporary file, fsync and rename),
    /// after every submission queued before; the receiver resolves once it is durable. The
    /// actors hand their files here so that no actor waits for an fsync.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it resolves, nothing was queued.
    pub(crate) async fn replace_file(
        &self,
        path: PathBuf,
        bytes: Vec<u8>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ReplaceFile { path, bytes, reply }).await;
        answer
    }

    /// [`StoreHandle::replace_file`] for a writer that must not wait at all, not even for room
    /// in the queue: false when the write was not queued (the queue is full, or the thread
    /// stopped), so the caller keeps its file dirty and tries again later. Nobody learns when
    /// the write is durable: for files that only save time (the address book).
    pub(crate) fn try_replace_file(&self, path: PathBuf, bytes: Vec<u8>) -> bool {
        let (reply, _answer) = oneshot::channel();
        self.commands.try_send(Command::ReplaceFile { path, bytes, reply }).is_ok()
    }

    /// Answers every submission queued before, stops the thread and joins it. Later
    /// submissions, from any clone, get [`StoreError::Closed`]. Calling it again is harmless.
    pub(crate) async fn shutdown(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let flushed = match self.commands.send(Command::Shutdown { reply }).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(self.closed())),
            // The thread already stopped: an earlier shutdown, or a panic the join reports.
            Err(_) => Ok(()),
        };
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let joined = match thread {
            Some(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(self.closed()),
            },
            None => Ok(()),
        };
        flushed.and(joined)
    }

    /// What the writer did so far, including [`StoreCounters::log_bytes`] for deciding when
    /// to compact.
    pub(crate) fn counters(&self) -> StoreCounters {
        self.counters.load()
    }

    async fn send(&self, command: Command) {
        if let Err(mpsc::error::SendError(command)) = self.commands.send(command).await {
            command.refuse(self.closed());
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed { path: self.dir.clone() }
    }
}

/// The storage thread: batches until a shutdown or until every handle is gone.
fn run(mut writer: StoreWriter, mut receiver: mpsc::Receiver<Command>) {
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = receiver.blocking_recv() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        shutdown = run_batch(&mut writer, batch);
    }
    receiver.close();
    let closed = StoreError::Closed { path: writer.dir().to_owned() };
    while let Ok(late) = receiver.try_recv() {
        late.refuse(closed.clone());
    }
    drop(writer);
    if let Some(reply) = shutdown {
        let _ = reply.send(Ok(()));
    }
}

/// Runs a batch in order: consecutive appends share one write and one fsync. Returns the
/// shutdown reply if the batch asked to stop.
fn run_batch(writer: &mut StoreWriter, batch: Vec<Command>) -> Option<Reply> {
    let mut pending: Vec<(Vec<Frame>, Reply)> = Vec::new();
    let mut commands = batch.into_iter();
    while let Some(command) = commands.next() {
        match command {
            Command::Append { frames, reply } => pending.push((frames, reply)),
            Command::Compact { snapshot, requests, reply } => {
                flush(writer, &mut pending);
                let result = writer.compact(&snapshot, &requests);
                if let Err(error) = &result {
                    tracing::warn!("{error}");
                }
                let _ = reply.send(result);
            }
            Command::ReplaceFile { path, bytes, reply } => {
                flush(writer, &mut pending);
                let result = replace_file(&path, &bytes);
                if let Err(error) = &result {
                    tracing::warn!("{error}");
                }
                let _ = reply.send(result);
            }
            Command::Shutdown { reply } => {
                flush(writer, &mut pending);
                let closed = StoreError::Closed { path: writer.dir().to_owned() };
                commands.for_each(|late| late.refuse(closed.clone()));
                return Some(reply);
            }
        }
    }
    flush(writer, &mut pending);
    None
}

/// Writes `path` whole and durably, creating its directory if needed.
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|name| name.to_str())) else {
        return Err(StoreError::write(path, std::io::Error::other("not a file path")));
    };
    std::fs::create_dir_all(dir).map_err(|source| StoreError::write(dir, source))?;
    super::fsio::replace_durably(dir, name, |out| out.write_all(bytes))
}

/// Appends every pending submission with one fsync and answers each with the outcome.
fn flush(writer: &mut StoreWriter, pending: &mut Vec<(Vec<Frame>, Reply)>) {
    if pending.is_empty() {
        return;
    }
    let result = writer.append_all(pending.iter().flat_map(|(frames, _)| frames.iter()));
    if let Err(error) = &result {
        tracing::warn!(submissions = pending.len(), "{error}");
    }
    writer.count_submissions(pending.len() as u64);
    for (_, reply) in pending.drain(..) {
        let _ = reply.send(result.clone());
    }
}
