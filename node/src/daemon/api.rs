//! The local HTTP API (docs/API.md): thin handlers that turn requests into queue commands.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query as QueryString, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshwork_protocol::api::{
    AGENT_HEADER, AddTask, ClaimTask, EditTask, HandoffRequest, InboxRead, InviteRequest, JoinMesh, REQUEST_ID_HEADER,
    RemoveMember, TaskNote, TaskStatus,
};
use meshwork_protocol::error::{ErrorBody, ErrorEnvelope};
use meshwork_protocol::limits::{API_BODY_BYTES_MAX, REQUEST_ID_BYTES_MAX};
use meshwork_protocol::{AgentName, ErrorCode, TaskId};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::queue::{Mutation, Query, QueryAnswer, QueueHandle};

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    pub(crate) queue: QueueHandle,
    /// Cancelled by `POST /v1/shutdown`.
    pub(crate) shutdown: CancellationToken,
}

/// The agent name used when a request names none.
const ANONYMOUS_AGENT: &str = "anonymous";

pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/tasks", get(list_tasks).post(add_task))
        .route("/v1/tasks/{id}", get(show_task).patch(edit_task))
        .route("/v1/tasks/{id}/{action}", post(task_action))
        .route("/v1/ready", get(ready))
        .route("/v1/claim", post(claim))
        .route("/v1/export", get(export))
        .route("/v1/members", get(members))
        .route("/v1/caps", get(caps))
        .route("/v1/mesh/invite", post(invite))
        .route("/v1/mesh/join", post(join))
        .route("/v1/mesh/remove", post(remove_member))
        .route("/v1/inbox/read", post(inbox_read))
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .with_state(state)
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

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        ApiError(body)
    }
}

type ApiResult = Result<Response, ApiError>;

/// The speaking agent and request id from the headers.
fn caller(headers: &HeaderMap) -> Result<(AgentName, Option<String>), ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|text| Some(text.to_owned()))
                .map_err(|_| ApiError(ErrorBody::new(ErrorCode::Usage, format!("header {name} is not text")))),
        }
    };
    let agent_text = text(AGENT_HEADER)?.unwrap_or_else(|| ANONYMOUS_AGENT.to_owned());
    let agent =
        AgentName::new(&agent_text).map_err(|error| ApiError(ErrorBody::new(ErrorCode::Usage, error.to_string())))?;
    let request_id = text(REQUEST_ID_HEADER)?;
    if request_id.as_ref().is_some_and(|id| id.is_empty() || id.len() > REQUEST_ID_BYTES_MAX) {
        return Err(ApiError(ErrorBody::over_limit("the request id", "REQUEST_ID_BYTES_MAX", REQUEST_ID_BYTES_MAX)));
    }
    Ok((agent, request_id))
}

fn task_id(text: &str) -> Result<TaskId, ApiError> {
    TaskId::new(text).map_err(|error| ApiError(ErrorBody::invalid_input(error.to_string())))
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(value)| value).map_err(|rejection| ApiError(ErrorBody::invalid_input(rejection.body_text())))
}

/// An optional JSON body: an empty body reads as the type's default.
fn optional_body<T: Default>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match parsed {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        other => body(other),
    }
}

async fn mutate(state: &ApiState, headers: &HeaderMap, mutation: Mutation) -> ApiResult {
    let (agent, request_id) = caller(headers)?;
    let value = state.queue.mutate(agent, request_id, mutation).await?;
    Ok(Json(value).into_response())
}

async fn query(state: &ApiState, headers: &HeaderMap, query: Query) -> ApiResult {
    // Queries need no agent, but a malformed agent header is still the caller's mistake.
    caller(headers)?;
    match state.queue.query(query).await? {
        QueryAnswer::Json(value) => Ok(Json(value).into_response()),
        QueryAnswer::Bytes(bytes) => Ok(([("content-type", "application/octet-stream")], bytes).into_response()),
    }
}

async fn status(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    query(&state, &headers, Query::Status).await
}

async fn shutdown(State(state): State<ApiState>) -> ApiResult {
    state.shutdown.cancel();
    Ok(Json(serde_json::json!({ "stopping": true })).into_response())
}

async fn list_tasks(State(state): State<ApiState>, headers: HeaderMap, uri: axum::http::Uri) -> ApiResult {
    // `status` may repeat (`?status=open&status=claimed`), which serde_urlencoded cannot read.
    let statuses = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("status="))
        .map(|text| text.parse::<TaskStatus>().map_err(|error| ApiError(ErrorBody::invalid_input(error))))
        .collect::<Result<Vec<_>, _>>()?;
    query(&state, &headers, Query::List(statuses)).await
}

async fn add_task(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<AddTask>, JsonRejection>,
) -> ApiResult {
    mutate(&state, &headers, Mutation::AddTask(body(request)?)).await
}

async fn show_task(State(state): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    query(&state, &headers, Query::Task(task_id(&id)?)).await
}

async fn edit_task(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Result<Json<EditTask>, JsonRejection>,
) -> ApiResult {
    mutate(&state, &headers, Mutation::EditTask(task_id(&id)?, body(request)?)).await
}

/// `POST /v1/tasks/{id}/{action}`: the record-writing operations on one task.
async fn task_action(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    request: axum::body::Bytes,
) -> ApiResult {
    let id = task_id(&id)?;
    let parse_note = || -> Result<TaskNote, ApiError> { parse_optional(&request) };
    let mutation = match action.as_str() {
        "cancel" => Mutation::Cancel(id, parse_note()?.text),
        "renew" => Mutation::Renew(id),
        "release" => Mutation::Release(id, parse_note()?.text),
        "progress" => {
            let note = parse_note()?;
            Mutation::Progress(id, note.text, note.percent)
        }
        "handoff" => Mutation::Handoff(id, parse_optional::<HandoffRequest>(&request)?),
        "done" => Mutation::Done(id, parse_note()?.text),
        "fail" => Mutation::Fail(id, parse_note()?.text),
        "approve" => Mutation::Approve(id),
        other => return Err(ApiError(ErrorBody::new(ErrorCode::NotFound, format!("no task action {other:?}")))),
    };
    mutate(&state, &headers, mutation).await
}

fn parse_optional<T: Default + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError(ErrorBody::invalid_input(format!("malformed JSON body: {error}"))))
}

#[derive(Debug, Default, Deserialize)]
struct ReadyParams {
    #[serde(default)]
    all: bool,
}

async fn ready(State(state): State<ApiState>, headers: HeaderMap, params: QueryString<ReadyParams>) -> ApiResult {
    query(&state, &headers, Query::Ready { all: params.all }).await
}

async fn claim(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<ClaimTask>, JsonRejection>,
) -> ApiResult {
    mutate(&state, &headers, Mutation::Claim(optional_body(request)?)).await
}

#[derive(Debug, Default, Deserialize)]
struct ExportParams {
    format: Option<String>,
}

async fn export(State(state): State<ApiState>, headers: HeaderMap, params: QueryString<ExportParams>) -> ApiResult {
    let format = match params.format.as_deref().unwrap_or("json") {
        "json" => Query::ExportJson,
        "jsonl" => Query::ExportJsonl,
        "automerge" => Query::ExportAutomerge,
        other => {
            return Err(ApiError(ErrorBody::new(
                ErrorCode::Usage,
                format!("no export format {other:?} (json, jsonl, automerge)"),
            )));
        }
    };
    query(&state, &headers, format).await
}

async fn members(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    query(&state, &headers, Query::Members).await
}

async fn caps(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    query(&state, &headers, Query::Caps).await
}

async fn invite(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<InviteRequest>, JsonRejection>,
) -> ApiResult {
    caller(&headers)?;
    let request = optional_body(request)?;
    Ok(Json(state.queue.invite(request.ttl_ms).await?).into_response())
}

async fn join(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<JoinMesh>, JsonRejection>,
) -> ApiResult {
    caller(&headers)?;
    Ok(Json(state.queue.join(body(request)?.token).await?).into_response())
}

async fn remove_member(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<RemoveMember>, JsonRejection>,
) -> ApiResult {
    caller(&headers)?;
    let node = body(request)?.node_id;
    let node = node.parse().map_err(|_| ApiError(ErrorBody::invalid_input(format!("{node:?} is not a node id"))))?;
    Ok(Json(state.queue.remove_member(node).await?).into_response())
}

async fn inbox_read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Json<InboxRead>, JsonRejection>,
) -> ApiResult {
    let (agent, _) = caller(&headers)?;
    let request = optional_body(request)?;
    Ok(Json(state.queue.inbox_read(agent, request.unread).await?).into_response())
}
