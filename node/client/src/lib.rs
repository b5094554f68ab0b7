//! A small HTTP/1.1 client of the node's local API on `HOME/node.sock` (docs/API.md).
//!
//! Every await that crosses the socket runs under a timeout. Failing to reach the node is
//! `NODE_UNAVAILABLE` and says how to start one; a failure the node reports keeps its code.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use meshwork_protocol::api::{AGENT_HEADER, REQUEST_ID_HEADER};
use meshwork_protocol::error::ErrorEnvelope;
use meshwork_protocol::event::{EVENTS_PATH, EventsQuery, LAST_EVENT_ID_HEADER};
use meshwork_protocol::route::{EXPORT_PATH, ExportQuery, Method as RouteMethod, PathArgs, Route};
use meshwork_protocol::storage::{LOCK_FILE_NAME, SOCKET_FILE_NAME};
use meshwork_protocol::{ErrorBody, ErrorCode};
use tokio::net::UnixStream;

mod events;

pub use events::EventStream;

/// How long connecting to the node's socket may take.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long one request may take, from sending it to the last byte of the answer.
const REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Largest answer the client reads: a whole export fits well below it.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How often `node stop` looks whether the node is gone.
const STOP_POLL_MS: u64 = 100;
/// Longest error body quoted back when the node's failure is not the API's JSON.
const QUOTED_BODY_CHARS_MAX: usize = 200;

/// The socket of the node that serves `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE_NAME)
}

/// A connection to one home's node, speaking for one agent.
#[derive(Debug)]
pub struct Client {
    home: PathBuf,
    sender: SendRequest<Full<Bytes>>,
    agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

/// A successful (2xx) answer of route `R`, not decoded yet.
#[derive(Debug)]
pub struct Reply<R: Route> {
    body: Body,
    route: PhantomData<R>,
}

impl<R: Route> Reply<R> {
    /// The answer's JSON text as the node sent it, in the pieces it arrived in: a long listing
    /// is written out piece by piece rather than copied into one buffer first.
    pub fn chunks(&self) -> &[Bytes] {
        &self.body.0
    }

    /// The answer's JSON text as the node sent it, in one piece.
    pub fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        self.body.joined()
    }

    /// The answer as the route's type; anything else is `INTERNAL`.
    pub fn decode(&self) -> Result<R::Answer, ErrorBody> {
        serde_json::from_slice(&self.bytes()).map_err(|error| {
            ErrorBody::new(ErrorCode::Internal, format!("the node's answer is not what this client reads: {error}"))
        })
    }
}

/// An answer's body: the data frames as they were read from the socket.
#[derive(Debug, Default)]
struct Body(Vec<Bytes>);

impl Body {
    fn joined(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.0.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [only] => std::borrow::Cow::Borrowed(only),
            chunks => std::borrow::Cow::Owned(chunks.concat()),
        }
    }
}

impl Client {
    /// Connects to the node of `home` within [`CONNECT_TIMEOUT_MS`].
    pub async fn connect(home: &Path) -> Result<Client, ErrorBody> {
        let socket = socket_path(home);
        let connecting = UnixStream::connect(&socket);
        let stream = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(connect_error(home, &error)),
            Err(_elapsed) => return Err(no_node(home)),
        };
        let handshake = http1::handshake(TokioIo::new(stream));
        let (sender, connection) = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), handshake)
            .await
            .map_err(|_elapsed| no_node(home))?
            .map_err(|error| unreachable_node(home, &error))?;
        // The connection drives the socket; it ends when the sender is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "local api connection ended");
            }
        });
        Ok(Client { home: home.to_owned(), sender, agent: None, request_id: None })
    }

    /// Sends `x-meshwork-agent: NAME` with every request.
    pub fn with_agent(mut self, agent: &str) -> Result<Client, ErrorBody> {
        self.agent = Some(header_value("--agent", agent)?);
        Ok(self)
    }

    /// Sends `idempotency-key: ID` with every request when an id is given.
    pub fn with_request_id(mut self, request_id: Option<&str>) -> Result<Client, ErrorBody> {
        self.request_id = request_id.map(|id| header_value("--request-id", id)).transpose()?;
        Ok(self)
    }

    /// Calls one route of the table and decodes its answer.
    pub async fn call<R: Route>(&mut self, path: &R::Path, request: &R::Request) -> Result<R::Answer, ErrorBody> {
        self.send::<R>(path, request).await?.decode()
    }

    /// Calls one route and keeps its answer undecoded: `--json` prints the node's own bytes,
    /// which [`Reply::decode`] reads when they are wanted.
    pub async fn send<R: Route>(&mut self, path: &R::Path, request: &R::Request) -> Result<Reply<R>, ErrorBody> {
        let target = path.fill(R::PATH);
        let (uri, body) = if R::METHOD.request_in_query() {
            let query = serde_urlencoded::to_string(request)
                .map_err(|error| ErrorBody::new(ErrorCode::Internal, format!("cannot encode the query: {error}")))?;
            (if query.is_empty() { target } else { format!("{target}?{query}") }, None)
        } else {
            let body = serde_json::to_vec(request)
                .map_err(|error| ErrorBody::new(ErrorCode::Internal, format!("cannot encode the request: {error}")))?;
            (target, Some(body))
        };
        let method = match R::METHOD {
            RouteMethod::Get => Method::GET,
            RouteMethod::Post => Method::POST,
            RouteMethod::Patch => Method::PATCH,
        };
        let body = self.request(method, &uri, body).await?;
        Ok(Reply { body, route: PhantomData })
    }

    /// `GET /v1/export?format=F`: the export's bytes as the node wrote them.
    pub async fn export(&mut self, query: &ExportQuery) -> Result<Bytes, ErrorBody> {
        let query = serde_urlencoded::to_string(query)
            .map_err(|error| ErrorBody::new(ErrorCode::Internal, format!("cannot encode the query: {error}")))?;
        let body = self.request(Method::GET, &format!("{EXPORT_PATH}?{query}"), None).await?;
        Ok(Bytes::from(body.joined().into_owned()))
    }

    /// `GET /v1/events`: the node's events from now on, or after `last_event_id` (what the
    /// node still keeps of them, with a gap event first when some are gone).
    pub async fn events(&mut self, query: &EventsQuery, last_event_id: Option<u64>) -> Result<EventStream, ErrorBody> {
        let query = serde_urlencoded::to_string(query)
            .map_err(|error| ErrorBody::new(ErrorCode::Internal, format!("cannot encode the query: {error}")))?;
        let uri = if query.is_empty() { EVENTS_PATH.to_owned() } else { format!("{EVENTS_PATH}?{query}") };
        let mut request = self.build_request(Method::GET, &uri, None)?;
        if let Some(id) = last_event_id {
            request.headers_mut().insert(LAST_EVENT_ID_HEADER, HeaderValue::from(id));
        }
        let opening = async {
            self.sender.ready().await?;
            self.sender.send_request(request).await
        };
        let response = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), opening).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(unreachable_node(&self.home, &error)),
            Err(_elapsed) => return Err(no_node(&self.home)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(EventStream::new(response.into_body()));
        }
        let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX).collect().await;
        Err(failure_from_answer(status, &body.map(|body| body.to_bytes()).unwrap_or_default()))
    }

    /// Sends one request and reads the whole answer within [`REQUEST_TIMEOUT_MS`]. A non-2xx
    /// answer becomes the node's [`ErrorBody`].
    async fn request(&mut self, method: Method, uri: &str, body: Option<Vec<u8>>) -> Result<Body, ErrorBody> {
        let request = self.build_request(method, uri, body)?;
        let exchange = exchange(&mut self.sender, request);
        match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange).await {
            Ok(Ok((status, body))) if status.is_success() => Ok(body),
            Ok(Ok((status, body))) => Err(failure_from_answer(status, &body.joined())),
            Ok(Err(Failure::Connection(error))) => Err(unreachable_node(&self.home, &error)),
            Ok(Err(Failure::Body(error))) => {
                Err(ErrorBody::new(ErrorCode::Internal, format!("cannot read the node's answer: {error}")))
            }
            Err(_elapsed) => Err(ErrorBody::new(
                ErrorCode::NodeUnavailable,
                format!(
                    "the node for {} did not answer within {} s; a repeated mutation is safe with --request-id",
                    self.home.display(),
                    REQUEST_TIMEOUT_MS / 1000
                ),
            )
            .retryable()),
        }
    }

    fn build_request(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ErrorBody> {
        let mut builder = Request::builder().method(method).uri(uri).header(HOST, "meshwork");
        if let Some(agent) = &self.agent {
            builder = builder.header(AGENT_HEADER, agent.clone());
        }
        if let Some(request_id) = &self.request_id {
            builder = builder.header(REQUEST_ID_HEADER, request_id.clone());
        }
        let bytes = match body {
            Some(body) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(bytes)).map_err(|error| {
            ErrorBody::new(ErrorCode::Internal, format!("cannot build the request for {uri}: {error}"))
        })
    }
}

/// Why an exchange failed: the connection, or reading an answer that did arrive.
enum Failure {
    Connection(hyper::Error),
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// Sends the request and reads the whole answer, at most [`RESPONSE_BYTES_MAX`] bytes, keeping
/// its data frames as they came (joining 13 MB of them was a copy for nothing).
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Body), Failure> {
    sender.ready().await.map_err(Failure::Connection)?;
    let response = sender.send_request(request).await.map_err(Failure::Connection)?;
    let status = response.status();
    let mut frames = Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
    let mut body = Body::default();
    while let Some(frame) = frames.frame().await {
        if let Ok(data) = frame.map_err(Failure::Body)?.into_data() {
            body.0.push(data);
        }
    }
    Ok((status, body))
}

/// A non-2xx answer: the API's `{"error": ...}`, else `INTERNAL` quoting what came.
fn failure_from_answer(status: StatusCode, body: &[u8]) -> ErrorBody {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => envelope.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let quoted: String = text.chars().take(QUOTED_BODY_CHARS_MAX).collect();
            ErrorBody::new(ErrorCode::Internal, format!("the node answered {status}: {}", quoted.trim()))
        }
    }
}

fn header_value(flag: &str, value: &str) -> Result<HeaderValue, ErrorBody> {
    HeaderValue::from_str(value).map_err(|_| {
        ErrorBody::invalid_input(format!("{flag} {value:?} holds characters a request header cannot carry"))
    })
}

/// The contract's answer when no node serves the home.
fn no_node(home: &Path) -> ErrorBody {
    let home = home.display();
    ErrorBody::new(
        ErrorCode::NodeUnavailable,
        format!("no node is running for {home}; start one with `meshwork node start --home {home}`"),
    )
    .retryable()
}

fn connect_error(home: &Path, error: &std::io::Error) -> ErrorBody {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => no_node(home),
        _ => unreachable_node(home, error),
    }
}

/// The node's socket is there but the node cannot be reached through it.
fn unreachable_node(home: &Path, error: &dyn std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NodeUnavailable,
        format!("cannot reach the node at {}: {error}", socket_path(home).display()),
    )
    .retryable()
}

/// Waits until the node of `home` no longer accepts connections, for at most `limit`.
pub async fn wait_until_stopped(home: &Path, limit: Duration) -> Result<(), ErrorBody> {
    let socket = socket_path(home);
    let polling = async {
        loop {
            let attempt = UnixStream::connect(&socket);
            match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), attempt).await {
                Ok(Ok(_still_serving)) => tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // The socket goes first; the home's lock only when the process exits. Wait for it
        // too, so that `node stop && node start` never finds the home still taken.
        while home_is_locked(home) {
            tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await;
        }
    };
    tokio::time::timeout(limit, polling).await.map_err(|_elapsed| {
        ErrorBody::new(
            ErrorCode::Internal,
            format!(
                "the node for {} is still running {} s after it was asked to stop",
                home.display(),
                limit.as_secs()
            ),
        )
    })
}

/// Whether a process holds the home's lock: a node that is running or still exiting. A lock
/// file that cannot be opened counts as free (there is nothing to wait for).
fn home_is_locked(home: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(home.join(LOCK_FILE_NAME)) else { return false };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

pub use meshwork_protocol::route::path_segment;

#[cfg(test)]
mod tests {
    use meshwork_protocol::TaskId;
    use meshwork_protocol::api::ClaimTask;
    use meshwork_protocol::route;

    use super::*;

    /// Path segments keep ids readable and escape everything that could change the route.
    #[test]
    fn path_segments_escape_dots_slashes_and_queries() {
        assert_eq!(path_segment("WRK-1_a"), "WRK-1_a");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a/b?c=d"), "a%2Fb%3Fc%3Dd");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    /// A failed answer keeps the node's code; one that is not the API's JSON is INTERNAL.
    #[test]
    fn failed_answers_keep_the_node_error_code() {
        let body = br#"{"error":{"code":"NOT_OWNER","message":"held by bob@b","retryable":false}}"#;
        let error = failure_from_answer(StatusCode::FORBIDDEN, body);
        assert_eq!((error.code, error.message.as_str()), (ErrorCode::NotOwner, "held by bob@b"));
        let error = failure_from_answer(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(error.code, ErrorCode::Internal);
        assert_eq!(error.message, "the node answered 502 Bad Gateway: <html>bad gateway</html>");
    }

    /// With no socket in the home, connecting says how to start a node and exits 3.
    #[test]
    fn missing_node_is_node_unavailable_and_says_how_to_start_one() {
        let home = tempfile::tempdir().map(|dir| dir.path().to_owned()).unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let outcome = runtime.map(|runtime| runtime.block_on(Client::connect(&home)).map(|_| ()));
        let Ok(Err(error)) = outcome else { panic!("connected without a node: {outcome:?}") };
        assert_eq!((error.code, error.code.exit_status(), error.retryable), (ErrorCode::NodeUnavailable, 3, true));
        let home = home.display();
        assert_eq!(
            error.message,
            format!("no node is running for {home}; start one with `meshwork node start --home {home}`")
        );
    }

    /// A tiny fake node on a real socket: the client sends the agent, the request id and the
    /// JSON body, and reads a 2xx answer and an API error.
    #[test]
    fn requests_carry_agent_request_id_and_body() {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            panic!("no runtime")
        };
        let Ok(dir) = tempfile::tempdir() else { panic!("no temp dir") };
        let outcome = runtime.block_on(exchange_with_fake_node(dir.path()));
        expect_test::expect![[r#"
            Ok(
                (
                    "POST /v1/claim HTTP/1.1|x-meshwork-agent: claude-1|idempotency-key: r-7|{\"task\":null,\"next\":true,\"quorum\":false,\"fast\":false,\"timeout_ms\":null}",
                    "{\"id\":\"W-1\"}",
                    Err(
                        ErrorBody {
                            code: Conflict,
                            message: "held",
                            retryable: false,
                        },
                    ),
                ),
            )
        "#]]
        .assert_debug_eq(&outcome);
    }

    /// Serves two requests with canned answers and returns what the client sent first.
    async fn exchange_with_fake_node(home: &Path) -> Result<(String, String, Result<(), ErrorBody>), String> {
        let listener = tokio::net::UnixListener::bind(socket_path(home)).map_err(|e| e.to_string())?;
        let server = tokio::spawn(async move { fake_node(listener).await });
        let client = Client::connect(home).await.map_err(|e| e.to_string())?;
        let mut client = client.with_agent("claude-1").and_then(|c| c.with_request_id(Some("r-7")));
        let client = client.as_mut().map_err(|e| e.to_string())?;
        let claim = ClaimTask { next: true, ..ClaimTask::default() };
        let first = client.send::<route::Claim>(&(), &claim).await.map_err(|e| e.to_string())?;
        let shown = TaskId::new("W-2").map_err(|e| e.to_string())?;
        let second = client.send::<route::TaskShow>(&shown, &route::Empty {}).await.map(|_| ());
        let seen = server.await.map_err(|e| e.to_string())?;
        Ok((seen, String::from_utf8_lossy(&first.bytes()).into_owned(), second))
    }

    async fn fake_node(listener: tokio::net::UnixListener) -> String {
        use tokio::io::AsyncWriteExt;
        let Ok((mut stream, _)) = listener.accept().await else { return String::new() };
        let mut seen = String::new();
        let answers = [
            ("200 OK", r#"{"id":"W-1"}"#),
            ("409 Conflict", r#"{"error":{"code":"CONFLICT","message":"held","retryable":false}}"#),
        ];
        for (index, (status, body)) in answers.into_iter().enumerate() {
            let request = read_request(&mut stream).await;
            if index == 0 {
                seen = summarize_request(&request);
            }
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        seen
    }

    /// Reads one request: the head up to its blank line, then `content-length` bytes.
    async fn read_request(stream: &mut tokio::net::UnixStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut raw = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|length| length.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&raw).into_owned(),
                Ok(read) => raw.extend_from_slice(&buffer[..read]),
            }
        }
    }

    /// The request line, the meshwork headers and the body, joined by `|`.
    fn summarize_request(raw: &str) -> String {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let mut parts: Vec<String> = lines.next().map(str::to_owned).into_iter().collect();
        parts.extend(
            lines
                .filter(|line| line.starts_with(AGENT_HEADER) || line.starts_with(REQUEST_ID_HEADER))
                .map(str::to_owned),
        );
        parts.push(body.to_owned());
        parts.join("|")
    }
}
