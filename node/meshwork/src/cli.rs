//! The `meshwork` command line: its clap definitions, and the dispatch of each command to the
//! node's local API ([`crate::client`]) or, for `init`, `node start` and `caps`, to the daemon.
//!
//! Names, flags, JSON and exit statuses follow `shared/CONTRACT.md`: success exits 0, a
//! failure exits with [`ErrorCode::exit_status`]. With `--json` every outcome, failures
//! included, is exactly one JSON document on stdout; without it answers go to stdout for
//! people and failures to stderr as `error: MESSAGE`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use meshwork_protocol::TaskId;
use meshwork_protocol::api::{
    AddTask, ClaimTask, EditTask, HandoffRequest, InboxRead, InviteRequest, JoinMesh, LiveTaskView, RemoveMember,
    TaskNote, TaskPage, TaskStatus,
};
use meshwork_protocol::event::EventsQuery;
use meshwork_protocol::route::{self, Empty, ExportQuery, ListTasks, ReadyQuery, Route};
use meshwork_protocol::time::parse_duration_ms;
use meshwork_protocol::{ErrorBody, ErrorCode};
use serde::Serialize;

use crate::output::{self, TaskAction};
use meshwork_client::Client;

/// How long `node stop` waits for the node to close its socket before it gives up.
const STOP_WAIT_MS_MAX: u64 = 10_000;

/// The whole command line: global options and one command.
#[derive(Debug, Parser)]
#[command(name = "meshwork", version, about = "A peer-to-peer work queue for coding agents")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalOptions,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes, before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct GlobalOptions {
    /// The node's home: key, config, document, socket [default: the platform's data directory]
    #[arg(long, global = true, env = "MESHWORK_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// The local agent speaking [default: $USER]
    #[arg(long, global = true, env = "MESHWORK_AGENT", value_name = "NAME")]
    pub(crate) agent: Option<String>,
    /// Print exactly one JSON document on stdout, failures included
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Repeating a mutation with the same id returns the first answer and changes nothing
    #[arg(long, global = true, value_name = "ID")]
    pub(crate) request_id: Option<String>,
}

/// One command of the contract.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the home, key and a mesh of one; idempotent
    Init {
        /// The node's name as peers see it [default: the host name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Run, inspect or stop this home's node
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Add, show, list, edit and cancel tasks
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// List the tasks ready for this machine, best first
    Ready {
        /// Ready for any machine of the mesh, not only this one
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        limit: LimitArg,
    },
    /// Claim a task, or with --next the best task ready for this machine
    Claim {
        #[command(flatten)]
        target: ClaimTarget,
        /// Count the claim only once a majority of members acknowledged it
        #[arg(long, conflicts_with = "fast")]
        quorum: bool,
        /// Answer after the settle time without asking the mesh to confirm the claim
        #[arg(long)]
        fast: bool,
        /// How long to wait for the majority with --quorum [default: 10s], or for the
        /// confirmation otherwise [default: 250ms] (250ms, 90s, 2m)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms, conflicts_with = "fast")]
        timeout: Option<u64>,
    },
    /// Extend the lease of a task you hold
    Renew {
        /// The task
        id: String,
    },
    /// Give a task you hold back to the queue
    Release {
        /// The task
        id: String,
        /// Why, for whoever picks it up next
        #[arg(long)]
        reason: Option<String>,
    },
    /// Record progress on a task you hold
    Progress {
        /// The task
        id: String,
        /// What happened
        message: String,
        /// How far along, 0 to 100
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
    },
    /// Record what the next agent needs to continue a task
    Handoff(HandoffArgs),
    /// Finish a task you hold
    Done {
        /// The task
        id: String,
        /// What was done
        #[arg(long)]
        summary: Option<String>,
    },
    /// Record that a task you hold failed; it opens again while attempts remain
    Fail {
        /// The task
        id: String,
        /// Why it failed
        #[arg(long)]
        reason: String,
    },
    /// Approve a task that needs approval
    Approve {
        /// The task
        id: String,
    },
    /// Write the whole resolved state
    Export(ExportArgs),
    /// The mesh this node belongs to
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// This agent's messages (lost claims are reported here)
    Inbox {
        #[command(subcommand)]
        command: InboxCommand,
    },
    /// Print the node's events as they happen (--agent: only that agent's claims and messages)
    Watch {
        /// Only events of this kind (task_created, task_changed, task_ready, task_claimed,
        /// task_finished, claim_won, claim_lost, claim_taken_over, lease_expiring,
        /// lease_expired, message_arrived, peer_connected, peer_disconnected, member_added,
        /// member_removed, probe_changed, gap); may repeat
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Resume after this event id (the last one printed): what the node still keeps
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
    },
    /// Show this machine's capability probe
    Caps,
    /// Measure a real node process and print a table (see docs/BENCHMARKS.md)
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// `meshwork bench ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Durable mutations (task add) through the local API, by number of concurrent clients
    Node {
        /// Operations per row
        #[arg(long, default_value_t = 4000)]
        ops: usize,
        /// Concurrent clients, one row each
        #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
        clients: Vec<usize>,
    },
    /// Time to the first answer and peak memory of a node holding many tasks
    ColdStart {
        /// Tasks in the queue
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Starts to measure
        #[arg(long, default_value_t = 3)]
        starts: usize,
        /// Claim, report progress on and finish every task (three signed records each)
        #[arg(long)]
        finish: bool,
    },
    /// One `meshwork` process per call (ready, task list, task add, claim, done) by queue size
    Cli {
        /// Queue sizes, one group of rows each
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 5_000, 20_000])]
        tasks: Vec<usize>,
        /// Timed processes per row
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Nodes on loopback: claim propagation, a conflict storm, and an offline node's merge
    Mesh {
        /// Nodes in the mesh for propagation and the conflict storm
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..=16))]
        nodes: u16,
        /// Tasks claimed, once each for propagation and by every node in the storm
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        /// Operations done offline (a quarter of them tasks, each added, claimed, progressed, done)
        #[arg(long, default_value_t = 5000)]
        ops: usize,
    },
}

/// `meshwork node ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Run the node in the foreground until SIGINT or SIGTERM
    Start(StartOptions),
    /// Show the running node; exits 0 when it runs
    Status,
    /// Stop the running node and wait until it is gone
    Stop,
}

impl From<StartOptions> for meshwork_daemon::StartOptions {
    fn from(options: StartOptions) -> meshwork_daemon::StartOptions {
        let StartOptions { listen, peers, no_mdns, offline, dashboard } = options;
        meshwork_daemon::StartOptions { listen, peers, no_mdns, offline, dashboard }
    }
}

/// How `meshwork node start` runs the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub(crate) struct StartOptions {
    /// Listen on this address [default: QUIC and TCP on all interfaces]
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub(crate) listen: Vec<String>,
    /// Dial this peer
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub(crate) peers: Vec<String>,
    /// Do not discover peers on the local network
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Neither listen nor dial
    #[arg(long)]
    pub(crate) offline: bool,
    /// Serve the web dashboard on this address
    #[arg(long, value_name = "ADDR")]
    pub(crate) dashboard: Option<String>,
}

/// `meshwork task ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Add a task
    #[command(allow_negative_numbers = true)]
    Add(AddTask),
    /// Show one task
    Show {
        /// The task
        id: String,
    },
    /// List tasks
    List {
        /// Only tasks in this status (repeat for several)
        #[arg(long = "status", value_name = "STATUS", value_parser = status_parser())]
        statuses: Vec<String>,
        /// Only stale tasks: claimed, but the holder's lease ran out (`ready` offers them)
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        limit: LimitArg,
    },
    /// Change a task; what is not named stays as it is
    #[command(allow_negative_numbers = true)]
    Edit {
        /// The task
        id: String,
        #[command(flatten)]
        edit: EditTask,
    },
    /// Cancel a task
    Cancel {
        /// The task
        id: String,
        /// Why
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `--limit N` of the listings (`ready`, `task list`).
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct LimitArg {
    /// Show at most N rows, 0 for all [default: 20 for ready, 50 for task list]. With --json the
    /// listing is complete unless --limit is given
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

impl LimitArg {
    /// The `limit` of the listing's query: for people the first `rows_default` rows unless
    /// told otherwise, under `--json` everything unless told otherwise; 0 is no limit.
    fn query_limit(self, json: bool, rows_default: usize) -> Option<usize> {
        match self.limit {
            Some(0) => None,
            Some(limit) => Some(limit),
            None if json => None,
            None => Some(rows_default),
        }
    }
}

/// Rows `ready` shows people unless `--limit` says otherwise.
const READY_ROWS_DEFAULT: usize = 20;
/// Rows `task list` shows people unless `--limit` says otherwise.
const LIST_ROWS_DEFAULT: usize = 50;

/// `meshwork claim ID` or `meshwork claim --next`: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct ClaimTarget {
    /// The task to claim
    id: Option<String>,
    /// Claim the best task ready for this machine
    #[arg(long)]
    next: bool,
}

/// `meshwork handoff`.
#[derive(Debug, Args)]
pub(crate) struct HandoffArgs {
    /// The task
    id: String,
    /// A commit that holds the work so far (repeatable)
    #[arg(long = "commit", value_name = "SHA")]
    commits: Vec<String>,
    /// A file worth reading first (repeatable)
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<String>,
    /// A test command that shows where things stand (repeatable)
    #[arg(long = "test", value_name = "CMD")]
    tests: Vec<String>,
    /// A risk the next agent should know (repeatable)
    #[arg(long = "risk", value_name = "TEXT")]
    risks: Vec<String>,
    /// What to do next
    #[arg(long, value_name = "TEXT")]
    next: Option<String>,
}

/// `meshwork export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The export's format
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    format: ExportFormat,
    /// Write to this file instead of stdout
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The formats `meshwork export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// One JSON document
    Json,
    /// One JSON object per line
    Jsonl,
    /// The raw Automerge document
    Automerge,
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Json => "json",
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Automerge => "automerge",
        }
    }
}

/// `meshwork mesh ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// List the mesh's members
    Members,
    /// Print a one-time token that lets another node join this mesh
    Invite {
        /// How long the token stays valid (90s, 30m, 2h, 1d) [default: 1h, at most 7d]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
        ttl: Option<u64>,
    },
    /// Join the mesh of an invite token; returns once this node is a member
    Join {
        /// The token `meshwork mesh invite` printed on a member
        token: String,
    },
    /// Remove a member by a signed record; its later records do not count
    Remove {
        /// The member's node id (12D3KooW...)
        node: String,
    },
}

/// `meshwork inbox ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum InboxCommand {
    /// Show this agent's messages and mark them read
    Read {
        /// Only messages not read before
        #[arg(long)]
        unread: bool,
    },
}

fn status_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(TaskStatus::ALL.map(TaskStatus::as_str))
}

/// Parses the process's arguments. A usage error exits 2: with `--json` anywhere in the
/// arguments it prints `{"error": {"code": "USAGE", ...}}` on stdout, otherwise clap's message
/// on stderr. `--help` and `--version` print and exit 0.
pub(crate) fn parse() -> Cli {
    let args: Vec<OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) if is_usage_error(&error) && wants_json(&args) => {
            output::print_json_error(&usage_error_body(&error));
            std::process::exit(i32::from(ErrorCode::Usage.exit_status()))
        }
        Err(error) => error.exit(),
    }
}

/// Help and version requests are answers, not errors.
fn is_usage_error(error: &clap::Error) -> bool {
    use clap::error::ErrorKind;
    !matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
}

/// Whether `--json` stands among the options (before a lone `--`, after which all is values).
fn wants_json(args: &[OsString]) -> bool {
    args.iter().skip(1).take_while(|arg| *arg != "--").any(|arg| arg == "--json")
}

/// clap's message without its usage block, on one line: `unexpected argument '--x' found`.
fn usage_error_body(error: &clap::Error) -> ErrorBody {
    let rendered = error.render().to_string();
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap renders the command's whole help here; name the command instead.
        return ErrorBody::new(ErrorCode::Usage, missing_subcommand_message(&rendered));
    }
    let mut message = String::new();
    let lines = rendered.lines().map(str::trim).filter(|line| !line.is_empty());
    for line in lines.take_while(|line| !line.starts_with("Usage:")) {
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(line);
    }
    ErrorBody::new(ErrorCode::Usage, message)
}

/// `meshwork task needs a subcommand; see meshwork task --help`, the command read from the
/// usage line of the rendered help.
fn missing_subcommand_message(rendered_help: &str) -> String {
    let usage = rendered_help.lines().find_map(|line| line.trim().strip_prefix("Usage: "));
    let words = usage.unwrap_or("meshwork").split_whitespace();
    let command: Vec<&str> = words.take_while(|word| !word.starts_with(['[', '<'])).collect();
    let command = command.join(" ");
    format!("{command} needs a subcommand; see `{command} --help`")
}

/// Runs one command and returns the process's exit status.
pub(crate) fn run(cli: Cli) -> i32 {
    let json = cli.global.json;
    match execute(cli) {
        Ok(()) => 0,
        Err(error) => {
            if json {
                output::print_json_error(&error);
            } else {
                eprintln!("error: {}", error.message);
            }
            i32::from(error.code.exit_status())
        }
    }
}

fn execute(cli: Cli) -> Result<(), ErrorBody> {
    let Cli { global, command } = cli;
    let home = resolve_home(global.home.clone()).map_err(|error| error_body(&error))?;
    match command {
        Command::Init { name } => {
            let view = meshwork_daemon::init(&home, name.as_deref()).map_err(|e| error_body(&e))?;
            print_answer(global.json, &view, output::init)
        }
        Command::Node { command: NodeCommand::Start(options) } => {
            meshwork_daemon::start(&home, options.into()).map_err(|error| error_body(&error))
        }
        Command::Bench { command } => {
            let measured = match command {
                BenchCommand::Node { ops, clients } => crate::bench::node(ops, &clients),
                BenchCommand::ColdStart { tasks, starts, finish } => crate::bench::cold_start(tasks, starts, finish),
                BenchCommand::Cli { tasks, runs } => crate::bench::cli(&tasks, runs),
                BenchCommand::Mesh { nodes, tasks, ops } => crate::bench::mesh(usize::from(nodes), tasks, ops),
            };
            measured.map_err(|error| error_body(&error))
        }
        Command::Caps => {
            let probe = meshwork_daemon::local_caps(&home).map_err(|error| error_body(&error))?;
            print_answer(global.json, &probe, output::probe)
        }
        Command::Export(export) => {
            check_export_destination(&export, global.json, std::io::stdout().is_terminal())?;
            block_on(run_export(&global, &home, export))
        }
        command => block_on(run_api_command(&global, &home, command)),
    }
}

/// The node's home: `--home`, else `MESHWORK_HOME`, else the platform's data directory
/// (`~/.local/share/meshwork` on Linux). Relative paths are made absolute.
pub(crate) fn resolve_home(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let env = std::env::var_os("MESHWORK_HOME");
    let platform_default = || directories::ProjectDirs::from("", "", "meshwork").map(|dirs| dirs.data_dir().to_owned());
    let home = choose_home(flag, env, platform_default).ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::Usage,
            "cannot find this platform's data directory; pass --home DIR or set MESHWORK_HOME",
        )
    })?;
    Ok(std::path::absolute(&home).unwrap_or(home))
}

/// The order of [`resolve_home`], apart from the process's environment. Empty values count as
/// absent.
fn choose_home(
    flag: Option<PathBuf>,
    env: Option<OsString>,
    platform_default: impl FnOnce() -> Option<PathBuf>,
) -> Option<PathBuf> {
    flag.filter(|path| !path.as_os_str().is_empty())
        .or_else(|| env.filter(|value| !value.is_empty()).map(PathBuf::from))
        .or_else(platform_default)
}

/// The agent speaking: `--agent` (or `MESHWORK_AGENT`), else `$USER`, else `agent`.
fn agent_name(flag: Option<&str>, user: Option<String>) -> String {
    flag.filter(|name| !name.is_empty())
        .map(str::to_owned)
        .or_else(|| user.filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "agent".to_owned())
}

/// Reads an error the daemon returned: an [`ErrorBody`] inside keeps its code, anything else
/// is `INTERNAL`.
fn error_body(error: &anyhow::Error) -> ErrorBody {
    match error.downcast_ref::<ErrorBody>() {
        Some(body) => body.clone(),
        None => ErrorBody::new(ErrorCode::Internal, format!("{error:#}")),
    }
}

fn internal(context: &str, error: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, format!("{context}: {error}"))
}

/// Runs a client future on a current-thread runtime: the CLI lives for one request.
fn block_on(future: impl Future<Output = Result<(), ErrorBody>>) -> Result<(), ErrorBody> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| internal("cannot start the async runtime", error))?;
    runtime.block_on(future)
}

async fn connect(global: &GlobalOptions, home: &Path) -> Result<Client, ErrorBody> {
    let agent = agent_name(global.agent.as_deref(), std::env::var("USER").ok());
    let client = Client::connect(home).await?;
    client.with_agent(&agent)?.with_request_id(global.request_id.as_deref())
}

/// One command's exchange with the node: its client, and how its answer is shown.
struct Session<'a> {
    global: &'a GlobalOptions,
    home: &'a Path,
    /// Set in tests: each call is written here as `METHOD PATH BODY` instead of being sent.
    #[cfg(test)]
    recorded: Option<std::cell::RefCell<Vec<String>>>,
}

impl Session<'_> {
    /// Calls route `R` and prints its answer: under `--json` the node's own JSON text (so
    /// fields keep the API's order), else `render`'s text for people. An answer this CLI
    /// cannot read (a newer node, say) is shown as JSON with a warning: the operation itself
    /// succeeded.
    async fn call<R: Route>(
        &self,
        path: R::Path,
        request: R::Request,
        render: impl FnOnce(&R::Answer) -> String,
    ) -> Result<(), ErrorBody> {
        #[cfg(test)]
        if let Some(recorded) = &self.recorded {
            recorded.borrow_mut().push(describe_call::<R>(&path, &request));
            return Ok(());
        }
        let mut client = connect(self.global, self.home).await?;
        let reply = client.send::<R>(&path, &request).await?;
        drop(client);
        if self.global.json {
            // The node wrote these bytes with serde_json and HTTP framed them, so they are one
            // JSON document; parsing 13 MB to check again cost more than the rest of the
            // command (docs/BENCHMARKS.md, "CLI calls"). A cheap look still refuses anything
            // that is plainly not one object or array.
            if !output::looks_like_one_json_document(reply.chunks()) {
                return Err(ErrorBody::new(ErrorCode::Internal, "the node's answer is not a JSON object or array"));
            }
            return output::print_json_chunks(reply.chunks());
        }
        match reply.decode() {
            Ok(answer) => output::print_text(&render(&answer)),
            Err(error) => {
                eprintln!("warning: {}; showing the answer as JSON", error.message);
                let value: serde_json::Value =
                    serde_json::from_slice(&reply.bytes()).map_err(|error| internal("the node's answer", error))?;
                let text = serde_json::to_string_pretty(&value).map_err(|error| internal("the answer", error))?;
                output::print_text(&(text + "\n"))
            }
        }
    }

    /// A listing (`ready`, `task list`): under `--json` route `Full`'s array, else route
    /// `Page`'s first rows and the count of the rest. People read the top of a long list,
    /// and only the rows shown cross the socket.
    async fn listing<Full, Page>(&self, query: Full::Request) -> Result<(), ErrorBody>
    where
        Full: Route<Path = (), Answer = Vec<LiveTaskView>>,
        Page: Route<Path = (), Request = Full::Request, Answer = TaskPage>,
    {
        if self.global.json {
            self.call::<Full>((), query, |tasks| output::task_table(tasks)).await
        } else {
            self.call::<Page>((), query, output::task_page).await
        }
    }

    /// A route answered with one task, shown as `action`'s confirmation.
    async fn on_task<R: Route<Answer = LiveTaskView>>(
        &self,
        path: R::Path,
        request: R::Request,
        action: TaskAction,
    ) -> Result<(), ErrorBody> {
        self.call::<R>(path, request, |task| output::task(action, task)).await
    }
}

/// `METHOD PATH BODY` of one call, as the client would send it (the test of the CLI's
/// mapping reads these).
#[cfg(test)]
fn describe_call<R: Route>(path: &R::Path, request: &R::Request) -> String {
    use meshwork_protocol::route::PathArgs;
    let target = path.fill(R::PATH);
    if R::METHOD.request_in_query() {
        let query = serde_urlencoded::to_string(request).unwrap_or_default();
        let target = if query.is_empty() { target } else { format!("{target}?{query}") };
        return format!("{} {target} ", R::METHOD.as_str());
    }
    let body = serde_json::to_value(request).map(|value| value.to_string()).unwrap_or_default();
    format!("{} {target} {body}", R::METHOD.as_str())
}

/// A task id from the command line; a malformed one is `INVALID_INPUT`, as the node says.
fn task_id(text: &str) -> Result<TaskId, ErrorBody> {
    TaskId::new(text).map_err(|error| ErrorBody::invalid_input(error.to_string()))
}

fn note(text: Option<String>, percent: Option<u8>) -> TaskNote {
    TaskNote { text: text.unwrap_or_default(), percent }
}

/// Runs each command that talks to the node. `init`, `node start`, `caps`, `bench` and
/// `export` are handled before this.
async fn run_api_command(global: &GlobalOptions, home: &Path, command: Command) -> Result<(), ErrorBody> {
    let session = Session {
        global,
        home,
        #[cfg(test)]
        recorded: None,
    };
    dispatch(&session, command).await
}

/// Makes the one typed call of a command.
async fn dispatch(session: &Session<'_>, command: Command) -> Result<(), ErrorBody> {
    let (global, home) = (session.global, session.home);
    match command {
        Command::Node { command: NodeCommand::Status } => {
            session.call::<route::Status>((), Empty {}, output::node_status).await
        }
        Command::Node { command: NodeCommand::Stop } => {
            let mut client = connect(global, home).await?;
            let stopping = client.call::<route::Shutdown>(&(), &Empty {}).await?;
            drop(client);
            meshwork_client::wait_until_stopped(home, Duration::from_millis(STOP_WAIT_MS_MAX)).await?;
            print_answer(global.json, &stopping, |_| format!("stopped the node for {}\n", home.display()))
        }
        Command::Task { command } => run_task_command(session, command).await,
        Command::Ready { all, limit } => {
            let query = ReadyQuery { all, limit: limit.query_limit(global.json, READY_ROWS_DEFAULT) };
            session.listing::<route::Ready, route::ReadyPage>(query).await
        }
        Command::Claim { target, quorum, fast, timeout } => {
            let request = ClaimTask { task: target.id, next: target.next, quorum, fast, timeout_ms: timeout };
            session.on_task::<route::Claim>((), request, TaskAction::Claimed).await
        }
        Command::Renew { id } => session.on_task::<route::Renew>(task_id(&id)?, Empty {}, TaskAction::Renewed).await,
        Command::Release { id, reason } => {
            session.on_task::<route::Release>(task_id(&id)?, note(reason, None), TaskAction::Released).await
        }
        Command::Progress { id, message, percent } => {
            session.on_task::<route::Progress>(task_id(&id)?, note(Some(message), percent), TaskAction::Progress).await
        }
        Command::Handoff(handoff) => {
            let id = task_id(&handoff.id)?;
            let request = HandoffRequest {
                commits: handoff.commits,
                files: handoff.files,
                tests: handoff.tests,
                risks: handoff.risks,
                next: handoff.next.unwrap_or_default(),
            };
            session.on_task::<route::Handoff>(id, request, TaskAction::Handoff).await
        }
        Command::Done { id, summary } => {
            session.on_task::<route::Done>(task_id(&id)?, note(summary, None), TaskAction::Done).await
        }
        Command::Fail { id, reason } => {
            session.on_task::<route::Fail>(task_id(&id)?, note(Some(reason), None), TaskAction::Failed).await
        }
        Command::Approve { id } => {
            session.on_task::<route::Approve>(task_id(&id)?, Empty {}, TaskAction::Approved).await
        }
        Command::Mesh { command: MeshCommand::Members } => {
            session.call::<route::Members>((), Empty {}, |members| output::members_table(members)).await
        }
        Command::Mesh { command: MeshCommand::Invite { ttl } } => {
            session.call::<route::MeshInvite>((), InviteRequest { ttl_ms: ttl }, output::invite).await
        }
        Command::Mesh { command: MeshCommand::Join { token } } => {
            session.call::<route::MeshJoin>((), JoinMesh { token }, output::joined).await
        }
        Command::Mesh { command: MeshCommand::Remove { node } } => {
            let request = RemoveMember { node_id: node };
            session.call::<route::MeshRemove>((), request, |members| output::members_table(members)).await
        }
        Command::Inbox { command: InboxCommand::Read { unread } } => {
            session.call::<route::Inbox>((), InboxRead { unread }, |messages| output::messages(messages)).await
        }
        Command::Watch { kinds, after } => watch(global, home, kinds, after).await,
        Command::Init { .. }
        | Command::Node { command: NodeCommand::Start(_) }
        | Command::Caps
        | Command::Bench { .. }
        | Command::Export(_) => Err(ErrorBody::new(ErrorCode::Internal, "this command needs no request")),
    }
}

/// `meshwork watch`: one line per event (one JSON object under `--json`) until the node
/// stops, which is `NODE_UNAVAILABLE` naming the last event id to resume after.
async fn watch(global: &GlobalOptions, home: &Path, kinds: Vec<String>, after: Option<u64>) -> Result<(), ErrorBody> {
    let query = EventsQuery {
        agent: global.agent.clone().filter(|agent| !agent.is_empty()),
        kind: (!kinds.is_empty()).then(|| kinds.join(",")),
        after: None,
    };
    let mut client = connect(global, home).await?;
    let mut stream = client.events(&query, after).await?;
    let mut last_id = after;
    while let Some(envelope) = stream.next().await {
        let envelope = envelope?;
        last_id = Some(envelope.id);
        let line = if global.json {
            serde_json::to_string(&envelope).map_err(|error| internal("cannot encode the event", error))? + "\n"
        } else {
            output::event(&envelope)
        };
        output::print_text(&line)?;
    }
    let resume = last_id.map(|id| format!("; resume with `meshwork watch --after {id}`")).unwrap_or_default();
    Err(ErrorBody::new(ErrorCode::NodeUnavailable, format!("the node for {} stopped{resume}", home.display()))
        .retryable())
}

async fn run_task_command(session: &Session<'_>, command: TaskCommand) -> Result<(), ErrorBody> {
    match command {
        TaskCommand::Add(add) => session.on_task::<route::TaskAdd>((), add, TaskAction::Added).await,
        TaskCommand::Show { id } => session.on_task::<route::TaskShow>(task_id(&id)?, Empty {}, TaskAction::Show).await,
        TaskCommand::List { statuses, stale, limit } => {
            let status = statuses.iter().map(|status| status.as_str()).collect::<Vec<_>>().join(",");
            let limit = limit.query_limit(session.global.json, LIST_ROWS_DEFAULT);
            let request = ListTasks { status: (!status.is_empty()).then_some(status), stale, limit };
            session.listing::<route::TaskList, route::TaskListPage>(request).await
        }
        TaskCommand::Edit { id, edit: request } => {
            let id = task_id(&id)?;
            if request == EditTask::default() {
                return Err(ErrorBody::new(
                    ErrorCode::Usage,
                    "nothing to change; pass at least one of --title, --description, --priority, --after, \
                     --not-after, --requires, --prefers, --lease, --max-attempts",
                ));
            }
            session.on_task::<route::TaskEdit>(id, request, TaskAction::Edited).await
        }
        TaskCommand::Cancel { id, reason } => {
            session.on_task::<route::TaskCancel>(task_id(&id)?, note(reason, None), TaskAction::Cancelled).await
        }
    }
}

/// Prints a value the daemon returned: as JSON, or rendered for people.
fn print_answer<T: Serialize>(json: bool, value: &T, render: impl FnOnce(&T) -> String) -> Result<(), ErrorBody> {
    if json {
        let text = serde_json::to_string(value).map_err(|error| internal("cannot encode the answer", error))?;
        output::print_json_text(text.as_bytes())
    } else {
        output::print_text(&render(value))
    }
}

/// Refuses to write binary to a terminal, or anything but one JSON document under `--json`.
fn check_export_destination(export: &ExportArgs, json: bool, stdout_is_terminal: bool) -> Result<(), ErrorBody> {
    if export.output.is_some() || export.format != ExportFormat::Automerge {
        return Ok(());
    }
    if json {
        return Err(ErrorBody::new(
            ErrorCode::Usage,
            "--json prints one JSON document; write the automerge export with --output FILE",
        ));
    }
    if stdout_is_terminal {
        return Err(ErrorBody::new(
            ErrorCode::Usage,
            "refusing to write the binary automerge document to a terminal; \
             pass --output FILE or redirect stdout",
        ));
    }
    Ok(())
}

/// What `export --output FILE --json` prints.
#[derive(Debug, Serialize)]
struct ExportWritten<'a> {
    format: &'static str,
    output: &'a Path,
    bytes: usize,
}

async fn run_export(global: &GlobalOptions, home: &Path, export: ExportArgs) -> Result<(), ErrorBody> {
    let mut client = connect(global, home).await?;
    let bytes = client.export(&ExportQuery { format: Some(export.format.as_str().to_owned()) }).await?;
    let Some(file) = &export.output else {
        return output::print_export(&bytes, export.format != ExportFormat::Automerge);
    };
    std::fs::write(file, &bytes).map_err(|error| internal(&format!("cannot write {}", file.display()), error))?;
    let written = ExportWritten { format: export.format.as_str(), output: file, bytes: bytes.len() };
    print_answer(global.json, &written, |written| {
        format!("wrote the {} export to {} ({} bytes)\n", written.format, file.display(), written.bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("meshwork").chain(args.iter().copied()))
    }

    fn os_args(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Global options may stand before or after the subcommand: parse both placements and
    /// compare.
    #[test]
    fn global_options_parse_before_and_after_the_subcommand() {
        let before = ["--home", "/h", "--agent", "a1", "--json", "--request-id", "r1", "task", "show", "W-1"];
        let after = ["task", "show", "W-1", "--home", "/h", "--agent", "a1", "--json", "--request-id", "r1"];
        for args in [&before[..], &after[..]] {
            let cli = parse_args(args).map_err(|error| error.to_string());
            let cli = cli.as_ref().map(|cli| &cli.global);
            let cli = cli.map(|g| (g.home.clone(), g.agent.clone(), g.json, g.request_id.clone()));
            assert_eq!(
                cli,
                Ok((Some(PathBuf::from("/h")), Some("a1".to_owned()), true, Some("r1".to_owned()))),
                "{args:?}"
            );
        }
        let middle = parse_args(&["task", "--json", "show", "W-1"]);
        assert!(middle.is_ok_and(|cli| cli.global.json));
    }

    /// `claim` takes exactly one of ID and `--next`: try none, each, and both.
    #[test]
    fn claim_requires_exactly_one_of_id_and_next() {
        let target = |args: &[&str]| match parse_args(args) {
            Ok(Cli { command: Command::Claim { target, .. }, .. }) => Ok((target.id, target.next)),
            Ok(other) => panic!("not a claim: {other:?}"),
            Err(error) => Err(error.kind()),
        };
        use clap::error::ErrorKind;
        assert_eq!(target(&["claim", "W-1"]), Ok((Some("W-1".to_owned()), false)));
        assert_eq!(target(&["claim", "--next"]), Ok((None, true)));
        assert_eq!(target(&["claim"]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(target(&["claim", "W-1", "--next"]), Err(ErrorKind::ArgumentConflict));
    }

    /// A usage error under `--json` becomes the contract's USAGE body, on one line; without
    /// `--json`, or after `--`, clap speaks.
    #[test]
    fn usage_errors_become_json_when_json_is_asked() {
        assert!(wants_json(&os_args(&["meshwork", "fail", "W-1", "--json"])));
        assert!(!wants_json(&os_args(&["meshwork", "progress", "W-1", "--", "--json"])));
        assert!(!wants_json(&os_args(&["meshwork", "fail", "W-1"])));
        let Err(error) = parse_args(&["fail", "W-1", "--json"]) else { panic!("parsed") };
        let envelope = meshwork_protocol::error::ErrorEnvelope { error: usage_error_body(&error) };
        expect_test::expect![[r#"{"error":{"code":"USAGE","message":"the following required arguments were not provided: --reason <REASON>","retryable":false}}"#]]
            .assert_eq(&serde_json::to_string(&envelope).unwrap_or_default());
        let Err(error) = parse_args(&["--json", "bogus"]) else { panic!("parsed") };
        expect_test::expect!["unrecognized subcommand 'bogus'"].assert_eq(&usage_error_body(&error).message);
        let Err(error) = parse_args(&["--json", "task"]) else { panic!("parsed") };
        expect_test::expect!["meshwork task needs a subcommand; see `meshwork task --help`"]
            .assert_eq(&usage_error_body(&error).message);
        let Err(help) = parse_args(&["--help", "--json"]) else { panic!("parsed") };
        assert!(!is_usage_error(&help));
    }

    /// Durations parse with the protocol's parser into milliseconds; percents stay in 0..=100;
    /// priorities may be negative.
    #[test]
    fn durations_percents_and_negative_priorities_are_validated() {
        let lease = |text: &str| match parse_args(&["task", "add", "T", "--lease", text]) {
            Ok(Cli { command: Command::Task { command: TaskCommand::Add(add) }, .. }) => Ok(add.lease_ms),
            Ok(other) => panic!("not an add: {other:?}"),
            Err(error) => Err(error.kind()),
        };
        assert_eq!(lease("90s"), Ok(Some(90_000)));
        assert_eq!(lease("2h"), Ok(Some(7_200_000)));
        assert_eq!(lease("1.5h"), Err(clap::error::ErrorKind::ValueValidation));
        assert!(parse_args(&["progress", "W-1", "half", "--percent", "100"]).is_ok());
        assert!(parse_args(&["progress", "W-1", "half", "--percent", "0"]).is_ok());
        for bad in ["101", "-1", "50.5"] {
            assert!(parse_args(&["progress", "W-1", "half", "--percent", bad]).is_err(), "{bad}");
        }
        let priority = |args: &[&str]| match parse_args(args) {
            Ok(Cli { command: Command::Task { command: TaskCommand::Add(add) }, .. }) => Some(add.priority),
            Ok(Cli { command: Command::Task { command: TaskCommand::Edit { edit, .. } }, .. }) => edit.priority,
            other => panic!("{other:?}"),
        };
        assert_eq!(priority(&["task", "add", "T", "--priority", "-5"]), Some(-5));
        assert_eq!(priority(&["task", "edit", "W-1", "--priority", "-7"]), Some(-7));
    }

    /// `--home` beats `MESHWORK_HOME`, which beats the platform default; empty values are
    /// absent. Tested on the pure core since the process's environment is shared.
    #[test]
    fn home_resolves_flag_then_env_then_platform_default() {
        let default = || Some(PathBuf::from("/default"));
        let env = || Some(OsString::from("/env"));
        let flag = || Some(PathBuf::from("/flag"));
        assert_eq!(choose_home(flag(), env(), default), Some(PathBuf::from("/flag")));
        assert_eq!(choose_home(None, env(), default), Some(PathBuf::from("/env")));
        assert_eq!(choose_home(None, None, default), Some(PathBuf::from("/default")));
        assert_eq!(choose_home(Some(PathBuf::new()), Some(OsString::new()), default), Some(PathBuf::from("/default")));
        assert_eq!(choose_home(None, None, || None), None);
        let resolved = resolve_home(Some(PathBuf::from("relative/home"))).ok();
        assert!(resolved.is_some_and(|home| home.is_absolute() && home.ends_with("relative/home")));
    }

    /// The agent is `--agent`, else `$USER`, else `agent`.
    #[test]
    fn agent_defaults_to_user_then_agent() {
        assert_eq!(agent_name(Some("claude-1"), Some("ann".to_owned())), "claude-1");
        assert_eq!(agent_name(None, Some("ann".to_owned())), "ann");
        assert_eq!(agent_name(Some(""), Some(String::new())), "agent");
    }

    /// The call a command line makes, as `METHOD PATH BODY`, through the CLI's own dispatch.
    fn call_for(args: &[&str]) -> String {
        let cli = match parse_args(args) {
            Ok(cli) => cli,
            Err(error) => return format!("error: {error}"),
        };
        let home = PathBuf::from("/nowhere");
        let session = Session { global: &cli.global, home: &home, recorded: Some(Default::default()) };
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { panic!("no runtime") };
        match runtime.block_on(dispatch(&session, cli.command)) {
            Ok(()) => session.recorded.map(|calls| calls.into_inner().join("\n")).unwrap_or_default(),
            Err(error) => format!("error: {}: {}", error.code.as_str(), error.message),
        }
    }

    /// Each command maps to the route and body of docs/API.md; ids are escaped in paths.
    #[test]
    fn commands_map_to_api_requests() {
        let calls = [
            call_for(&["claim", "--next"]),
            call_for(&["claim", "W-1"]),
            call_for(&["task", "list", "--status", "open", "--status", "claimed"]),
            call_for(&["ready", "--all"]),
            call_for(&["ready", "--json"]),
            call_for(&["ready", "--limit", "0"]),
            call_for(&["task", "list", "--json", "--limit", "5"]),
            call_for(&["task", "list", "--status", "open", "--limit", "3"]),
            call_for(&["progress", "W.1", "half way", "--percent", "50"]),
            call_for(&["task", "edit", "W-1", "--lease", "30m", "--requires", "os=linux"]),
            call_for(&["task", "edit", "W-1"]),
            call_for(&["task", "show", ".."]),
            call_for(&["handoff", "W-1", "--commit", "abc", "--next", "tests"]),
            call_for(&["claim", "W-1", "--quorum", "--timeout", "30s"]),
            call_for(&["mesh", "invite", "--ttl", "2h"]),
            call_for(&["mesh", "join", "mwinvite1.abc"]),
            call_for(&["mesh", "remove", "12D3KooWPeer"]),
            call_for(&["inbox", "read", "--unread"]),
        ];
        expect_test::expect![[r#"
            POST /v1/claim {"fast":false,"next":true,"quorum":false,"task":null,"timeout_ms":null}
            POST /v1/claim {"fast":false,"next":false,"quorum":false,"task":"W-1","timeout_ms":null}
            GET /v1/pages/tasks?status=open%2Cclaimed&limit=50 
            GET /v1/pages/ready?all=true&limit=20 
            GET /v1/ready?all=false 
            GET /v1/pages/ready?all=false 
            GET /v1/tasks?limit=5 
            GET /v1/pages/tasks?status=open&limit=3 
            POST /v1/tasks/W%2E1/progress {"percent":50,"text":"half way"}
            PATCH /v1/tasks/W-1 {"after":[],"description":null,"lease_ms":1800000,"max_attempts":null,"not_after":[],"prefers":null,"priority":null,"requires":["os=linux"],"title":null}
            error: USAGE: nothing to change; pass at least one of --title, --description, --priority, --after, --not-after, --requires, --prefers, --lease, --max-attempts
            GET /v1/tasks/%2E%2E 
            POST /v1/tasks/W-1/handoff {"commits":["abc"],"files":[],"next":"tests","risks":[],"tests":[]}
            POST /v1/claim {"fast":false,"next":false,"quorum":true,"task":"W-1","timeout_ms":30000}
            POST /v1/mesh/invite {"ttl_ms":7200000}
            POST /v1/mesh/join {"token":"mwinvite1.abc"}
            POST /v1/mesh/remove {"node_id":"12D3KooWPeer"}
            POST /v1/inbox/read {"unread":true}
        "#]]
        .assert_eq(&(calls.join("\n") + "\n"));
    }

    /// Binary never goes to a terminal, and `--json` never carries it.
    #[test]
    fn automerge_export_refuses_terminals_and_json() {
        let export = |format, output: Option<&str>| ExportArgs { format, output: output.map(PathBuf::from) };
        let code = |result: Result<(), ErrorBody>| result.map_err(|error| error.code);
        let binary = export(ExportFormat::Automerge, None);
        assert_eq!(code(check_export_destination(&binary, false, true)), Err(ErrorCode::Usage));
        assert_eq!(code(check_export_destination(&binary, true, false)), Err(ErrorCode::Usage));
        assert_eq!(code(check_export_destination(&binary, false, false)), Ok(()));
        let to_file = export(ExportFormat::Automerge, Some("doc.am"));
        assert_eq!(code(check_export_destination(&to_file, true, true)), Ok(()));
        let text = export(ExportFormat::Jsonl, None);
        assert_eq!(code(check_export_destination(&text, false, true)), Ok(()));
    }

    /// A daemon error that carries an ErrorBody keeps its code; others are INTERNAL.
    #[test]
    fn daemon_errors_keep_their_code() {
        let typed = anyhow::Error::new(ErrorBody::new(ErrorCode::Conflict, "already running"));
        assert_eq!(error_body(&typed).code, ErrorCode::Conflict);
        let plain = anyhow::anyhow!("disk full").context("cannot write the key");
        assert_eq!(error_body(&plain).message, "cannot write the key: disk full");
        assert_eq!(error_body(&plain).code, ErrorCode::Internal);
    }

    /// clap's own consistency checks over the whole command tree.
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
