//! The local HTTP API (docs/API.md): one handler per route of `protocol::route`'s table.
//!
//! The HTTP layer only decodes a route's typed request, asks the queue actor, and encodes its
//! typed answer; what each route does is one line in [`router`].

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, RawPathParams, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use axum::{Json, Router};
use meshwork_protocol::api::{AGENT_HEADER, ClaimTask, REQUEST_ID_HEADER, TaskStatus};
use meshwork_protocol::error::{ErrorBody, ErrorEnvelope};
use meshwork_protocol::event::{EVENTS_PATH, EventEnvelope, EventFilter, EventsQuery, LAST_EVENT_ID_HEADER};
use meshwork_protocol::limits::{API_BODY_BYTES_MAX, REQUEST_ID_BYTES_MAX};
use meshwork_protocol::route::{self, EXPORT_PATH, ExportQuery, ListTasks, Method, PathArgs, Route, Stopping};
use meshwork_protocol::{AgentName, ErrorCode};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, Subscription};
use crate::queue::{Encoded, ExportFormat, ListingAnswer, Mutation, Query, QueueHandle, Reply};

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    pub(crate) queue: QueueHandle,
    /// Cancelled by `POST /v1/shutdown`; ends every event stream too.
    pub(crate) shutdown: CancellationToken,
    pub(crate) events: EventBus,
    /// This node's id: an agent filter keeps the claims made here.
    pub(crate) node_id: String,
}

/// Who is speaking, from the request's headers.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) agent: AgentName,
    /// The `idempotency-key`, on mutations.
    pub(crate) request_id: Option<String>,
}

/// The agent name used when a request names none.
const ANONYMOUS_AGENT: &str = "anonymous";

/// Every route of the table, each answered by the queue actor.
pub(crate) fn router(state: ApiState) -> Router {
    let router = Router::new();
    let router =
        serve::<route::Status, _, _, _>(router, |s, _, (), _| async move { s.queue.query(Query::Status).await });
    let router = serve::<route::Shutdown, _, _, _>(router, |s, _, (), _| async move {
        s.shutdown.cancel();
        Ok(Stopping { stopping: true })
    });
    let router = serve::<route::TaskList, _, _, _>(router, |s, _, (), request| async move {
        let limit = request.limit;
        list(s, request, |reply| ListingAnswer::Json { limit, reply }).await
    });
    let router = serve::<route::TaskListPage, _, _, _>(router, |s, _, (), request| async move {
        let limit = request.limit;
        list(s, request, |reply| ListingAnswer::Page { limit, reply }).await
    });
    let router = serve::<route::TaskAdd, _, _, _>(router, |s, c, (), add| mutate(s, c, Mutation::AddTask(add)));
    let router = serve::<route::TaskShow, _, _, _>(router, |s, _, id, _| async move {
        s.queue.query(|reply| Query::Task(id, reply)).await
    });
    let router = serve::<route::TaskEdit, _, _, _>(router, |s, c, id, edit| mutate(s, c, Mutation::EditTask(id, edit)));
    let router =
        serve::<route::TaskCancel, _, _, _>(router, |s, c, id, note| mutate(s, c, Mutation::Cancel(id, note.text)));
    let router = serve::<route::Ready, _, _, _>(router, |s, _, (), ready| async move {
        let answer = |reply| ListingAnswer::Json { limit: ready.limit, reply };
        s.queue.query(|reply| Query::Ready { all: ready.all, answer: answer(reply) }).await
    });
    let router = serve::<route::ReadyPage, _, _, _>(router, |s, _, (), ready| async move {
        let answer = |reply| ListingAnswer::Page { limit: ready.limit, reply };
        s.queue.query(|reply| Query::Ready { all: ready.all, answer: answer(reply) }).await
    });
    let router =
        serve::<route::Claim, _, _, _>(router, |s, c, (), claim: ClaimTask| mutate(s, c, Mutation::Claim(claim)));
    let router = serve::<route::Renew, _, _, _>(router, |s, c, id, _| mutate(s, c, Mutation::Renew(id)));
    let router =
        serve::<route::Release, _, _, _>(router, |s, c, id, note| mutate(s, c, Mutation::Release(id, note.text)));
    let router = serve::<route::Progress, _, _, _>(router, |s, c, id, note| {
        mutate(s, c, Mutation::Progress(id, note.text, note.percent))
    });
    let router =
        serve::<route::Handoff, _, _, _>(router, |s, c, id, handoff| mutate(s, c, Mutation::Handoff(id, handoff)));
    let router = serve::<route::Done, _, _, _>(router, |s, c, id, note| mutate(s, c, Mutation::Done(id, note.text)));
    let router = serve::<route::Fail, _, _, _>(router, |s, c, id, note| mutate(s, c, Mutation::Fail(id, note.text)));
    let router = serve::<route::Approve, _, _, _>(router, |s, c, id, _| mutate(s, c, Mutation::Approve(id)));
    let router =
        serve::<route::Members, _, _, _>(router, |s, _, (), _| async move { s.queue.query(Query::Members).await });
    let router = serve::<route::Caps, _, _, _>(router, |s, _, (), _| async move { s.queue.query(Query::Caps).await });
    let router =
        serve::<route::MeshInvite, _, _, _>(
            router,
            |s, _, (), invite| async move { s.queue.invite(invite.ttl_ms).await },
        );
    let router =
        serve::<route::MeshJoin, _, _, _>(router, |s, _, (), join| async move { s.queue.join(join.token).await });
    let router = serve::<route::MeshRemove, _, _, _>(router, |s, _, (), remove| async move {
        let node = remove
            .node_id
            .parse()
            .map_err(|_| ErrorBody::invalid_input(format!("{:?} is not a node id", remove.node_id)))?;
        s.queue.remove_member(node).await
    });
    let router = serve::<route::Inbox, _, _, _>(router, |s, c, (), read| async move {
        s.queue.inbox_read(c.agent, read.unread).await
    });
    router
        .route(EXPORT_PATH, get(export))
        .route(EVENTS_PATH, get(events))
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .with_state(state)
}

/// What a handler of a route answering `T` may return: a `T`, or a `T` already encoded.
trait AnswerOf<T> {
    fn into_answer(self) -> Response;
}

impl<T: serde::Serialize> AnswerOf<T> for T {
    fn into_answer(self) -> Response {
        json_answer(&self)
    }
}

impl<T> AnswerOf<T> for Encoded<T> {
    fn into_answer(self) -> Response {
        ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.json).into_response()
    }
}

/// Registers route `R`: its request decoded from the path, the query or the body, its answer
/// encoded as JSON, a failure as the contract's error.
fn serve<R, F, Fut, A>(router: Router<ApiState>, handler: F) -> Router<ApiState>
where
    R: Route,
    F: Fn(ApiState, Caller, R::Path, R::Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<A, ErrorBody>> + Send + 'static,
    A: AnswerOf<R::Answer>,
{
    let handle = move |State(state): State<ApiState>,
                       headers: HeaderMap,
                       params: RawPathParams,
                       uri: Uri,
                       body: axum::body::Bytes| {
        let handler = handler.clone();
        async move {
            let answer = async {
                let caller = caller(&headers, R::MUTATES)?;
                let id = params.iter().find(|(name, _)| *name == "id").map(|(_, value)| value);
                let path = R::Path::parse(id).map_err(ErrorBody::invalid_input)?;
                let request = request::<R>(&uri, &body)?;
                handler(state, caller, path, request).await
            };
            match answer.await {
                Ok(answer) => answer.into_answer(),
                Err(error) => ApiError(error).into_response(),
            }
        }
    };
    let method: MethodRouter<ApiState> = match R::METHOD {
        Method::Get => get(handle),
        Method::Post => post(handle),
        Method::Patch => patch(handle),
    };
    router.route(R::PATH, method)
}

/// A successful answer as JSON. Encoded into a `Vec` rather than through axum's `Json`, whose
/// `BytesMut` writer costs a bounds check and a copy per token: a listing of 20,000 tasks is
/// 13 MB of JSON (docs/BENCHMARKS.md, "CLI calls").
fn json_answer<T: serde::Serialize>(answer: &T) -> Response {
    match serde_json::to_vec(answer) {
        Ok(bytes) => ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response(),
        Err(error) => {
            ApiError(ErrorBody::new(ErrorCode::Internal, format!("cannot encode the answer: {error}"))).into_response()
        }
    }
}

/// A route's request: the query string of a `GET`, else the JSON body (empty: the default).
fn request<R: Route>(uri: &Uri, body: &[u8]) -> Result<R::Request, ErrorBody> {
    if R::METHOD.request_in_query() {
        let query = uri.query().unwrap_or_default();
        return serde_urlencoded::from_str(query)
            .map_err(|error| ErrorBody::invalid_input(format!("malformed query {query:?}: {error}")));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(R::Request::default());
    }
    serde_json::from_slice(body).map_err(|error| ErrorBody::invalid_input(format!("malformed JSON body: {error}")))
}

async fn mutate(
    state: ApiState,
    caller: Caller,
    mutation: Mutation,
) -> Result<meshwork_protocol::api::LiveTaskView, ErrorBody> {
    state.queue.mutate(caller.agent, caller.request_id, mutation).await
}

/// `task list`, answered as `answer` says.
async fn list<T: Send + 'static>(
    state: ApiState,
    request: ListTasks,
    answer: impl FnOnce(Reply<T>) -> ListingAnswer,
) -> Result<T, ErrorBody> {
    let statuses = parse_statuses(request.status.as_deref())?;
    state.queue.query(|reply| Query::List { statuses, stale: request.stale, answer: answer(reply) }).await
}

/// `status=open,claimed`: the statuses a listing keeps; none named keeps all.
fn parse_statuses(text: Option<&str>) -> Result<Vec<TaskStatus>, ErrorBody> {
    let words = text.unwrap_or_default().split(',').filter(|word| !word.is_empty());
    words.map(|word| word.parse::<TaskStatus>().map_err(ErrorBody::invalid_input)).collect()
}

/// `GET /v1/export?format=F`: the export's bytes, JSON text or the Automerge document.
async fn export(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let answer = async {
        caller(&headers, false)?;
        let query: ExportQuery = serde_urlencoded::from_str(uri.query().unwrap_or_default())
            .map_err(|error| ErrorBody::invalid_input(format!("malformed query: {error}")))?;
        let (format, content_type) = match query.format.as_deref().unwrap_or("json") {
            "json" => (ExportFormat::Json, "application/json"),
            "jsonl" => (ExportFormat::Jsonl, "application/jsonl"),
            "automerge" => (ExportFormat::Automerge, "application/octet-stream"),
            other => {
                let message = format!("no export format {other:?} (json, jsonl, automerge)");
                return Err(ErrorBody::new(ErrorCode::Usage, message));
            }
        };
        let bytes = state.queue.query(|reply| Query::Export(format, reply)).await?;
        Ok(([("content-type", content_type)], bytes))
    };
    match answer.await {
        Ok(answer) => answer.into_response(),
        Err(error) => ApiError(error).into_response(),
    }
}

/// `GET /v1/events`: server-sent events, filtered by `?agent=` and `?kind=`, resumed after
/// `Last-Event-ID` (or `?after=`). Each event's `id:` is its id and `data:` its JSON.
async fn events(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let opened = (|| {
        caller(&headers, false)?;
        let query: EventsQuery = serde_urlencoded::from_str(uri.query().unwrap_or_default())
            .map_err(|error| ErrorBody::invalid_input(format!("malformed query: {error}")))?;
        let filter = EventFilter::new(&query, state.node_id.clone()).map_err(ErrorBody::invalid_input)?;
        let resume =
            match headers.get(LAST_EVENT_ID_HEADER) {
                Some(value) => {
                    Some(value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok()).ok_or_else(|| {
                        ErrorBody::invalid_input(format!("{LAST_EVENT_ID_HEADER} is not an event id"))
                    })?)
                }
                None => query.after,
            };
        Ok::<_, ErrorBody>((filter, resume))
    })();
    let (filter, resume) = match opened {
        Ok(opened) => opened,
        Err(error) => return ApiError(error).into_response(),
    };
    let subscription = state.events.subscribe(resume);
    let stream = event_stream(subscription, filter, state.shutdown.clone());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_millis(EVENTS_KEEP_ALIVE_MS)))
        .into_response()
}

/// How often an idle event stream sends a comment, so proxies and clients see it alive.
const EVENTS_KEEP_ALIVE_MS: u64 = 15_000;

/// The events of one subscription as SSE events: the replay, then the live stream, with a
/// gap wherever this subscriber fell behind; it ends when the node stops.
fn event_stream(
    subscription: Subscription,
    filter: EventFilter,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    struct Reader {
        replay: std::vec::IntoIter<Arc<EventEnvelope>>,
        live: broadcast::Receiver<Arc<EventEnvelope>>,
        filter: EventFilter,
        shutdown: CancellationToken,
        /// The id of the last event this subscriber was given or skipped.
        last_id: Option<u64>,
        /// Set when the live stream dropped events for this subscriber.
        lagged: bool,
    }
    let last_id = subscription.replay.last().map(|envelope| envelope.id);
    let reader = Reader {
        replay: subscription.replay.into_iter(),
        live: subscription.live,
        filter,
        shutdown,
        last_id,
        lagged: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        loop {
            let envelope = match reader.replay.next() {
                Some(envelope) => envelope,
                None => {
                    let received = tokio::select! {
                        received = reader.live.recv() => received,
                        () = reader.shutdown.cancelled() => return None,
                    };
                    match received {
                        Ok(envelope) if std::mem::take(&mut reader.lagged) => {
                            let after = reader.last_id.unwrap_or(0);
                            let missed = crate::events::gap(after, envelope.id);
                            // The gap first; the event itself comes on the next turn.
                            reader.replay = vec![envelope].into_iter();
                            missed
                        }
                        Ok(envelope) => envelope,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            reader.lagged = true;
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            };
            reader.last_id = Some(envelope.id);
            if !reader.filter.wants(&envelope.event) {
                continue;
            }
            let data = serde_json::to_string(&*envelope).unwrap_or_default();
            return Some((Ok(SseEvent::default().id(envelope.id.to_string()).data(data)), reader));
        }
    })
}

/// A failure as the API answers it.
struct ApiError(ErrorBody);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::Usage | ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorCode::NotOwner | ErrorCode::GateRefused => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::InvalidTransition => StatusCode::CONFLICT,
            ErrorCode::NodeUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorEnvelope { error: self.0 })).into_response()
    }
}

/// The speaking agent and, on mutations, the request id, from the headers. Queries need no
/// agent, but a malformed agent header is still the caller's mistake.
fn caller(headers: &HeaderMap, mutates: bool) -> Result<Caller, ErrorBody> {
    let text = |name: &str| -> Result<Option<String>, ErrorBody> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|text| Some(text.to_owned()))
                .map_err(|_| ErrorBody::new(ErrorCode::Usage, format!("header {name} is not text"))),
        }
    };
    let agent_text = text(AGENT_HEADER)?.unwrap_or_else(|| ANONYMOUS_AGENT.to_owned());
    let agent = AgentName::new(&agent_text).map_err(|error| ErrorBody::new(ErrorCode::Usage, error.to_string()))?;
    let request_id = text(REQUEST_ID_HEADER)?.filter(|_| mutates);
    if request_id.as_ref().is_some_and(|id| id.is_empty() || id.len() > REQUEST_ID_BYTES_MAX) {
        return Err(ErrorBody::over_limit("the request id", "REQUEST_ID_BYTES_MAX", REQUEST_ID_BYTES_MAX));
    }
    Ok(Caller { agent, request_id })
}
