//! The route table of the local API (version 1): every route's method, path, request and
//! answer type, in one place.
//!
//! A route is a zero-sized type implementing [`Route`]. The node's HTTP layer registers one
//! handler per route from this table and only encodes what the queue answers; the typed
//! client (`meshwork-client`) builds its requests from the same table and decodes the same
//! answer types, so the two cannot disagree on a path or a shape. [`ROUTES`] lists them all
//! for the server, the docs and the tests.
//!
//! Requests of `GET` routes travel as the query string (flat fields only: `bool`, numbers,
//! text, and lists as comma-separated text); those of `POST` and `PATCH` routes as a JSON
//! body, where an empty body reads as the request type's default.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Probe;
use crate::api::{
    AddTask, ClaimTask, EditTask, HandoffRequest, InboxRead, InviteRequest, InviteView, JoinMesh, JoinedView,
    LiveTaskView, MemberView, MessageView, NodeStatus, RemoveMember, TaskNote, TaskPage,
};
use crate::task_id::TaskId;

/// The HTTP methods the local API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }

    /// Whether the request travels as the query string rather than a JSON body.
    pub fn request_in_query(self) -> bool {
        self == Method::Get
    }
}

/// What a route's path names: nothing, or one task (`{id}`).
pub trait PathArgs: Sized + Send + Sync + 'static {
    /// The path with its `{id}` (if any) replaced by `self`, escaped as one segment.
    fn fill(&self, pattern: &str) -> String;
    /// Reads the arguments back from the `{id}` segment the server matched (already
    /// unescaped), if the route has one.
    fn parse(id: Option<&str>) -> Result<Self, String>;
}

impl PathArgs for () {
    fn fill(&self, pattern: &str) -> String {
        debug_assert!(!pattern.contains('{'), "a route with a parameter needs its value: {pattern}");
        pattern.to_owned()
    }

    fn parse(_id: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}

impl PathArgs for TaskId {
    fn fill(&self, pattern: &str) -> String {
        debug_assert!(pattern.contains("{id}"), "a task route names {{id}}: {pattern}");
        pattern.replace("{id}", &path_segment(self.as_str()))
    }

    fn parse(id: Option<&str>) -> Result<TaskId, String> {
        let id = id.ok_or_else(|| "the route names no task".to_owned())?;
        TaskId::new(id).map_err(|error| error.to_string())
    }
}

/// One route of the local API.
pub trait Route: Send + Sync + 'static {
    const METHOD: Method;
    /// The path pattern, with `{id}` for a task id (axum's syntax).
    const PATH: &'static str;
    /// The path's arguments: `()` or a [`TaskId`].
    type Path: PathArgs;
    /// The query (`GET`) or the JSON body (`POST`, `PATCH`).
    type Request: Serialize + DeserializeOwned + Default + Send + Sync + 'static;
    /// The JSON of a successful answer.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
    /// Whether the route changes the queue: it takes `idempotency-key`.
    const MUTATES: bool;
}

/// A request with nothing in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `task list`'s filters, as the query of `GET /v1/tasks` and `GET /v1/pages/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListTasks {
    /// Comma-separated statuses (`open,claimed`); all statuses when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only stale tasks: claimed, and their holder's lease ended by the node's clock.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// At most this many tasks, the first in the listing's order; all when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `ready`'s query: ready for this machine, or (`all`) for any; as the query of `GET /v1/ready`
/// and `GET /v1/pages/ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadyQuery {
    pub all: bool,
    /// At most this many tasks, the first in claim order; all when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer of `POST /v1/shutdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

macro_rules! routes {
    ($(
        $(#[$doc:meta])*
        $name:ident: $method:ident $path:literal, $args:ty, $request:ty => $answer:ty, mutates: $mutates:literal;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl Route for $name {
                const METHOD: Method = Method::$method;
                const PATH: &'static str = $path;
                type Path = $args;
                type Request = $request;
                type Answer = $answer;
                const MUTATES: bool = $mutates;
            }
        )*

        /// Every route of the table: method, path pattern, and whether it mutates.
        pub const ROUTES: &[RouteSpec] = &[
            $(RouteSpec { name: stringify!($name), method: Method::$method, path: $path, mutates: $mutates },)*
        ];
    };
}

/// One row of [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: &'static str,
    pub method: Method,
    pub path: &'static str,
    pub mutates: bool,
}

routes! {
    /// `node status`.
    Status: Get "/v1/status", (), Empty => NodeStatus, mutates: false;
    /// `node stop`.
    Shutdown: Post "/v1/shutdown", (), Empty => Stopping, mutates: false;
    /// `task list --json`.
    TaskList: Get "/v1/tasks", (), ListTasks => Vec<LiveTaskView>, mutates: false;
    /// `task list` for people: the first tasks and how many the listing holds in all.
    TaskListPage: Get "/v1/pages/tasks", (), ListTasks => TaskPage, mutates: false;
    /// `task add`.
    TaskAdd: Post "/v1/tasks", (), AddTask => LiveTaskView, mutates: true;
    /// `task show`.
    TaskShow: Get "/v1/tasks/{id}", TaskId, Empty => LiveTaskView, mutates: false;
    /// `task edit`.
    TaskEdit: Patch "/v1/tasks/{id}", TaskId, EditTask => LiveTaskView, mutates: true;
    /// `task cancel`: `text` is the reason.
    TaskCancel: Post "/v1/tasks/{id}/cancel", TaskId, TaskNote => LiveTaskView, mutates: true;
    /// `ready --json`.
    Ready: Get "/v1/ready", (), ReadyQuery => Vec<LiveTaskView>, mutates: false;
    /// `ready` for people: the first tasks and how many are ready in all.
    ReadyPage: Get "/v1/pages/ready", (), ReadyQuery => TaskPage, mutates: false;
    /// `claim ID` and `claim --next`.
    Claim: Post "/v1/claim", (), ClaimTask => LiveTaskView, mutates: true;
    /// `renew`.
    Renew: Post "/v1/tasks/{id}/renew", TaskId, Empty => LiveTaskView, mutates: true;
    /// `release`: `text` is the reason.
    Release: Post "/v1/tasks/{id}/release", TaskId, TaskNote => LiveTaskView, mutates: true;
    /// `progress`: `text` is the message.
    Progress: Post "/v1/tasks/{id}/progress", TaskId, TaskNote => LiveTaskView, mutates: true;
    /// `handoff`.
    Handoff: Post "/v1/tasks/{id}/handoff", TaskId, HandoffRequest => LiveTaskView, mutates: true;
    /// `done`: `text` is the summary.
    Done: Post "/v1/tasks/{id}/done", TaskId, TaskNote => LiveTaskView, mutates: true;
    /// `fail`: `text` is the reason.
    Fail: Post "/v1/tasks/{id}/fail", TaskId, TaskNote => LiveTaskView, mutates: true;
    /// `approve`.
    Approve: Post "/v1/tasks/{id}/approve", TaskId, Empty => LiveTaskView, mutates: true;
    /// `mesh members`.
    Members: Get "/v1/members", (), Empty => Vec<MemberView>, mutates: false;
    /// `caps` while a node runs: its newest probe.
    Caps: Get "/v1/caps", (), Empty => Probe, mutates: false;
    /// `mesh invite`.
    MeshInvite: Post "/v1/mesh/invite", (), InviteRequest => InviteView, mutates: false;
    /// `mesh join`.
    MeshJoin: Post "/v1/mesh/join", (), JoinMesh => JoinedView, mutates: false;
    /// `mesh remove`: the members left.
    MeshRemove: Post "/v1/mesh/remove", (), RemoveMember => Vec<MemberView>, mutates: false;
    /// `inbox read`: the speaking agent's messages, marked read.
    Inbox: Post "/v1/inbox/read", (), InboxRead => Vec<MessageView>, mutates: false;
}

/// `GET /v1/export?format=F`: the whole resolved state. Not a [`Route`]: its answer is the
/// export's bytes (JSON, JSON lines, or the Automerge document), not one JSON value.
pub const EXPORT_PATH: &str = "/v1/export";

/// The query of [`EXPORT_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportQuery {
    /// `json` (the default), `jsonl` or `automerge`.
    pub format: Option<String>,
}

/// Escapes one path segment: everything but ASCII letters, digits, `-` and `_` is
/// percent-encoded, so an id can never add a segment (`..`) or a query.
pub fn path_segment(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_') {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_distinct_method_and_path() {
        // Goal: the table never registers two handlers on one route.
        let mut seen = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(seen.insert((route.method.as_str(), route.path)), "{route:?} twice");
            assert!(route.path.starts_with("/v1/"), "{route:?}");
        }
    }

    #[test]
    fn a_task_path_escapes_its_id_into_one_segment() {
        // Goal: an id can never add a path segment or a query.
        let id = TaskId::new("WRK-1").map_err(|error| error.to_string());
        assert_eq!(id.map(|id| id.fill(Done::PATH)), Ok("/v1/tasks/WRK-1/done".to_owned()));
        assert_eq!(path_segment("a/../b?c"), "a%2F%2E%2E%2Fb%3Fc");
    }
}
