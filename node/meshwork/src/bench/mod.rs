//! `meshwork bench`: measures a real node process from the outside and prints a table.
//!
//! - `bench node`: durable mutations (`task add`) through the local API, with 1 and 16
//!   concurrent clients; latency percentiles, throughput, and fsyncs per operation.
//! - `bench cold-start`: fills a home with many tasks, stops the node cleanly, then times
//!   starts until the first answer and reads the process's peak RSS.
//! - `bench mesh`: nodes on loopback joined in one mesh; how fast a claim reaches every node,
//!   how a storm of conflicting claims settles, how soon a lost claim reaches its agent's
//!   event stream after the merge, and how an offline node's work merges.
//! - `bench cli`: one `meshwork` process per call (reads and mutations) against a node
//!   holding 1,000, 5,000 and 20,000 tasks; what a user or an agent's shell waits for.
//!
//! Figures and the commands that produced them are kept in docs/BENCHMARKS.md.

mod cli;
mod mesh;
mod node;

pub(crate) use cli::cli;
pub(crate) use mesh::mesh;
pub(crate) use node::{cold_start, node};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshwork_protocol::api::{AddTask, ClaimTask, NodeStatus, TaskNote};
use meshwork_protocol::route::{self, Empty, ListTasks};

use meshwork_client::Client;

/// How long a benchmarked node may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// `node start` flags of a mesh node: loopback only, ports chosen by the OS, no mDNS (the
/// nodes find each other through invites, not the LAN).
const LOOPBACK_START: [&str; 5] =
    ["--no-mdns", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip4/127.0.0.1/tcp/0"];

/// A node process in a temporary home, stopped and removed on drop.
/// Milliseconds since the Unix epoch, to give each bench home a name of its own.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

struct BenchNode {
    home: PathBuf,
    child: Option<Child>,
}

impl BenchNode {
    fn create(label: &str) -> anyhow::Result<BenchNode> {
        BenchNode::create_named(label, "bench")
    }

    fn create_named(label: &str, name: &str) -> anyhow::Result<BenchNode> {
        let stamp = now_ms();
        let home = std::env::temp_dir().join(format!("meshwork-bench-{label}-{}-{stamp}", std::process::id()));
        let status = meshwork(&home).args(["init", "--name", name]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("meshwork init failed for {}", home.display());
        }
        Ok(BenchNode { home, child: None })
    }

    /// Starts the node `--offline` and waits for its first answer; returns the time that took.
    async fn start(&mut self) -> anyhow::Result<Duration> {
        self.start_with(&["--offline"]).await
    }

    /// Starts the node on loopback, reachable by the other bench nodes.
    async fn start_online(&mut self) -> anyhow::Result<Duration> {
        self.start_with(&LOOPBACK_START).await
    }

    /// Starts the node with these `node start` flags; its warnings go to [`Self::log_path`].
    async fn start_with(&mut self, flags: &[&str]) -> anyhow::Result<Duration> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        let started = Instant::now();
        let child = meshwork(&self.home)
            .args(["node", "start"])
            .args(flags)
            .env("MESHWORK_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the node")?;
        self.child = Some(child);
        while started.elapsed() < START_TIMEOUT {
            if let Ok(mut client) = Client::connect(&self.home).await
                && client.call::<route::Status>(&(), &Empty {}).await.is_ok()
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("the node did not answer within {START_TIMEOUT:?}")
    }

    async fn status(&self) -> anyhow::Result<NodeStatus> {
        let mut client = Client::connect(&self.home).await?;
        Ok(client.call::<route::Status>(&(), &Empty {}).await?)
    }

    /// The node's stderr, kept beside the home (and removed with it).
    fn log_path(&self) -> PathBuf {
        self.home.with_extension("log")
    }

    /// The warnings and errors the node logged so far.
    fn logged_warnings(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines().filter(|line| line.contains(" WARN ") || line.contains(" ERROR ")).map(str::to_owned).collect()
    }

    /// Stops the node through the API (it compacts its log) and waits for it to exit.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut client = Client::connect(&self.home).await?;
        client.call::<route::Shutdown>(&(), &Empty {}).await?;
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// Peak resident memory of the node process, from /proc, in bytes.
    fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
        let _ = std::fs::remove_file(self.log_path());
    }
}

fn meshwork(home: &Path) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshwork"));
    let mut command = Command::new(exe);
    command.arg("--home").arg(home);
    command
}

/// Adds `count` tasks from one client, and with `finish` claims and finishes each (three
/// signed records a task); returns each addition's latency.
async fn add_tasks(home: &Path, client_index: usize, count: usize, finish: bool) -> anyhow::Result<Vec<Duration>> {
    let mut client = Client::connect(home).await?.with_agent(&format!("bench-{client_index}"))?;
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count {
        let request = AddTask {
            title: format!("bench task {client_index}-{index}"),
            priority: i64::try_from(index % 10).unwrap_or(0),
            ..AddTask::default()
        };
        let started = Instant::now();
        let added = client.call::<route::TaskAdd>(&(), &request).await?;
        latencies.push(started.elapsed());
        if finish {
            let id = added.task.id;
            let claim = ClaimTask { task: Some(id.as_str().to_owned()), ..ClaimTask::default() };
            client.call::<route::Claim>(&(), &claim).await?;
            let working = TaskNote { text: "working".to_owned(), percent: None };
            client.call::<route::Progress>(&id, &working).await?;
            client.call::<route::Done>(&id, &TaskNote { text: "done".to_owned(), percent: None }).await?;
        }
    }
    Ok(latencies)
}

/// Runs `clients` concurrent clients adding `ops` tasks in all; returns latencies and wall time.
async fn concurrent_adds(
    home: &Path,
    clients: usize,
    ops: usize,
    finish: bool,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let home = home.to_owned();
        let share = ops / clients + usize::from(client_index < ops % clients);
        tasks.push(tokio::spawn(async move { add_tasks(&home, client_index, share, finish).await }));
    }
    let mut latencies = Vec::with_capacity(ops);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, started.elapsed()))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Warnings quoted per node at the end.
const WARNINGS_QUOTED_MAX: usize = 5;

fn print_node_warnings(label: &str, node: &BenchNode) {
    let warnings = node.logged_warnings();
    if warnings.is_empty() {
        return;
    }
    println!("{label} logged {} warnings or errors; the first:", warnings.len());
    for line in warnings.iter().take(WARNINGS_QUOTED_MAX) {
        println!("  {line}");
    }
}

fn met_or_not(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

/// The `task list` filter of these statuses (`open,claimed`).
fn statuses(statuses: &str) -> ListTasks {
    ListTasks { status: Some(statuses.to_owned()), stale: false, limit: None }
}
