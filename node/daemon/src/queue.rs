//! The queue actor: owns the replica and the node key, runs every operation, and answers
//! a mutation only once its change is durable (group commit through the store thread).
//!
//! Reached through [`QueueHandle`] over a bounded channel; one task, so operations on the
//! replica never interleave. The actor never waits for an fsync itself: it hands the answer
//! to a small task that waits, and goes on with the next request, so concurrent clients
//! share fsyncs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use meshwork_crdt::events::EventDigest;
use meshwork_crdt::inbox::Notice;
use meshwork_crdt::{Applied, OpError, Replica, Speaker, TaskEntry, Touched};
use meshwork_protocol::NodeId;
use meshwork_protocol::api::{
    AddTask, ClaimTask, EditTask, HandoffRequest, LiveTaskView, MemberView, NodeStatus, StorageView, TaskPage,
    TaskStatus,
};
use meshwork_protocol::api::{InviteView, JoinedView, MessageView};
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::event::Event;
use meshwork_protocol::invite::InviteToken;
use meshwork_protocol::limits::CLAIM_TIMEOUT_MS_MAX;
use meshwork_protocol::storage::{Frame, RequestEntry};
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::{AgentName, ErrorCode, NodeKey, Probe, RecordId, TaskId};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::events::EventBus;
use crate::net::NetEvent;
use crate::store::StoreHandle;

/// Requests waiting for the actor.
const QUEUE_COMMANDS_MAX: usize = 1024;
/// Idempotency entries kept; the oldest go first.
pub(crate) const REQUESTS_KEPT_MAX: usize = 100_000;
/// Log bytes after which the actor writes a snapshot and starts the log afresh.
const COMPACT_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// At a clean stop, a log longer than this is compacted so the next start is quick.
const COMPACT_ON_STOP_LOG_BYTES: u64 = 1024 * 1024;

/// A mutation's answer: the task as it now stands, or a contract error.
pub(crate) type Answer = Result<LiveTaskView, ErrorBody>;

/// Where the actor sends one typed answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ErrorBody>>;

/// Every operation that changes the queue.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    AddTask(AddTask),
    EditTask(TaskId, EditTask),
    Cancel(TaskId, String),
    Claim(ClaimTask),
    Renew(TaskId),
    Release(TaskId, String),
    Progress(TaskId, String, Option<u8>),
    Handoff(TaskId, HandoffRequest),
    Done(TaskId, String),
    Fail(TaskId, String),
    Approve(TaskId),
}

/// Every question about the queue, each with where its typed answer goes.
#[derive(Debug)]
pub(crate) enum Query {
    Task(TaskId, Reply<LiveTaskView>),
    /// The tasks in these statuses (all when none), in id order; with `stale`, only stale ones.
    List {
        statuses: Vec<TaskStatus>,
        stale: bool,
        answer: ListingAnswer,
    },
    /// The tasks an agent may claim (ready, or stale: a takeover) in claim order, for any
    /// machine (`all`) or only this one.
    Ready {
        all: bool,
        answer: ListingAnswer,
    },
    Export(ExportFormat, Reply<Vec<u8>>),
    Members(Reply<Vec<MemberView>>),
    Caps(Reply<Probe>),
    Status(Reply<NodeStatus>),
}

/// How a listing (`task list`, `ready`) is answered; `limit` keeps its first tasks.
#[derive(Debug)]
pub(crate) enum ListingAnswer {
    /// The JSON array of the task objects, encoded task by task as the actor builds them
    /// (`GET /v1/tasks`, `GET /v1/ready`).
    Json { limit: Option<usize>, reply: Reply<Encoded<Vec<LiveTaskView>>> },
    /// The first task objects and the listing's size (`GET /v1/pages/...`).
    Page { limit: Option<usize>, reply: Reply<TaskPage> },
}

impl ListingAnswer {
    /// Answers with the tasks of `listed` at `now_ms`: task objects are built only for those
    /// answered.
    fn send(self, replica: &Replica, listed: &[&TaskEntry], now_ms: u64) {
        let head = |limit: Option<usize>| &listed[..limit.map_or(listed.len(), |limit| limit.min(listed.len()))];
        match self {
            ListingAnswer::Json { limit, reply } => {
                let _ = reply.send(Ok(Encoded::task_views(replica, head(limit), now_ms)));
            }
            ListingAnswer::Page { limit, reply } => {
                let page = TaskPage {
                    total: listed.len(),
                    tasks: replica.live_task_views_of(head(limit).iter().copied(), now_ms),
                };
                let _ = reply.send(Ok(page));
            }
        }
    }
}

/// The JSON text of an answer of type `T`, encoded where it was built: the actor writes a long
/// listing task by task instead of handing over every task object for the HTTP layer to encode
/// (docs/BENCHMARKS.md, "CLI calls").
#[derive(Debug)]
pub(crate) struct Encoded<T> {
    pub(crate) json: Vec<u8>,
    answer: std::marker::PhantomData<fn() -> T>,
}

impl Encoded<Vec<LiveTaskView>> {
    fn task_views(replica: &Replica, entries: &[&TaskEntry], now_ms: u64) -> Encoded<Vec<LiveTaskView>> {
        Encoded { json: replica.live_task_views_json(entries, now_ms), answer: std::marker::PhantomData }
    }
}

/// The shapes `GET /v1/export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExportFormat {
    /// The canonical JSON export (one document).
    Json,
    /// One task object per line.
    Jsonl,
    /// The raw Automerge document.
    Automerge,
}

pub(super) enum Command {
    Mutate {
        agent: AgentName,
        request_id: Option<String>,
        mutation: Box<Mutation>,
        reply: oneshot::Sender<Answer>,
    },
    Query(Query),
    PublishProbe {
        probe: Box<Probe>,
        reply: Reply<()>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    Mesh(Box<MeshCommand>),
    /// A claim's settle time passed: check it still wins, then answer.
    Settled(Box<SettledClaim>),
}

/// A claim waiting out its settle time.
pub(crate) struct SettledClaim {
    agent: AgentName,
    task: TaskId,
    request_key: Option<String>,
    reply: oneshot::Sender<Answer>,
    /// The claim record, when one was written or found.
    claim: Option<meshwork_protocol::RecordId>,
    /// A quorum claim waits for its majority until then.
    quorum_deadline: Option<tokio::time::Instant>,
    /// `claim --fast`: answered after the settle time, without asking for confirmation.
    fast: bool,
    /// How long a default claim waits for its confirmation once it asked.
    confirm_ms: u64,
    /// A default claim that asked for confirmation waits for it until then.
    confirm_until: Option<tokio::time::Instant>,
    /// The end of the settle time, while it runs: the claim is answered then, or as soon as a
    /// majority confirms it (a confirmed claim never loses, so it need not wait).
    settle_until: Option<tokio::time::Instant>,
    /// Whether the success was kept for the request id when the claim was written.
    kept: bool,
}

impl SettledClaim {
    /// When the actor must look at this claim again if no merge makes it look sooner.
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        self.settle_until.or(self.quorum_deadline).or(self.confirm_until)
    }
}

/// What the network and the API ask of the actor about the mesh.
#[derive(Debug)]
pub(crate) enum MeshCommand {
    /// Local changes became durable: offer them to every connected peer.
    Push,
    Invite {
        ttl_ms: Option<u64>,
        reply: Reply<InviteView>,
    },
    Join {
        token: String,
        reply: Reply<JoinedView>,
    },
    Adopt {
        token: InviteToken,
        document: Vec<u8>,
        reply: Reply<JoinedView>,
    },
    Remove {
        node: NodeId,
        reply: Reply<Vec<MemberView>>,
    },
    InboxRead {
        agent: AgentName,
        unread: bool,
        reply: Reply<Vec<MessageView>>,
    },
}

/// One open sync link: its id (a newer link to the same peer replaces it) and its frames.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) sender: mpsc::Sender<Vec<u8>>,
    /// When a frame went out that the peer has not answered yet: the time to its next frame
    /// is a round trip through both nodes' queues, which the claim settle time must cover.
    pub(crate) awaiting_since: Option<std::time::Instant>,
}

/// A cloneable handle on the queue actor.
#[derive(Debug, Clone)]
pub(crate) struct QueueHandle {
    pub(super) commands: mpsc::Sender<Command>,
}

pub(super) fn unavailable() -> ErrorBody {
    ErrorBody::new(ErrorCode::NodeUnavailable, "the node is stopping").retryable()
}

impl QueueHandle {
    /// Runs a mutation; resolves once its change is durable.
    pub(crate) async fn mutate(&self, agent: AgentName, request_id: Option<String>, mutation: Mutation) -> Answer {
        let (reply, answer) = oneshot::channel();
        let command = Command::Mutate { agent, request_id, mutation: Box::new(mutation), reply };
        self.commands.send(command).await.map_err(|_| unavailable())?;
        answer.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Asks one question; `query` builds it around the reply channel.
    pub(crate) async fn query<T>(&self, query: impl FnOnce(Reply<T>) -> Query) -> Result<T, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Query(query(reply))).await.map_err(|_| unavailable())?;
        answer.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Publishes this machine's probe if it changed; resolves once the actor took it in.
    pub(crate) async fn publish_probe(&self, probe: Probe) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::PublishProbe { probe: Box::new(probe), reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Finishes the requests before it, compacts if worthwhile, and stops the actor.
    pub(crate) async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Facts about the node that `status` reports and the actor does not own.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    pub(crate) name: String,
    pub(crate) home: String,
    pub(crate) skipped_files: Vec<String>,
    pub(crate) started_at_ms: u64,
}

/// The idempotency table: answers by `agent\nrequest-id`, oldest evicted first.
#[derive(Debug, Default)]
pub(crate) struct RequestTable {
    entries: BTreeMap<String, RequestEntry>,
    order: VecDeque<String>,
}

impl RequestTable {
    pub(crate) fn from_recovered(entries: Vec<RequestEntry>) -> RequestTable {
        let mut table = RequestTable::default();
        for entry in entries {
            table.insert(entry);
        }
        table
    }

    fn key(agent: &AgentName, request_id: &str) -> String {
        format!("{agent}\n{request_id}")
    }

    fn insert(&mut self, entry: RequestEntry) {
        if self.entries.insert(entry.key.clone(), entry.clone()).is_none() {
            self.order.push_back(entry.key);
        }
        while self.order.len() > REQUESTS_KEPT_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    fn get(&self, key: &str) -> Option<&RequestEntry> {
        self.entries.get(key)
    }

    fn all(&self) -> Vec<RequestEntry> {
        self.order.iter().filter_map(|key| self.entries.get(key).cloned()).collect()
    }
}

/// Everything the actor owns.
pub(crate) struct QueueActor {
    pub(crate) replica: Replica,
    /// What the last published events were derived from.
    pub(crate) digest: EventDigest,
    /// Claims not answered yet: in their settle time, waiting for their confirmation, or
    /// (quorum claims) for their majority. Looked at again after every merge and when their
    /// time comes ([`SettledClaim::wake_at`]).
    pub(crate) claims_waiting: Vec<SettledClaim>,
    /// What merges touched whose duties (votes, notices) are not done yet: they are done
    /// together at `duties_at`, `DUTIES_BATCH_MS` (mesh.rs) after the first such merge.
    pub(crate) duties_due: Touched,
    pub(crate) duties_at: Option<tokio::time::Instant>,
    pub(crate) events: EventBus,
    pub(crate) key: Arc<NodeKey>,
    pub(crate) store: StoreHandle,
    pub(crate) requests: RequestTable,
    pub(crate) facts: NodeFacts,
    /// Set when a write failed: the next write first stores a whole snapshot, so no change
    /// that exists only in memory is ever left out of the files.
    pub(crate) needs_snapshot: bool,
    /// Raised by the task that waits on a failed write; folded into `needs_snapshot`.
    pub(crate) write_failed: Arc<AtomicBool>,
    /// Where the verified-records cache is written with each snapshot and at stop.
    pub(crate) verified_cache: std::path::PathBuf,
    pub(crate) home: crate::home::Home,
    /// The sync engine: one session per connected member.
    pub(crate) engine: meshwork_crdt::sync::SyncEngine,
    /// The open sync link per peer.
    pub(crate) links: BTreeMap<meshwork_protocol::NodeId, Link>,
    pub(crate) net: crate::net::NetHandle,
    pub(crate) invites: crate::invites::Invites,
    /// Set while a push is queued, so a burst of durable writes makes one push, not one each.
    pub(crate) push_queued: Arc<AtomicBool>,
    /// The actor's own command channel, for work that comes back to it (pushes, settles).
    pub(crate) commands: mpsc::WeakSender<Command>,
}

impl std::fmt::Debug for QueueActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueActor").field("node", &self.replica.node()).finish_non_exhaustive()
    }
}

impl QueueActor {
    /// Starts the actor on the current tokio runtime.
    /// Starts the actor on the current tokio runtime; it also takes what the network hears.
    pub(crate) fn spawn(mut self, heard: mpsc::Receiver<NetEvent>) -> (QueueHandle, tokio::task::JoinHandle<()>) {
        let (commands, receiver) = mpsc::channel(QUEUE_COMMANDS_MAX);
        self.commands = commands.downgrade();
        let span = tracing::info_span!("queue", node = %self.replica.node());
        let task = tokio::spawn(tracing::Instrument::instrument(self.run(receiver, heard), span));
        (QueueHandle { commands }, task)
    }

    async fn run(mut self, mut receiver: mpsc::Receiver<Command>, mut heard: mpsc::Receiver<NetEvent>) {
        loop {
            // Lease events come from the clock: wake when the next one is due.
            let lease_due_ms = self.digest.next_lease_event_ms();
            let lease_wait_ms = lease_due_ms.map_or(0, |due_ms| due_ms.saturating_sub(now_ms()));
            let claims_wake_at = self.claims_waiting.iter().filter_map(SettledClaim::wake_at).min();
            let duties_at = self.duties_at;
            // Biased: what peers sent is taken in before new commands, so under load a burst of
            // frames merges before the next push offers the result (one sync round for the
            // burst, not one per frame), and claims are judged on the freshest records.
            let command = tokio::select! {
                biased;
                Some(event) = heard.recv() => {
                    self.on_net(event).await;
                    continue;
                }
                command = receiver.recv() => command,
                () = tokio::time::sleep(std::time::Duration::from_millis(lease_wait_ms)), if lease_due_ms.is_some() => {
                    self.publish_lease_events().await;
                    continue;
                }
                () = tokio::time::sleep_until(claims_wake_at.unwrap_or_else(tokio::time::Instant::now)), if claims_wake_at.is_some() => {
                    self.recheck_claims_waiting().await;
                    continue;
                }
                () = tokio::time::sleep_until(duties_at.unwrap_or_else(tokio::time::Instant::now)), if duties_at.is_some() => {
                    self.fulfil_deferred_duties().await;
                    continue;
                }
            };
            let Some(command) = command else { break };
            match command {
                Command::Mutate { agent, request_id, mutation, reply } => {
                    self.mutate(agent, request_id, *mutation, reply).await
                }
                Command::Query(query) => self.query(query),
                Command::PublishProbe { probe, reply } => self.publish_probe(*probe, reply).await,
                Command::Stop { reply } => {
                    self.stop().await;
                    let _ = reply.send(());
                    return;
                }
                Command::Mesh(command) => self.on_mesh(*command).await,
                Command::Settled(settled) => self.settled(*settled).await,
            }
        }
    }

    async fn mutate(
        &mut self,
        agent: AgentName,
        request_id: Option<String>,
        mutation: Mutation,
        reply: oneshot::Sender<Answer>,
    ) {
        let request_key = request_id.as_deref().map(|id| RequestTable::key(&agent, id));
        if let Some(entry) = request_key.as_deref().and_then(|key| self.requests.get(key)) {
            // A retry: answer as the first time, once everything before it is durable. Retries
            // are rare, so the actor waits here: if the first attempt's write failed, the
            // repair (a whole snapshot) must succeed before the kept answer is given.
            let answer = decode_answer(&entry.response);
            let _ = self.store.submit(Vec::new()).await.await;
            let answer = if self.repair_after_failed_write().await { answer } else { Err(storage_failed()) };
            let _ = reply.send(answer);
            return;
        }
        let now = now_ms();
        let outcome = self.apply(&agent, &mutation, now);
        let answer: Answer = match (&outcome, &mutation) {
            (Ok(applied), Mutation::Claim(_)) => self.claim_answer(&applied.task, applied.record),
            (Ok(applied), _) => self.task_answer(&applied.task),
            (Err(error), _) => Err(error.to_error_body()),
        };
        let mut frames = Vec::new();
        // A claim that lost at once wrote its record all the same: it is stored like any other.
        let written = match &outcome {
            Ok(applied) => Some(applied),
            Err(error) => error.written(),
        };
        if let Some(applied) = written
            && !applied.changes.is_empty()
        {
            frames.push(Frame::Changes(applied.changes.clone()));
            // A local operation can make claims lose too (a cancel closes pending quorum
            // claims): their notices and this node's votes go in the same durable write.
            let key = Arc::clone(&self.key);
            let duties = self.replica.fulfil_duties(&key, std::slice::from_ref(&applied.task), now);
            for error in &duties.errors {
                warn!(%error, "a duty after a local operation was not written");
            }
            frames.extend(duties.changes.into_iter().map(Frame::Changes));
            let touched = Touched {
                tasks: duties.acks.iter().map(|ack| ack.task.clone()).chain([applied.task.clone()]).collect(),
                ..Touched::default()
            };
            self.publish_events(&touched, &duties.notices);
        }
        // A quorum claim's answer is known only once its majority arrived (or did not).
        let quorum_timeout_ms = match &mutation {
            Mutation::Claim(ClaimTask { quorum: true, timeout_ms, .. }) if answer.is_ok() => {
                Some(timeout_ms.unwrap_or(meshwork_protocol::api::QUORUM_TIMEOUT_MS_DEFAULT))
            }
            _ => None,
        };
        let settling = matches!(mutation, Mutation::Claim(_))
            && answer.is_ok()
            && (quorum_timeout_ms.is_some() || !frames.is_empty());
        // With no peer to race, the settle time is nil: the claim asks the mesh to confirm it
        // in the same durable write (in a mesh of one, its own vote confirms it).
        let mut answer = answer;
        let settle_ms = self.net.facts().settle_ms();
        if let (true, 0, Mutation::Claim(ClaimTask { quorum: false, fast: false, .. }), Ok(applied)) =
            (settling, settle_ms, &mutation, &outcome)
            && let Some(claim) = applied.record
        {
            frames.extend(self.ask_confirmation(&applied.task, claim, now));
            answer = self.claim_answer(&applied.task, Some(claim));
        }
        // Retryable failures are not kept: repeating the request must be able to succeed.
        let keep_now = answer.as_ref().err().is_none_or(|error| !error.retryable) && quorum_timeout_ms.is_none();
        if let Some(key) = request_key.clone().filter(|_| keep_now) {
            let entry = RequestEntry { key, response: encode_answer(&answer), unix_ms: now };
            self.requests.insert(entry.clone());
            frames.push(Frame::Request(entry));
        }
        match outcome {
            Ok(applied) if settling => {
                let quorum_deadline =
                    quorum_timeout_ms.map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
                let (fast, confirm_ms) = match &mutation {
                    Mutation::Claim(claim) => {
                        (claim.fast, claim.timeout_ms.unwrap_or(meshwork_protocol::api::CONFIRM_TIMEOUT_MS_DEFAULT))
                    }
                    _ => (false, 0),
                };
                let settled = SettledClaim {
                    agent,
                    task: applied.task,
                    request_key,
                    reply,
                    claim: applied.record,
                    quorum_deadline,
                    fast,
                    confirm_ms,
                    confirm_until: None,
                    settle_until: None,
                    kept: keep_now,
                };
                self.write_then_settle(frames, answer, settled).await
            }
            _ => self.write_then_answer(frames, answer, reply).await,
        }
    }

    /// This node's vote for its own claim, which holds the task: it asks the mesh to confirm
    /// the claim (docs/PROTOCOL.md, "Confirmation and receipts"). Nothing when the claim no
    /// longer holds or this node voted in its generation already.
    fn ask_confirmation(&mut self, task: &TaskId, claim: RecordId, now: u64) -> Option<Frame> {
        let key = Arc::clone(&self.key);
        match self.replica.ask_confirmation(&key, task, claim, now) {
            Ok(changes) => changes.map(Frame::Changes),
            Err(error) => {
                warn!(error = %error.to_error_body().message, %task, "could not ask to confirm a claim");
                None
            }
        }
    }

    /// A new claim: durable, pushed to peers, then handed back to the actor ([`Self::settled`]),
    /// which answers it after the settle time once a re-derivation shows it still wins
    /// (DESIGN.md: a claim waits a short settle time), or sooner if a majority confirms it.
    /// A quorum claim is answered once it counts, loses, or its time runs out.
    async fn write_then_settle(&mut self, frames: Vec<Frame>, answer: Answer, mut settled: SettledClaim) {
        let (durable_reply, durable) = oneshot::channel();
        self.write_then_answer(frames, answer, durable_reply).await;
        let settle = std::time::Duration::from_millis(self.net.facts().settle_ms());
        let Some(commands) = self.commands.upgrade() else { return };
        settled.settle_until = Some(tokio::time::Instant::now() + settle);
        tokio::spawn(async move {
            let answer = durable.await.unwrap_or_else(|_| Err(unavailable()));
            if answer.is_err() || (settle.is_zero() && settled.quorum_deadline.is_none()) {
                let _ = settled.reply.send(answer);
                return;
            }
            // Durable: the actor looks at it after every merge until its settle time ends.
            let _ = commands.send(Command::Settled(Box::new(settled))).await;
        });
    }

    /// A durable claim, looked at again after every merge and when its time comes: within its
    /// settle time it waits unless confirmed; after it, the answer is the claim as the replica
    /// now derives it. A default claim that still holds asks the mesh to confirm it, then
    /// waits for the confirmation until its bound, and answers `quorum` or `settled`.
    async fn settled(&mut self, mut settled: SettledClaim) {
        let node = self.replica.node();
        let (task, agent) = (&settled.task, &settled.agent);
        let state = self.replica.task(task).map(|entry| entry.state.clone());
        let holder = state.as_ref().and_then(|state| state.holder.clone());
        let still_ours =
            holder.as_ref().is_some_and(|holder| holder.node == node && holder.agent.as_ref() == Some(agent));
        // Within the settle time only a confirmed claim is answered: it can never lose.
        let confirmed_ours = still_ours
            && holder.as_ref().zip(state.as_ref()).is_some_and(|(holder, state)| state.is_confirmed(&holder.claim));
        if settled.settle_until.is_some_and(|until| tokio::time::Instant::now() < until) && !confirmed_ours {
            self.claims_waiting.push(settled);
            return;
        }
        settled.settle_until = None;
        if still_ours {
            let asks = settled.quorum_deadline.is_none() && !settled.fast;
            if let (true, None, Some(claim)) = (asks, settled.confirm_until, settled.claim) {
                settled.confirm_until =
                    Some(tokio::time::Instant::now() + std::time::Duration::from_millis(settled.confirm_ms));
                if let Some(vote) = self.ask_confirmation(&settled.task.clone(), claim, now_ms()) {
                    // Durable and pushed before the wait: the peers' votes answer it.
                    let (written, _) = oneshot::channel::<Result<(), ErrorBody>>();
                    self.write_then_answer(vec![vote], Ok(()), written).await;
                }
            }
            let confirmed = settled.claim.is_some_and(|claim| {
                self.replica.task(&settled.task).is_some_and(|entry| entry.state.is_confirmed(&claim))
            });
            let waiting = settled.confirm_until.is_some_and(|until| tokio::time::Instant::now() < until);
            if asks && !confirmed && waiting {
                self.claims_waiting.push(settled);
                return;
            }
            let won: Answer = self.claim_answer(&settled.task.clone(), settled.claim);
            return self.answer_settled(settled, won).await;
        }
        // A quorum claim still waiting for its majority.
        let tally = settled.claim.and_then(|claim| {
            let state = state.as_ref()?;
            let pending = !state.lost_claims.iter().any(|lost| lost.claim == claim);
            state.tallies.get(&claim).filter(|tally| pending && !tally.reached()).cloned()
        });
        if let (Some(tally), Some(deadline)) = (tally, settled.quorum_deadline) {
            if tokio::time::Instant::now() < deadline {
                // Votes arrive by merges: the next merge, or the deadline, looks again.
                self.claims_waiting.push(settled);
                return;
            }
            let pending: Answer = Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "quorum not reached for {task}: {} of {} acknowledgements needed; the claim stays pending \
                     and counts if a majority acknowledges it later",
                    tally.votes, tally.needed
                ),
            )
            .retryable());
            let _ = settled.reply.send(pending);
            return;
        }
        let winner = holder.map_or_else(
            || "nobody yet".to_owned(),
            |holder| match holder.agent {
                Some(agent) => format!("{agent}@{}", self.replica.node_name(&holder.node)),
                None => self.replica.node_name(&holder.node),
            },
        );
        let lost: Answer = Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("the claim of {task} lost a race during its settle time; it went to {winner}"),
        ));
        let task = task.clone();
        let touched = meshwork_crdt::Touched { tasks: [task.clone()].into_iter().collect(), ..Default::default() };
        self.fulfil_duties(&touched).await;
        self.answer_settled(settled, lost).await;
    }

    /// Looks again at every claim not answered yet ([`Self::settled`]): answered once it is
    /// settled, confirmed, counts, lost, or past its time; still waiting otherwise.
    pub(crate) async fn recheck_claims_waiting(&mut self) {
        for settled in std::mem::take(&mut self.claims_waiting) {
            self.settled(settled).await;
        }
    }

    /// Answers a settled claim, keeping the answer for its request id (which was not kept
    /// when the claim was written, or which this answer replaces).
    async fn answer_settled(&mut self, settled: SettledClaim, answer: Answer) {
        let mut frames = Vec::new();
        let replaces = !settled.kept || answer.is_err();
        let keep = replaces && answer.as_ref().err().is_none_or(|error| !error.retryable);
        if let Some(key) = settled.request_key.filter(|_| keep) {
            let entry = RequestEntry { key, response: encode_answer(&answer), unix_ms: now_ms() };
            self.requests.insert(entry.clone());
            frames.push(Frame::Request(entry));
        }
        self.write_then_answer(frames, answer, settled.reply).await;
    }

    /// Hands frames to the store and answers once they are durable.
    pub(crate) async fn write_then_answer<T: Send + 'static>(
        &mut self,
        frames: Vec<Frame>,
        answer: Result<T, ErrorBody>,
        reply: Reply<T>,
    ) {
        if frames.is_empty() {
            let _ = reply.send(answer);
            return;
        }
        if !self.repair_after_failed_write().await {
            let _ = reply.send(Err(storage_failed()));
            return;
        }
        let durable = self.store.submit(frames).await;
        let failed = Arc::clone(&self.write_failed);
        let push = if self.links.is_empty() { None } else { self.commands.upgrade() };
        let push_queued = Arc::clone(&self.push_queued);
        tokio::spawn(async move {
            let answer = match durable.await {
                Ok(Ok(())) => {
                    if let Some(commands) = push.filter(|_| !push_queued.swap(true, Ordering::AcqRel)) {
                        let _ = commands.send(Command::Mesh(Box::new(MeshCommand::Push))).await;
                    }
                    answer
                }
                Ok(Err(error)) => {
                    warn!(%error, "a write failed; the next write stores a whole snapshot");
                    failed.store(true, Ordering::Release);
                    Err(storage_failed())
                }
                Err(_) => Err(storage_failed()),
            };
            let _ = reply.send(answer);
        });
        if self.store.counters().log_bytes > COMPACT_LOG_BYTES {
            self.write_snapshot().await;
        }
    }

    /// After a failed write, changes exist in memory that no file holds: store a whole
    /// snapshot before anything else. True when nothing is missing from the files.
    pub(super) async fn repair_after_failed_write(&mut self) -> bool {
        if self.write_failed.swap(false, Ordering::AcqRel) {
            self.needs_snapshot = true;
        }
        !self.needs_snapshot || self.write_snapshot().await
    }

    /// Writes the whole document and the request table as a snapshot; true when durable.
    pub(super) async fn write_snapshot(&mut self) -> bool {
        let done = self.store.compact(self.replica.doc().save(), self.requests.all()).await;
        match done.await {
            Ok(Ok(())) => {
                self.needs_snapshot = false;
                self.write_start_caches().await;
                true
            }
            Ok(Err(error)) => {
                warn!(%error, "writing a snapshot failed");
                self.needs_snapshot = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Saves the start caches: the ids of verified records, so the next start skips their
    /// signature checks, and the derived state with the document's heads, so a next start
    /// that loads the same document skips deriving it. Caches: failing to write one costs the
    /// next start time, nothing else. Both caches live in the home, beside each other.
    ///
    /// The store's thread writes them (in order after the snapshot), so the actor never waits
    /// for their fsyncs; a failed write is logged there.
    async fn write_start_caches(&self) {
        let bytes = meshwork_protocol::verified_cache::encode_verified_cache(self.replica.verified_records());
        let _durable = self.store.replace_file(self.verified_cache.clone(), bytes).await;
        // The replica refreshes its derived state with every change it makes or takes in, so
        // the state written is that of the document's heads now, which the cache names.
        match self.replica.encode_derived_cache() {
            Ok(bytes) => {
                let _durable = self.store.replace_file(self.home.derived_cache_path(), bytes).await;
            }
            Err(error) => warn!(%error, "could not encode the derived-state cache"),
        }
    }

    fn apply(&mut self, agent: &AgentName, mutation: &Mutation, now: u64) -> Result<Applied, OpError> {
        let key = Arc::clone(&self.key);
        let speaker = Speaker { key: &key, agent };
        let replica = &mut self.replica;
        if let Mutation::Claim(ClaimTask { timeout_ms: Some(timeout_ms), .. }) = mutation
            && *timeout_ms > CLAIM_TIMEOUT_MS_MAX
        {
            let message = format!("--timeout is over the limit CLAIM_TIMEOUT_MS_MAX = {CLAIM_TIMEOUT_MS_MAX} ms");
            return Err(OpError::Refused(ErrorBody::invalid_input(message)));
        }
        match mutation {
            Mutation::AddTask(request) => replica.add_task(speaker, request, now, rand::random()),
            Mutation::EditTask(id, request) => replica.edit_task(speaker, id, request, now),
            Mutation::Cancel(id, reason) => replica.cancel(speaker, id, reason, now),
            Mutation::Claim(ClaimTask { task: Some(id), next: false, quorum, .. }) => {
                let id =
                    TaskId::new(id).map_err(|error| OpError::Refused(ErrorBody::invalid_input(error.to_string())))?;
                replica.claim_with(speaker, &id, meshwork_crdt::ops::ClaimOptions { quorum: *quorum }, now)
            }
            Mutation::Claim(ClaimTask { task: None, next: true, quorum: false, .. }) => {
                replica.claim_next(speaker, now)
            }
            Mutation::Claim(ClaimTask { next: true, quorum: true, .. }) => {
                Err(OpError::Refused(ErrorBody::new(ErrorCode::Usage, "claim --quorum takes a task id, not --next")))
            }
            Mutation::Claim(_) => {
                Err(OpError::Refused(ErrorBody::new(ErrorCode::Usage, "claim takes a task id or --next, not both")))
            }
            Mutation::Renew(id) => replica.renew(speaker, id, now),
            Mutation::Release(id, reason) => replica.release(speaker, id, reason, now),
            Mutation::Progress(id, message, percent) => replica.progress(speaker, id, message, *percent, now),
            Mutation::Handoff(id, request) => replica.handoff(speaker, id, request, now),
            Mutation::Done(id, summary) => replica.done(speaker, id, summary, now),
            Mutation::Fail(id, reason) => replica.fail(speaker, id, reason, now),
            Mutation::Approve(id) => replica.approve(speaker, id, now),
        }
    }

    /// Publishes the events of what `touched` changed in the replica since the last events,
    /// and one `message_arrived` per notice this node wrote for its agents.
    pub(crate) fn publish_events(&mut self, touched: &Touched, notices: &[Notice]) {
        let mut events = self.digest.advance(&self.replica, touched);
        events.extend(notices.iter().map(|notice| Event::MessageArrived {
            agent: notice.to.agent.to_string(),
            message_id: notice.id.clone(),
            from: notice.message.from.clone(),
            subject: notice.message.subject.clone(),
            priority: notice.message.priority.clone(),
        }));
        events.extend(self.digest.lease_events(now_ms()));
        if !events.is_empty() {
            self.events.publish(events);
        }
    }

    /// The lease timer fired: publish the lease events due, and when a lease of this node's
    /// agents ran out, write each holder's one `expired-` notice (without waiting for it).
    async fn publish_lease_events(&mut self) {
        let now = now_ms();
        let events = self.digest.lease_events(now);
        let node = self.replica.node().to_string();
        let own_expired =
            events.iter().any(|event| matches!(event, Event::LeaseExpired { node_id, .. } if *node_id == node));
        if !events.is_empty() {
            self.events.publish(events);
        }
        if !own_expired {
            return;
        }
        let key = Arc::clone(&self.key);
        let duties = self.replica.fulfil_expiry_duties(&key, now);
        for error in &duties.errors {
            warn!(%error, "a notice of an expired lease was not written");
        }
        if duties.changes.is_empty() {
            return;
        }
        let touched = Touched {
            tasks: duties
                .notices
                .iter()
                .filter_map(|notice| notice.message.task.as_deref())
                .filter_map(|task| TaskId::new(task).ok())
                .collect(),
            ..Touched::default()
        };
        self.publish_events(&touched, &duties.notices);
        let (durable, _nobody_waits) = oneshot::channel();
        self.write_then_answer(duties.changes.into_iter().map(Frame::Changes).collect(), Ok(()), durable).await;
    }

    /// The task as the replica now derives it.
    fn task_answer(&self, id: &TaskId) -> Answer {
        let entry = self.replica.task(id).ok_or_else(|| no_task(id))?;
        Ok(self.replica.live_task_view(entry, now_ms()))
    }

    /// A claim's answer: the task object and the receipt of `claim` as the records stand
    /// (docs/PROTOCOL.md, "Confirmation and receipts").
    fn claim_answer(&self, id: &TaskId, claim: Option<RecordId>) -> Answer {
        let entry = self.replica.task(id).ok_or_else(|| no_task(id))?;
        let mut view = self.replica.live_task_view(entry, now_ms());
        view.receipt = claim.and_then(|claim| self.replica.receipt(entry, &claim, !self.links.is_empty()));
        Ok(view)
    }

    /// Answers a question from the replica as it is; never waits.
    fn query(&self, query: Query) {
        let replica = &self.replica;
        match query {
            Query::Task(id, reply) => {
                let _ = reply.send(self.task_answer(&id));
            }
            Query::List { statuses, stale, answer } => {
                let now = now_ms();
                let tasks: Vec<&TaskEntry> =
                    if stale { replica.stale_tasks(now) } else { replica.tasks().values().collect() };
                let listed: Vec<&TaskEntry> = tasks
                    .into_iter()
                    .filter(|entry| statuses.is_empty() || statuses.contains(&entry.state.status))
                    .collect();
                answer.send(replica, &listed, now);
            }
            Query::Ready { all, answer } => {
                let now = now_ms();
                let mut listed = replica.ready_tasks_at(now);
                if !all {
                    listed.retain(|entry| replica.unmet_here(entry).is_empty());
                }
                answer.send(replica, &listed, now);
            }
            Query::Export(format, reply) => {
                let bytes = match format {
                    ExportFormat::Json => replica.export_json().into_bytes(),
                    ExportFormat::Jsonl => replica.export_jsonl().into_bytes(),
                    ExportFormat::Automerge => replica.doc().save(),
                };
                let _ = reply.send(Ok(bytes));
            }
            Query::Members(reply) => {
                let _ = reply.send(Ok(self.member_views()));
            }
            Query::Caps(reply) => {
                let probe = replica.probes().latest(&replica.node()).map(|(_, entry)| entry.probe.clone());
                let probe =
                    probe.ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, "this node has not published a probe yet"));
                let _ = reply.send(probe);
            }
            Query::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
        }
    }

    pub(super) fn member_views(&self) -> Vec<MemberView> {
        self.replica.member_views()
    }

    fn status(&self) -> NodeStatus {
        // One short lock; `peer_views` takes it again.
        let (offline, listen, refused_connections) = {
            let facts = self.net.facts();
            (facts.offline, facts.listen.clone(), facts.refused_connections)
        };
        let (sync_bytes_sent, sync_bytes_received) = crate::net::sync_bytes();
        NodeStatus {
            api_version: meshwork_protocol::api::API_VERSION,
            node_id: self.replica.node().to_string(),
            name: self.facts.name.clone(),
            mesh_id: self.replica.mesh().map(|mesh| mesh.to_string()).unwrap_or_default(),
            home: self.facts.home.clone(),
            offline,
            listen,
            peers: self.peer_views(),
            tasks: self.replica.tasks().len(),
            rejected_records: self.replica.rejected_records(),
            refused_connections,
            skipped_files: self.facts.skipped_files.clone(),
            started_at: format_rfc3339_ms(self.facts.started_at_ms),
            pid: std::process::id(),
            storage: {
                let counters = self.store.counters();
                StorageView {
                    fsyncs: counters.fsyncs,
                    frames_written: counters.frames_written,
                    submissions: counters.submissions,
                    log_bytes: counters.log_bytes,
                }
            },
            sync_bytes_sent,
            sync_bytes_received,
        }
    }

    /// Publishes the probe when it changed; `reply` is answered once it is durable.
    async fn publish_probe(&mut self, probe: Probe, reply: Reply<()>) {
        let key = Arc::clone(&self.key);
        match self.replica.publish_probe(&key, probe, now_ms()) {
            Ok(Some(changes)) => {
                info!("publishing this machine's probe");
                self.publish_events(&Touched { probes: true, ..Touched::default() }, &[]);
                self.write_then_answer(vec![Frame::Changes(changes)], Ok(()), reply).await;
            }
            Ok(None) => {
                let _ = reply.send(Ok(()));
            }
            Err(error) => {
                warn!(%error, "could not publish the probe");
                let _ = reply.send(Err(error.to_error_body()));
            }
        }
    }

    async fn stop(&mut self) {
        self.fulfil_deferred_duties().await;
        // Keep each peer's sync state for the next connection.
        let peers: Vec<meshwork_protocol::NodeId> = self.links.keys().copied().collect();
        for peer in peers {
            self.sync(meshwork_crdt::sync::SyncInput::Disconnected { peer }).await;
        }
        self.links.clear();
        if self.store.counters().log_bytes > COMPACT_ON_STOP_LOG_BYTES || self.needs_snapshot {
            self.write_snapshot().await;
        } else {
            self.write_start_caches().await;
        }
        if let Err(error) = self.store.shutdown().await {
            warn!(%error, "the store did not stop cleanly");
        }
    }
}

fn storage_failed() -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, "the node could not write to its home (disk full?); the operation was not kept")
        .retryable()
}

pub(crate) fn no_task(id: &TaskId) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("no task {id}"))
}

/// How an answer is kept in the idempotency table: the JSON `{"ok": TASK}` or
/// `{"error": ERROR}` (docs/PROTOCOL.md, the request table).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum KeptAnswer {
    Ok(Box<LiveTaskView>),
    Error(ErrorBody),
}

fn encode_answer(answer: &Answer) -> Vec<u8> {
    let kept = match answer {
        Ok(task) => KeptAnswer::Ok(Box::new(task.clone())),
        Err(error) => KeptAnswer::Error(error.clone()),
    };
    serde_json::to_vec(&kept).unwrap_or_default()
}

fn decode_answer(bytes: &[u8]) -> Answer {
    match serde_json::from_slice::<KeptAnswer>(bytes) {
        Ok(KeptAnswer::Ok(task)) => Ok(*task),
        Ok(KeptAnswer::Error(error)) => Err(error),
        Err(_) => Err(ErrorBody::new(ErrorCode::Internal, "a kept answer for this request id is damaged")),
    }
}
