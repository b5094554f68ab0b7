//! The node's event stream (`GET /v1/events`, server-sent events) as typed events.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use meshwork_protocol::event::EventEnvelope;
use meshwork_protocol::{ErrorBody, ErrorCode};

/// How long a stream may stay silent: the node sends a keep-alive comment every 15 s, so
/// three missed ones mean it is gone.
pub(crate) const EVENTS_IDLE_MS_MAX: u64 = 45_000;
/// Longest SSE block (one event) the client buffers.
const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// The events of one subscription, in the order the node published them.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
}

impl EventStream {
    pub(crate) fn new(body: Incoming) -> EventStream {
        EventStream { body, buffer: Vec::new() }
    }

    /// The next event; `None` once the node ended the stream (it stopped). A node silent for
    /// longer than its keep-alives allow is `NODE_UNAVAILABLE`.
    ///
    /// # Cancel safety
    /// Cancel safe: a frame read is kept in the buffer until a whole event is in it.
    pub async fn next(&mut self) -> Option<Result<EventEnvelope, ErrorBody>> {
        loop {
            if let Some(block) = take_block(&mut self.buffer) {
                match parse_block(&block) {
                    Some(parsed) => return Some(parsed),
                    None => continue,
                }
            }
            if self.buffer.len() > EVENT_BYTES_MAX {
                return Some(Err(ErrorBody::new(ErrorCode::Internal, "an event from the node is too long")));
            }
            let frame = tokio::time::timeout(Duration::from_millis(EVENTS_IDLE_MS_MAX), self.body.frame()).await;
            match frame {
                Err(_elapsed) => {
                    let message = format!("the node sent nothing for {} s", EVENTS_IDLE_MS_MAX / 1000);
                    return Some(Err(ErrorBody::new(ErrorCode::NodeUnavailable, message).retryable()));
                }
                Ok(None) => return None,
                Ok(Some(Err(error))) => {
                    let message = format!("the event stream broke: {error}");
                    return Some(Err(ErrorBody::new(ErrorCode::NodeUnavailable, message).retryable()));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Takes one SSE block (up to and without its blank line) off the front of the buffer.
fn take_block(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buffer.windows(2).position(|pair| pair == b"\n\n")?;
    let block = buffer[..end].to_vec();
    buffer.drain(..end + 2);
    Some(block)
}

/// One SSE block as an event: its `data:` lines joined. A block of comments only (the
/// keep-alive) is `None`.
fn parse_block(block: &[u8]) -> Option<Result<EventEnvelope, ErrorBody>> {
    let text = String::from_utf8_lossy(block);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    if data.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&data.join("\n")).map_err(|error| {
        ErrorBody::new(ErrorCode::Internal, format!("an event from the node is not what this client reads: {error}"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_on_blank_lines_and_keep_alives_are_skipped() {
        // Goal: the client reads exactly the SSE the node writes, comments included.
        let mut buffer =
            b": keep-alive\n\nid: 5\ndata: {\"id\":5,\"at\":\"t\",\"kind\":\"gap\",\"after\":1,\"before\":5}\n\nid: 6"
                .to_vec();
        let first = take_block(&mut buffer).unwrap_or_default();
        assert!(parse_block(&first).is_none());
        let second = take_block(&mut buffer).unwrap_or_default();
        let event = parse_block(&second).and_then(Result::ok).map(|envelope| envelope.id);
        assert_eq!(event, Some(5));
        assert_eq!(take_block(&mut buffer), None, "an unfinished block waits for more");
        assert_eq!(buffer, b"id: 6");
    }
}
