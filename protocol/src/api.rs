//! The JSON of the local API and of `--json` output (version 1).
//!
//! Routes live under `/v1/`. The node reads the speaking agent from the `x-meshwork-agent`
//! header and the idempotency key from `idempotency-key` (the CLI's `--request-id`).

use serde::{Deserialize, Serialize};

use crate::task_id::TaskId;

/// Header naming the local agent that speaks.
pub const AGENT_HEADER: &str = "x-meshwork-agent";
/// Header carrying the client's request id; repeating it returns the first answer.
pub const REQUEST_ID_HEADER: &str = "idempotency-key";
/// Version of this JSON, served at `GET /v1/status` as `api_version`.
pub const API_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Open,
    Claimed,
    Done,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] =
        [TaskStatus::Open, TaskStatus::Claimed, TaskStatus::Done, TaskStatus::Failed, TaskStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Open => "open",
            TaskStatus::Claimed => "claimed",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Done, failed for good, or cancelled: nothing more happens to the task.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<TaskStatus, String> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("not a task status: {text:?} (open, claimed, done, failed, cancelled)"))
    }
}

/// The task object of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub status: TaskStatus,
    /// Open, every dependency done, approved if it needs approval.
    pub ready: bool,
    /// Dependencies that are not done yet (and `approval` while approval is missing is
    /// reported through `needs_approval`/`approved`).
    pub blocked_by: Vec<TaskId>,
    pub priority: i64,
    pub depends_on: Vec<TaskId>,
    pub requires: Vec<String>,
    pub prefers: Vec<String>,
    pub labels: Vec<String>,
    pub files: Vec<String>,
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub needs_approval: bool,
    pub approved: bool,
    pub generation: u32,
    pub attempts: u32,
    pub holder: Option<HolderView>,
    pub progress: Vec<ProgressView>,
    pub lost_claims: Vec<LostClaimView>,
    pub handoffs: Vec<HandoffView>,
    pub checks: Vec<CheckView>,
    pub result: Option<ResultView>,
    /// Results of other `done` records, kept beside the accepted one.
    pub other_results: Vec<ResultView>,
    pub failure: Option<FailureView>,
    pub cancelled: Option<FailureView>,
    /// Other nodes that created a task with this same id; the fields shown are one of them.
    pub id_conflicts: Vec<String>,
    /// Records on this task that were ignored: bad signature, non-member signer, malformed.
    pub rejected_records: u32,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl TaskView {
    /// The task object of `id` with every other field empty: open, no fields, no records.
    /// A base to fill (`TaskView { title, ..TaskView::blank(id) }`), and the object a listing
    /// fills in place per task.
    pub fn blank(id: TaskId) -> TaskView {
        TaskView {
            id,
            title: String::new(),
            description: String::new(),
            status: TaskStatus::Open,
            ready: false,
            blocked_by: Vec::new(),
            priority: 0,
            depends_on: Vec::new(),
            requires: Vec::new(),
            prefers: Vec::new(),
            labels: Vec::new(),
            files: Vec::new(),
            lease_ms: 0,
            max_attempts: 0,
            needs_approval: false,
            approved: false,
            generation: 0,
            attempts: 0,
            holder: None,
            progress: Vec::new(),
            lost_claims: Vec::new(),
            handoffs: Vec::new(),
            checks: Vec::new(),
            result: None,
            other_results: Vec::new(),
            failure: None,
            cancelled: None,
            id_conflicts: Vec::new(),
            rejected_records: 0,
            created_by: String::new(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }
}

/// The task object as a node answers it (`task show`, `task list`, `ready`, `claim`): the
/// task's view by its records, and what this node's clock makes of them.
///
/// The canonical export holds bare [`TaskView`]s: two nodes with the same records export the
/// same bytes whatever their clocks say (invariant 1, convergence), so nothing that depends
/// on the time of reading (`stale`) may be in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveTaskView {
    #[serde(flatten)]
    pub task: TaskView,
    /// Set while the task is stale: claimed, and its holder's lease (as last renewed in the
    /// records) ended before the answering node's clock. Another agent may take it over.
    pub stale: Option<StaleView>,
    /// On a claim's answer only: what the claim can rely on (docs/PROTOCOL.md, "Confirmation
    /// and receipts"). Absent from every other answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// What a claim can rely on when it is answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub confirmation: Confirmation,
    /// The generation the claim holds.
    pub generation: u32,
    /// The node ids of the members whose votes count for the claim so far.
    pub acknowledged_by: Vec<String>,
    /// How many votes confirm it: a majority of the members at its stamp.
    pub needed: u32,
}

/// How far a claim is confirmed (docs/PROTOCOL.md, "Confirmation and receipts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    /// A majority of the members voted for the claim: it never loses.
    Quorum,
    /// The claim won after the settle time, but no majority confirmed it in time: it may still
    /// lose at a later merge, and its agent is then told.
    Settled,
    /// The node reached no peer: as `settled`, decided when it meets them.
    Offline,
}

impl Confirmation {
    pub fn as_str(self) -> &'static str {
        match self {
            Confirmation::Quorum => "quorum",
            Confirmation::Settled => "settled",
            Confirmation::Offline => "offline",
        }
    }
}

/// Whose lease ran out on a stale task, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleView {
    /// The holder's agent.
    pub agent: String,
    pub node_id: String,
    pub node_name: String,
    pub claim_id: String,
    /// When the holder's lease ended (RFC 3339): its `lease_until`.
    pub since: String,
}

/// The head of a listing and the size of the whole: what `ready` and `task list` show people,
/// who read the first rows and the count of the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPage {
    /// How many tasks the whole listing holds.
    pub total: usize,
    /// Its first tasks, in its order: at most the query's `limit`.
    pub tasks: Vec<LiveTaskView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderView {
    pub agent: String,
    pub node_id: String,
    pub node_name: String,
    pub claim_id: String,
    pub claimed_at: String,
    pub lease_until: String,
    pub quorum: bool,
    /// A majority of the members at the claim's stamp voted for it: it never loses.
    pub confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressView {
    pub at: String,
    pub agent: String,
    pub node_id: String,
    pub message: String,
    pub percent: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostClaimView {
    pub agent: String,
    pub node_id: String,
    pub claim_id: String,
    pub generation: u32,
    pub claimed_at: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffView {
    pub at: String,
    pub agent: String,
    pub node_id: String,
    pub commits: Vec<String>,
    pub files: Vec<String>,
    pub tests: Vec<String>,
    pub risks: Vec<String>,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultView {
    pub summary: String,
    /// `agent@node` of the finisher.
    pub by: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureView {
    pub reason: String,
    pub by: String,
    pub at: String,
}

/// `POST /v1/tasks`: `meshwork task add`. With the `clap` feature it is also the command's
/// arguments, so a task field is defined once for the API and the command line; the doc
/// comments are the command's help.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct AddTask {
    /// What to do, in one line
    pub title: String,
    /// The task's id [default: generated, `mw-...`]
    #[cfg_attr(feature = "clap", arg(long))]
    pub id: Option<String>,
    /// Everything the agent needs to know
    #[cfg_attr(feature = "clap", arg(long, default_value = "", hide_default_value = true))]
    pub description: String,
    /// Start only after this task is done (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "ID"))]
    pub after: Vec<String>,
    /// Run only on machines that meet this requirement (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "REQ"))]
    pub requires: Vec<String>,
    /// Rather run on machines that meet this requirement (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "REQ"))]
    pub prefers: Vec<String>,
    /// A label (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "label", value_name = "L"))]
    pub labels: Vec<String>,
    /// Higher goes first; may be negative
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = 0, hide_default_value = true))]
    pub priority: i64,
    /// How long a claim lasts without renewal (90s, 30m, 2h, 1d)
    #[cfg_attr(feature = "clap", arg(long = "lease", value_name = "DURATION", value_parser = crate::time::parse_duration_ms))]
    pub lease_ms: Option<u64>,
    /// How many failed attempts before the task fails for good
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_attempts: Option<u32>,
    /// An acceptance check command (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "check", value_name = "CMD"))]
    pub checks: Vec<String>,
    /// A file or glob the task touches (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "file", value_name = "GLOB"))]
    pub files: Vec<String>,
    /// Nobody may claim the task before someone approves it
    #[cfg_attr(feature = "clap", arg(long))]
    pub needs_approval: bool,
}

/// `PATCH /v1/tasks/{id}`: `meshwork task edit`. Absent fields stay as they are. With the
/// `clap` feature it is also the command's arguments (after the task id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default)]
pub struct EditTask {
    /// A new title
    #[cfg_attr(feature = "clap", arg(long))]
    pub title: Option<String>,
    /// A new description
    #[cfg_attr(feature = "clap", arg(long))]
    pub description: Option<String>,
    /// A new priority; may be negative
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub priority: Option<i64>,
    /// Add a dependency (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "ID"))]
    pub after: Vec<String>,
    /// Remove a dependency (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "ID"))]
    pub not_after: Vec<String>,
    /// Replace the hard requirements with these (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "REQ"))]
    pub requires: Option<Vec<String>>,
    /// Replace the preferences with these (repeatable)
    #[cfg_attr(feature = "clap", arg(long, value_name = "REQ"))]
    pub prefers: Option<Vec<String>>,
    /// A new lease (90s, 30m, 2h, 1d)
    #[cfg_attr(feature = "clap", arg(long = "lease", value_name = "DURATION", value_parser = crate::time::parse_duration_ms))]
    pub lease_ms: Option<u64>,
    /// A new limit on failed attempts
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_attempts: Option<u32>,
}

/// `POST /v1/claim`: `meshwork claim ID` or `meshwork claim --next`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClaimTask {
    pub task: Option<String>,
    pub next: bool,
    /// `claim --quorum`: the claim counts once a majority of members acknowledged it.
    pub quorum: bool,
    /// `claim --fast`: answer after the settle time without asking the mesh to confirm.
    pub fast: bool,
    /// With `quorum`: how long the node waits for the majority before answering `CONFLICT`
    /// (retryable); [`QUORUM_TIMEOUT_MS_DEFAULT`] when absent. Otherwise how long it waits for
    /// the confirmation before answering `settled`; [`CONFIRM_TIMEOUT_MS_DEFAULT`] when absent.
    pub timeout_ms: Option<u64>,
}

/// How long `claim --quorum` waits for a majority when no timeout is given.
pub const QUORUM_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// How long a claim waits for its confirmation, after the settle time, before it answers
/// `settled` (the votes may still come; the claim is then confirmed later).
pub const CONFIRM_TIMEOUT_MS_DEFAULT: u64 = 250;

/// Body of the text-carrying task operations (release, progress, done, fail, cancel).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskNote {
    pub text: String,
    pub percent: Option<u8>,
}

/// `POST /v1/tasks/{id}/handoff`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HandoffRequest {
    pub commits: Vec<String>,
    pub files: Vec<String>,
    pub tests: Vec<String>,
    pub risks: Vec<String>,
    pub next: String,
}

/// `GET /v1/status`: `meshwork node status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub api_version: u32,
    pub node_id: String,
    pub name: String,
    pub mesh_id: String,
    pub home: String,
    pub offline: bool,
    pub listen: Vec<String>,
    pub peers: Vec<PeerView>,
    pub tasks: usize,
    pub rejected_records: u64,
    /// Connections refused right after the handshake because the peer is not a member.
    #[serde(default)]
    pub refused_connections: u64,
    /// Files the node could not read at start and left in place.
    pub skipped_files: Vec<String>,
    pub started_at: String,
    pub pid: u32,
    pub storage: StorageView,
    /// Bytes of sync frames (length prefixes included, transport overhead not) written to
    /// peers since the node started.
    #[serde(default)]
    pub sync_bytes_sent: u64,
    /// Bytes of sync frames read from peers since the node started.
    #[serde(default)]
    pub sync_bytes_received: u64,
}

/// What the node's storage did since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageView {
    /// fsync calls; fewer than `submissions` under load means clients shared them.
    pub fsyncs: u64,
    pub frames_written: u64,
    /// Writes the group-commit thread answered.
    pub submissions: u64,
    /// Bytes in the change log since the last snapshot.
    pub log_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: String,
    pub addrs: Vec<String>,
    pub connected: bool,
    pub last_seen: Option<String>,
    /// Round-trip time of the last ping, in milliseconds, while connected.
    pub rtt_ms: Option<f64>,
    /// Since when the current connection (the first of them) is up.
    #[serde(default)]
    pub connected_since: Option<String>,
    /// Frames from this peer that were refused (oversize, undecodable, invalid).
    pub bad_frames: u64,
}

/// `mesh invite --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteView {
    pub token: String,
    pub mesh_id: String,
    pub expires_at: String,
}

/// `POST /v1/mesh/invite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRequest {
    /// Life of the token in milliseconds; the default when absent.
    pub ttl_ms: Option<u64>,
}

/// `POST /v1/mesh/join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinMesh {
    pub token: String,
}

/// `POST /v1/mesh/remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveMember {
    pub node_id: String,
}

/// `POST /v1/inbox/read`: the speaking agent's messages, marked read as they are returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRead {
    /// Only messages not read before.
    #[serde(default)]
    pub unread: bool,
}

/// `mesh join --json`: the mesh this node now belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedView {
    pub node_id: String,
    pub mesh_id: String,
    pub inviter: String,
    pub members: usize,
    pub tasks: usize,
}

/// `meshwork init --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitView {
    pub node_id: String,
    pub name: String,
    pub home: String,
    pub mesh_id: String,
}

/// A member as `mesh members --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node_id: String,
    pub name: String,
    pub added_by: String,
    pub added_at: String,
}

/// One message of an agent's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub priority: String,
    pub at: String,
    pub read: bool,
    pub acked: bool,
    /// The task the message is about, if any.
    pub task: Option<String>,
}
