//! What runs on a libp2p stream: the long-lived sync link to one peer (`/meshwork/sync/1`)
//! and the two ends of a join (`/meshwork/join/1`). Frames are length-prefixed and capped
//! (protocol/src/wire.rs); the sync engine itself runs in the queue actor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::Stream;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::limits::JOIN_DOCUMENT_BYTES_MAX;
use meshwork_protocol::wire::{
    DOCUMENT_CHUNK_BYTES, Frame, FrameSplitter, JoinRefusal, JoinRequest, LENGTH_PREFIX_BYTES, WireError,
    length_prefixed,
};
use meshwork_protocol::{ErrorCode, NodeId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::NetEvents;

/// Frames waiting to be written to one peer; a peer that falls this far behind is cut off
/// (it catches up by sync when it reconnects).
pub(crate) const LINK_FRAMES_QUEUED: usize = 256;
/// Bytes read from a stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait for the other end of a join.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest first frame of a join: a request is a secret and a name.
const JOIN_REQUEST_BYTES_MAX: usize = 4096;

/// Bytes of sync frames (length prefixes included) written to and read from every peer since
/// the process started; `node status` reports them and `bench mesh` divides them by operations.
/// Per process, so a static: the links are the only writers.
static SYNC_BYTES_SENT: AtomicU64 = AtomicU64::new(0);
static SYNC_BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Sync bytes sent and received by this process so far.
pub(crate) fn sync_bytes() -> (u64, u64) {
    (SYNC_BYTES_SENT.load(Ordering::Relaxed), SYNC_BYTES_RECEIVED.load(Ordering::Relaxed))
}

fn frame_wire_bytes(frame: &[u8]) -> u64 {
    u64::try_from(LENGTH_PREFIX_BYTES + frame.len()).unwrap_or(u64::MAX)
}

/// Reads length-prefixed frames from a stream.
pub(crate) struct FrameReader<R> {
    reader: R,
    splitter: FrameSplitter,
    ready: VecDeque<Vec<u8>>,
    buffer: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(reader: R) -> FrameReader<R> {
        FrameReader {
            reader,
            splitter: FrameSplitter::default(),
            ready: VecDeque::new(),
            buffer: vec![0; READ_CHUNK_BYTES],
        }
    }

    /// The next whole frame; `Ok(None)` at a clean end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let read = self.reader.read(&mut self.buffer).await.map_err(LinkError::Io)?;
            if read == 0 {
                return Ok(None);
            }
            self.ready.extend(self.splitter.push(&self.buffer[..read]).map_err(LinkError::Wire)?);
        }
    }
}

/// Writes one frame with its length prefix.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> Result<(), LinkError> {
    let bytes = length_prefixed(frame).map_err(LinkError::Wire)?;
    writer.write_all(&bytes).await.map_err(LinkError::Io)?;
    writer.flush().await.map_err(LinkError::Io)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("stream error: {0}")]
    Io(std::io::Error),
    #[error("bad frame: {0}")]
    Wire(WireError),
}

/// Runs the sync link with one peer until either side ends it. The queue actor learns of
/// the link, gets each frame, and hands frames to send through the channel it is given;
/// dropping that channel closes the link.
#[cfg_attr(not(test), expect(dead_code, reason = "the network stops its links; tests run them to the end"))]
pub(crate) async fn run_sync_link<S>(peer: NodeId, link: u64, stream: S, heard: NetEvents)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run_sync_link_until(peer, link, stream, heard, CancellationToken::new()).await;
}

/// [`run_sync_link`] that also ends when `stop` is cancelled, telling the queue actor the
/// link closed.
pub(crate) async fn run_sync_link_until<S>(
    peer: NodeId,
    link: u64,
    stream: S,
    heard: NetEvents,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, mut writer) = stream.split();
    let (sender, mut outgoing) = mpsc::channel::<Vec<u8>>(LINK_FRAMES_QUEUED);
    if !heard.sync_opened(peer, link, sender).await {
        return;
    }
    let write = async {
        while let Some(frame) = outgoing.recv().await {
            write_frame(&mut writer, &frame).await?;
            SYNC_BYTES_SENT.fetch_add(frame_wire_bytes(&frame), Ordering::Relaxed);
        }
        let _ = writer.close().await;
        Ok::<(), LinkError>(())
    };
    let read = async {
        let mut frames = FrameReader::new(reader);
        loop {
            match frames.next().await {
                Ok(Some(frame)) => {
                    SYNC_BYTES_RECEIVED.fetch_add(frame_wire_bytes(&frame), Ordering::Relaxed);
                    heard.sync_frame(peer, link, frame).await;
                }
                Ok(None) => return,
                Err(LinkError::Wire(error)) => {
                    // An oversize length: the engine never sees the frame, the link counts it.
                    heard.sync_bad_frame(peer, link, error.to_string()).await;
                    return;
                }
                Err(LinkError::Io(error)) => {
                    debug!(%peer, %error, "sync stream ended");
                    return;
                }
            }
        }
    };
    tokio::select! {
        result = write => if let Err(error) = result { debug!(%peer, %error, "sync stream write failed") },
        () = read => {}
        () = stop.cancelled() => debug!(%peer, "sync link stopped"),
    }
    heard.sync_closed(peer, link).await;
}

/// Largest peer-exchange answer.
const PEERS_BYTES_MAX: usize = 256 * 1024;

/// The answering end of a peer exchange: one frame of JSON, node id -> addresses.
pub(crate) async fn send_peers(stream: Stream, peers: std::collections::BTreeMap<String, Vec<String>>) {
    let (_, mut writer) = stream.split();
    let bytes = serde_json::to_vec(&peers).unwrap_or_default();
    if bytes.len() <= PEERS_BYTES_MAX && write_frame(&mut writer, &bytes).await.is_ok() {
        let _ = writer.close().await;
    }
}

/// The asking end: the answer, or nothing when it is missing, oversize or malformed.
pub(crate) async fn receive_peers(stream: Stream) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    let (reader, _writer) = stream.split();
    let mut frames = FrameReader::new(reader);
    let bytes = tokio::time::timeout(Duration::from_secs(10), frames.next()).await.ok()?.ok()??;
    if bytes.len() > PEERS_BYTES_MAX {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// The inviter's end of a join: reads the request, asks the actor, answers with the
/// document or a refusal.
pub(crate) async fn serve_join(peer: NodeId, stream: Stream, heard: NetEvents) {
    let (reader, mut writer) = stream.split();
    let mut frames = FrameReader::new(reader);
    let request = match tokio::time::timeout(Duration::from_secs(10), frames.next()).await {
        Ok(Ok(Some(bytes))) if bytes.len() <= JOIN_REQUEST_BYTES_MAX => match Frame::decode(&bytes) {
            Ok(Frame::JoinRequest(request)) => request,
            _ => return,
        },
        _ => return,
    };
    let answer = heard.admit(peer, request).await;
    let result = match answer {
        Ok(document) => send_document(&mut writer, &document).await,
        Err(refusal) => write_frame(&mut writer, &Frame::JoinRefused(refusal).encode()).await,
    };
    if let Err(error) = result {
        debug!(%peer, %error, "the join answer was not delivered");
    }
    let _ = writer.close().await;
}

async fn send_document<W: AsyncWrite + Unpin>(writer: &mut W, document: &[u8]) -> Result<(), LinkError> {
    for chunk in document.chunks(DOCUMENT_CHUNK_BYTES) {
        write_frame(writer, &Frame::DocumentChunk(chunk.to_vec()).encode()).await?;
    }
    let total_bytes = u64::try_from(document.len()).unwrap_or(u64::MAX);
    write_frame(writer, &Frame::DocumentEnd { total_bytes }.encode()).await
}

/// The joiner's end: presents the secret and receives the mesh's document.
pub(crate) async fn request_join(stream: Stream, request: JoinRequest) -> Result<Vec<u8>, ErrorBody> {
    let (reader, mut writer) = stream.split();
    let unreachable = |what: String| ErrorBody::new(ErrorCode::NodeUnavailable, what).retryable();
    write_frame(&mut writer, &Frame::JoinRequest(request).encode())
        .await
        .map_err(|error| unreachable(format!("could not send the join request: {error}")))?;
    let mut frames = FrameReader::new(reader);
    let mut document = Vec::new();
    loop {
        let frame = match frames.next().await {
            Ok(Some(bytes)) => Frame::decode(&bytes),
            Ok(None) => return Err(unreachable("the inviter closed the join before answering".to_owned())),
            Err(error) => return Err(unreachable(format!("the join stream failed: {error}"))),
        };
        match frame {
            Ok(Frame::DocumentChunk(chunk)) => {
                if document.len() + chunk.len() > JOIN_DOCUMENT_BYTES_MAX {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidInput,
                        format!("the inviter's document is over JOIN_DOCUMENT_BYTES_MAX ({JOIN_DOCUMENT_BYTES_MAX})"),
                    ));
                }
                document.extend_from_slice(&chunk);
            }
            Ok(Frame::DocumentEnd { total_bytes }) if total_bytes == document.len() as u64 => return Ok(document),
            Ok(Frame::DocumentEnd { .. }) => {
                return Err(unreachable("the inviter's document arrived incomplete".to_owned()));
            }
            Ok(Frame::JoinRefused(JoinRefusal { code, message })) => return Err(ErrorBody::new(code, message)),
            Ok(Frame::Sync(_) | Frame::JoinRequest(_)) => {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidInput,
                    "the inviter answered with a frame of another kind",
                ));
            }
            Err(error) => return Err(ErrorBody::new(ErrorCode::InvalidInput, format!("bad frame in a join: {error}"))),
        }
    }
}
