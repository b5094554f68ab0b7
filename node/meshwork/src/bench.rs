//! `meshwork bench`: measures a real node process from the outside and prints a table.
//!
//! - `bench node`: durable mutations (`task add`) through the local API, with 1 and 16
//!   concurrent clients; latency percentiles, throughput, and fsyncs per operation.
//! - `bench cold-start`: fills a home with many tasks, stops the node cleanly, then times
//!   starts until the first answer and reads the process's peak RSS.
//! - `bench mesh`: nodes on loopback joined in one mesh; how fast a claim reaches every node,
//!   how a storm of conflicting claims settles, and how an offline node's work merges.
//! - `bench cli`: one `meshwork` process per call (reads and mutations) against a node
//!   holding 1,000, 5,000 and 20,000 tasks; what a user or an agent's shell waits for.
//!
//! Figures and the commands that produced them are kept in docs/BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use meshwork_protocol::ErrorCode;
use meshwork_protocol::TaskId;
use meshwork_protocol::api::{
    AddTask, ClaimTask, InviteRequest, JoinMesh, LiveTaskView, NodeStatus, TaskNote, TaskStatus,
};
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

/// `meshwork bench node`.
pub(crate) fn node(ops: usize, clients: &[usize]) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut node = BenchNode::create("node")?;
        node.start().await?;
        concurrent_adds(&node.home, 1, 200, false).await?; // warm up
        println!("durable mutations (task add) through the local API, {ops} per row");
        println!(
            "{:>7} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "clients", "p50 ms", "p99 ms", "max ms", "ops/s", "fsyncs/op"
        );
        for &count in clients {
            let before = node.status().await?.storage;
            let (mut latencies, wall) = concurrent_adds(&node.home, count, ops, false).await?;
            let after = node.status().await?.storage;
            latencies.sort();
            let fsyncs = (after.fsyncs - before.fsyncs) as f64 / ops as f64;
            println!(
                "{count:>7} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {fsyncs:>10.2}",
                millis(percentile(&latencies, 0.5)),
                millis(percentile(&latencies, 0.99)),
                millis(percentile(&latencies, 1.0)),
                ops as f64 / wall.as_secs_f64(),
            );
        }
        node.stop().await
    })
}

/// `meshwork bench cold-start`.
pub(crate) fn cold_start(tasks: usize, starts: usize, finish: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut node = BenchNode::create("cold")?;
        node.start().await?;
        let filling = Instant::now();
        concurrent_adds(&node.home, 16, tasks, finish).await?;
        let records = if finish { " (each claimed, with progress, done)" } else { "" };
        println!("filled {tasks} tasks{records} in {:.1} s", filling.elapsed().as_secs_f64());
        node.stop().await?;
        let disk = dir_bytes(&node.home.join("doc"));
        println!("document on disk: {:.1} MiB", disk as f64 / (1024.0 * 1024.0));
        println!("{:>5} {:>16} {:>14} {:>8}", "start", "first answer ms", "peak RSS MiB", "tasks");
        for index in 1..=starts {
            let ready = node.start().await?;
            let status = node.status().await?;
            let rss = node.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
            println!("{index:>5} {:>16.0} {rss:>14.1} {:>8}", millis(ready), status.tasks);
            if status.tasks != tasks {
                bail!("the node came back with {} tasks, not {tasks}", status.tasks);
            }
            node.stop().await?;
        }
        Ok(())
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// How long forming a mesh, spreading tasks or converging may take before the bench gives up.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the bench waits for every node to connect to every other before it measures
/// anyway (and says so).
const FULL_MESH_WAIT: Duration = Duration::from_secs(10);
/// Pause between rounds of polls while a claim travels. tokio's timer ticks in milliseconds,
/// too coarse against a 5 ms goal, so [`pause_thread`] sleeps the worker thread instead.
const VISIBLE_POLL_PAUSE: Duration = Duration::from_micros(200);
/// Pause between rounds of whole-list comparisons (the storm, the offline merge).
const CONVERGE_POLL_PAUSE: Duration = Duration::from_millis(5);
/// Concurrent clients per node in the conflict storm.
const STORM_CLIENTS_PER_NODE: usize = 4;
/// Clients doing the offline node's operations.
const OFFLINE_CLIENTS: usize = 4;
/// Operations per task in the offline merge: add, claim, progress, done.
const OPS_PER_TASK: usize = 4;
/// Life of the invites the bench issues; each is used at once.
const INVITE_TTL_MS: u64 = 600_000;
/// Sync traffic counts as finished once a node's counters stood still this long.
const SYNC_QUIET: Duration = Duration::from_millis(500);
/// Warnings quoted per node at the end.
const WARNINGS_QUOTED_MAX: usize = 5;

/// `meshwork bench mesh`.
pub(crate) fn mesh(nodes: usize, tasks: usize, ops: usize) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::form("mesh", nodes).await?;
        propagation(&mesh, tasks).await?;
        conflict_storm(&mesh, tasks).await?;
        mesh.print_warnings();
        drop(mesh);
        offline_merge(ops).await
    })
}

/// Nodes on loopback, joined in one mesh through invites of the first.
struct Mesh {
    nodes: Vec<BenchNode>,
}

impl Mesh {
    /// Starts `count` nodes, has each join the first, waits until all know every member, and
    /// reports how the nodes connected.
    async fn form(label: &str, count: usize) -> anyhow::Result<Mesh> {
        let mut nodes = Vec::with_capacity(count);
        for index in 1..=count {
            let mut node = BenchNode::create_named(&format!("{label}-{index}"), &format!("bench-{index}"))?;
            node.start_online().await?;
            nodes.push(node);
        }
        let started = Instant::now();
        let mut hub = Client::connect(&nodes[0].home).await?;
        for (index, joiner) in nodes.iter().enumerate().skip(1) {
            let token = invite(&mut hub).await?;
            let mut client = Client::connect(&joiner.home).await?;
            client
                .call::<route::MeshJoin>(&(), &JoinMesh { token })
                .await
                .with_context(|| format!("node {} could not join the mesh", index + 1))?;
        }
        let mesh = Mesh { nodes };
        mesh.wait_for_members(count).await?;
        println!("mesh: {count} nodes on loopback joined in {:.0} ms", millis(started.elapsed()));
        mesh.wait_for_links().await?;
        Ok(mesh)
    }

    async fn wait_for_members(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + MESH_TIMEOUT;
        for (index, node) in self.nodes.iter().enumerate() {
            let mut client = Client::connect(&node.home).await?;
            loop {
                let members = client.call::<route::Members>(&(), &Empty {}).await?;
                if members.len() == count {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {} knows {} members, not {count}, after {MESH_TIMEOUT:?}", index + 1, members.len());
                }
                tokio::time::sleep(CONVERGE_POLL_PAUSE).await;
            }
        }
        Ok(())
    }

    /// Waits up to [`FULL_MESH_WAIT`] for every node to be connected to every other, then
    /// prints who is connected to whom: the figures below depend on it.
    async fn wait_for_links(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let peers_wanted = self.nodes.len() - 1;
        loop {
            let mut connected = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                let status = node.status().await?;
                connected.push(status.peers.iter().filter(|peer| peer.connected).count());
            }
            let full = connected.iter().all(|&count| count == peers_wanted);
            if full || started.elapsed() > FULL_MESH_WAIT {
                let counts: Vec<String> = connected.iter().map(ToString::to_string).collect();
                let shape = if full { "every node connected to every other" } else { "NOT a full mesh" };
                println!(
                    "links: {shape} after {:.0} ms (connected peers per node: {})",
                    millis(started.elapsed()),
                    counts.join(" ")
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One client per node, in node order.
    async fn clients(&self, agent: &str) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            clients.push(Client::connect(&node.home).await?.with_agent(agent)?);
        }
        Ok(clients)
    }

    /// Adds `count` tasks on the first node and waits until every node has them; returns
    /// their ids.
    async fn add_everywhere(&self, label: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let mut hub = Client::connect(&self.nodes[0].home).await?.with_agent("bench")?;
        let before = self.nodes[0].status().await?.tasks;
        let mut ids = Vec::with_capacity(count);
        for index in 0..count {
            let request = AddTask { title: format!("{label} {index}"), ..AddTask::default() };
            let task = hub.call::<route::TaskAdd>(&(), &request).await?;
            ids.push(task.task.id.as_str().to_owned());
        }
        let deadline = Instant::now() + MESH_TIMEOUT;
        for (index, node) in self.nodes.iter().enumerate() {
            while node.status().await?.tasks < before + count {
                if Instant::now() > deadline {
                    bail!("node {} did not receive the {label} tasks within {MESH_TIMEOUT:?}", index + 1);
                }
                tokio::time::sleep(CONVERGE_POLL_PAUSE).await;
            }
        }
        Ok(ids)
    }

    fn print_warnings(&self) {
        for (index, node) in self.nodes.iter().enumerate() {
            print_node_warnings(&format!("node {}", index + 1), node);
        }
    }
}

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

/// An invite from the hub; retried while the hub is not listening yet.
async fn invite(hub: &mut Client) -> anyhow::Result<String> {
    let deadline = Instant::now() + MESH_TIMEOUT;
    loop {
        match hub.call::<route::MeshInvite>(&(), &InviteRequest { ttl_ms: Some(INVITE_TTL_MS) }).await {
            Ok(answer) => return Ok(answer.token),
            Err(error) if error.retryable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => return Err(error).context("the first node gave no invite"),
        }
    }
}

/// Propagation: claims a task on one node (rotating) while polling every other node until
/// all show it claimed.
async fn propagation(mesh: &Mesh, tasks: usize) -> anyhow::Result<()> {
    let ids = mesh.add_everywhere("propagation", tasks).await?;
    let mut clients: Vec<Option<Client>> = mesh.clients("bench").await?.into_iter().map(Some).collect();
    let mut trips = Vec::with_capacity(tasks);
    for (index, id) in ids.iter().enumerate() {
        trips.push(claim_trip(&mut clients, index % mesh.nodes.len(), id).await?);
    }
    println!();
    println!(
        "propagation: {tasks} claims, each on one node (rotating), the other {} polled from the moment it is sent",
        mesh.nodes.len() - 1
    );
    let mut from_ack: Vec<Duration> =
        trips.iter().map(|trip| trip.everywhere.saturating_sub(trip.acknowledged)).collect();
    let mut from_sent: Vec<Duration> = trips.iter().map(|trip| trip.everywhere).collect();
    let mut ack: Vec<Duration> = trips.iter().map(|trip| trip.acknowledged).collect();
    println!("{:<36} {:>8} {:>8} {:>8} {:>8}", "", "p50 ms", "p90 ms", "p99 ms", "max ms");
    for (label, latencies) in [
        ("claim acknowledged -> on every node", &mut from_ack),
        ("claim sent -> on every node", &mut from_sent),
        ("claim sent -> acknowledged", &mut ack),
    ] {
        latencies.sort();
        println!(
            "{label:<36} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            millis(percentile(latencies, 0.5)),
            millis(percentile(latencies, 0.9)),
            millis(percentile(latencies, 0.99)),
            millis(percentile(latencies, 1.0)),
        );
    }
    let early = trips.iter().filter(|trip| trip.everywhere <= trip.acknowledged).count();
    println!("on every node before its acknowledgement (counted as 0 above): {early} of {tasks}");
    let (p50, p99) = (percentile(&from_ack, 0.5), percentile(&from_ack, 0.99));
    let met = p50 <= Duration::from_millis(5) && p99 <= Duration::from_millis(50);
    println!("goal (from acknowledged): p50 <= 5 ms, p99 <= 50 ms: {}", met_or_not(met));
    Ok(())
}

/// One claim's times, from the moment it was sent.
#[derive(Debug)]
struct ClaimTrip {
    acknowledged: Duration,
    /// When the last of the other nodes showed it claimed.
    everywhere: Duration,
}

/// Claims `id` on node `claimer` and from the same moment polls every other node until all
/// show it claimed. The claim runs on a task of its own so that its answer is timed while
/// the polls pause.
async fn claim_trip(clients: &mut [Option<Client>], claimer: usize, id: &str) -> anyhow::Result<ClaimTrip> {
    let mut client = clients[claimer].take().context("the claiming node's client is missing")?;
    let request = ClaimTask { task: Some(id.to_owned()), ..ClaimTask::default() };
    let sent = Instant::now();
    let claim = tokio::spawn(async move {
        let answer = client.call::<route::Claim>(&(), &request).await;
        (client, answer, Instant::now())
    });
    let task = TaskId::new(id)?;
    let mut others: Vec<&mut Client> = clients.iter_mut().flatten().collect();
    let visible = visible_everywhere(&mut others, &task).await;
    let (client, answer, acknowledged) = claim.await?;
    clients[claimer] = Some(client);
    answer.with_context(|| format!("the claim of {id} on node {} failed", claimer + 1))?;
    Ok(ClaimTrip { acknowledged: acknowledged - sent, everywhere: visible? - sent })
}

/// Polls every client's node, all at once, until each shows the task claimed; returns when
/// the last one answered so.
async fn visible_everywhere(clients: &mut [&mut Client], path: &TaskId) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + MESH_TIMEOUT;
    let mut seen_at: Vec<Option<Instant>> = vec![None; clients.len()];
    loop {
        let polls: Vec<_> = clients
            .iter_mut()
            .zip(&seen_at)
            .enumerate()
            .filter(|(_, (_, seen))| seen.is_none())
            .map(|(index, (client, _))| async move {
                let task = client.call::<route::TaskShow>(path, &Empty {}).await?;
                anyhow::Ok((index, (task.task.status == TaskStatus::Claimed).then(Instant::now)))
            })
            .collect();
        for answer in join_all(polls).await {
            let (index, seen) = answer?;
            seen_at[index] = seen_at[index].or(seen);
        }
        if seen_at.iter().all(Option::is_some) {
            return seen_at.into_iter().flatten().max().context("no node to poll");
        }
        if Instant::now() > deadline {
            bail!("{path} was not claimed on every node within {MESH_TIMEOUT:?}");
        }
        pause_thread(VISIBLE_POLL_PAUSE);
    }
}

/// Sleeps this worker thread for less than tokio's timer can. The bench's own connection
/// tasks run on the other worker meanwhile.
fn pause_thread(pause: Duration) {
    tokio::task::block_in_place(|| std::thread::sleep(pause));
}

/// One claim of the storm, as its client saw it.
#[derive(Debug)]
struct StormClaim {
    node: usize,
    task: usize,
    /// The claim id when the node answered that the claim won.
    acknowledged: Option<String>,
    sent: Instant,
    answered: Instant,
}

/// Conflict storm: every node claims the same tasks at once, then the bench waits until all
/// nodes name the same holder for every task.
async fn conflict_storm(mesh: &Mesh, tasks: usize) -> anyhow::Result<()> {
    let ids = Arc::new(mesh.add_everywhere("storm", tasks).await?);
    let barrier = Arc::new(tokio::sync::Barrier::new(mesh.nodes.len() * STORM_CLIENTS_PER_NODE + 1));
    let mut workers = Vec::new();
    for (node, bench_node) in mesh.nodes.iter().enumerate() {
        for offset in 0..STORM_CLIENTS_PER_NODE {
            let agent = format!("storm-{}-{offset}", node + 1);
            let client = Client::connect(&bench_node.home).await?.with_agent(&agent)?;
            let worker = StormWorker { node, offset, ids: Arc::clone(&ids), barrier: Arc::clone(&barrier) };
            workers.push(tokio::spawn(worker.run(client)));
        }
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut claims = Vec::new();
    for worker in workers {
        claims.extend(worker.await??);
    }
    let last_answer = claims.iter().map(|claim| claim.answered).max().unwrap_or(started);
    let (converged_at, holders) = agreed_holders(mesh, &ids).await?;
    println!();
    println!(
        "conflict storm: {} nodes claim the same {tasks} tasks at once ({STORM_CLIENTS_PER_NODE} clients per node)",
        mesh.nodes.len()
    );
    let acknowledged = claims.iter().filter(|claim| claim.acknowledged.is_some()).count();
    println!(
        "claims answered: {} in {:.0} ms; {acknowledged} acknowledged as won, {} refused",
        claims.len(),
        millis(last_answer - started),
        claims.len() - acknowledged
    );
    let mut latencies: Vec<Duration> = claims.iter().map(|claim| claim.answered - claim.sent).collect();
    latencies.sort();
    println!(
        "claim answer latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        millis(percentile(&latencies, 0.5)),
        millis(percentile(&latencies, 0.99)),
        millis(percentile(&latencies, 1.0))
    );
    let check = StormCheck::new(&claims, &holders);
    check.print();
    let converged = converged_at.saturating_duration_since(last_answer);
    println!(
        "converged: every node names the same holder for all {tasks} tasks {:.0} ms after the last answer \
         ({:.0} ms after the storm began)",
        millis(converged),
        millis(converged_at - started)
    );
    println!(
        "goal: every node names the same single holder, and it is the one acknowledged claim: {}",
        met_or_not(check.is_clean())
    );
    let fast = converged_at - started <= Duration::from_secs(2);
    println!("goal: converged <= 2 s from the start of the storm: {}", met_or_not(fast));
    Ok(())
}

/// One client of one node in the storm: claims every `STORM_CLIENTS_PER_NODE`th task from
/// `offset`, so every node claims the same task at about the same time.
struct StormWorker {
    node: usize,
    offset: usize,
    ids: Arc<Vec<String>>,
    barrier: Arc<tokio::sync::Barrier>,
}

impl StormWorker {
    async fn run(self, mut client: Client) -> anyhow::Result<Vec<StormClaim>> {
        self.barrier.wait().await;
        let mut claims = Vec::new();
        for task in (self.offset..self.ids.len()).step_by(STORM_CLIENTS_PER_NODE) {
            let id = &self.ids[task];
            let sent = Instant::now();
            let request = ClaimTask { task: Some(id.clone()), ..ClaimTask::default() };
            let acknowledged = match client.call::<route::Claim>(&(), &request).await {
                Ok(view) => Some(
                    view.task
                        .holder
                        .with_context(|| format!("the claim of {id} was answered without a holder"))?
                        .claim_id,
                ),
                Err(error) if matches!(error.code, ErrorCode::Conflict | ErrorCode::InvalidTransition) => None,
                Err(error) => return Err(error).with_context(|| format!("the claim of {id} failed")),
            };
            claims.push(StormClaim { node: self.node, task, acknowledged, sent, answered: Instant::now() });
        }
        Ok(claims)
    }
}

/// Polls every node's claimed tasks until all nodes name the same holder (claim id) for
/// every task; returns when, and the holders.
async fn agreed_holders(mesh: &Mesh, ids: &[String]) -> anyhow::Result<(Instant, Vec<String>)> {
    let mut clients = mesh.clients("bench").await?;
    let deadline = Instant::now() + MESH_TIMEOUT;
    loop {
        let lists = join_all(clients.iter_mut().map(|client| async move {
            let tasks = client.call::<route::TaskList>(&(), &statuses("claimed")).await?;
            anyhow::Ok(holders_of(&tasks, ids))
        }))
        .await;
        let polled_at = Instant::now();
        let lists = lists.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(first) = lists.first()
            && lists.iter().all(|list| list == first)
            && first.iter().all(Option::is_some)
        {
            return Ok((polled_at, first.iter().flatten().cloned().collect()));
        }
        if Instant::now() > deadline {
            bail!("the nodes did not agree on the holders within {MESH_TIMEOUT:?}");
        }
        tokio::time::sleep(CONVERGE_POLL_PAUSE).await;
    }
}

/// The holder's claim id of each task of `ids`, in order, as one node shows it.
fn holders_of(tasks: &[LiveTaskView], ids: &[String]) -> Vec<Option<String>> {
    let by_id: HashMap<&str, &str> = tasks
        .iter()
        .filter_map(|live| Some((live.task.id.as_str(), live.task.holder.as_ref()?.claim_id.as_str())))
        .collect();
    ids.iter().map(|id| by_id.get(id.as_str()).map(|claim| (*claim).to_owned())).collect()
}

/// What the storm's answers say against the holders all nodes agreed on.
#[derive(Debug, Default)]
struct StormCheck {
    tasks: usize,
    /// Tasks with exactly one claim acknowledged, and it is the holder.
    one_holder: usize,
    /// Tasks with two or more claims acknowledged as won.
    twice_acknowledged: usize,
    /// Tasks nobody was told they won.
    unacknowledged: usize,
    /// Claims acknowledged as won that are not the agreed holder.
    acknowledged_then_lost: usize,
    /// Claims acknowledged per node.
    wins_per_node: BTreeMap<usize, usize>,
}

impl StormCheck {
    fn new(claims: &[StormClaim], holders: &[String]) -> StormCheck {
        let mut check = StormCheck { tasks: holders.len(), ..StormCheck::default() };
        for (task, holder) in holders.iter().enumerate() {
            let won: Vec<&StormClaim> =
                claims.iter().filter(|claim| claim.task == task && claim.acknowledged.is_some()).collect();
            let lost = won.iter().filter(|claim| claim.acknowledged.as_ref() != Some(holder)).count();
            check.acknowledged_then_lost += lost;
            match won.len() {
                0 => check.unacknowledged += 1,
                1 if lost == 0 => check.one_holder += 1,
                1 => {}
                _ => check.twice_acknowledged += 1,
            }
            for claim in won {
                *check.wins_per_node.entry(claim.node + 1).or_default() += 1;
            }
        }
        check
    }

    fn is_clean(&self) -> bool {
        self.one_holder == self.tasks
    }

    fn print(&self) {
        println!(
            "holders agree on every node; tasks whose one acknowledged claim is the holder: {}/{}; \
             acknowledged twice or more: {}; acknowledged to nobody: {}; acknowledged claims that lost: {}",
            self.one_holder, self.tasks, self.twice_acknowledged, self.unacknowledged, self.acknowledged_then_lost
        );
        let wins: Vec<String> = self.wins_per_node.iter().map(|(node, wins)| format!("node {node}: {wins}")).collect();
        println!("claims won per node: {}", wins.join(", "));
    }
}

/// Offline merge: a node of a two-node mesh works offline, then comes back; time until the
/// other node has everything, and the sync bytes per operation.
async fn offline_merge(ops: usize) -> anyhow::Result<()> {
    let tasks = ops / OPS_PER_TASK;
    let ops = tasks * OPS_PER_TASK;
    println!();
    let mut mesh = Mesh::form("merge", 2).await?;
    mesh.nodes[1].stop().await?;
    mesh.nodes[1].start().await?;
    let working = Instant::now();
    concurrent_adds(&mesh.nodes[1].home, OFFLINE_CLIENTS, tasks, true).await?;
    let worked = working.elapsed();
    mesh.nodes[1].stop().await?;
    let before = mesh.nodes[0].status().await?;
    let started = Instant::now();
    let answered = mesh.nodes[1].start_online().await?;
    let (connected_at, merged_at) =
        tokio::try_join!(wait_connected(&mesh.nodes[1]), wait_merged(&mesh.nodes[0], before.tasks + tasks))?;
    let after = quiet_status(&mesh.nodes[0]).await?;
    let statuses_agree = same_statuses(&mesh.nodes).await?;
    let sent = after.sync_bytes_sent - before.sync_bytes_sent;
    let received = after.sync_bytes_received - before.sync_bytes_received;
    let per_op = (sent + received) as f64 / ops as f64;
    let merge = merged_at - started;
    println!(
        "offline merge: node 2 of 2 did {ops} operations offline ({tasks} tasks each added, claimed, progressed, \
         done; {OFFLINE_CLIENTS} clients, {:.1} s), stopped, then started online",
        worked.as_secs_f64()
    );
    println!(
        "node 2 answered {:.0} ms after its start, was connected to node 1 at {:.0} ms",
        millis(answered),
        millis(connected_at - started)
    );
    println!(
        "node 1 had every task done {:.0} ms after node 2's start; every task's status the same on both: {}",
        millis(merge),
        if statuses_agree { "yes" } else { "NO" }
    );
    println!(
        "sync bytes at node 1: {sent} sent, {received} received; {per_op:.1} bytes per operation (both directions)"
    );
    let met = merge <= Duration::from_secs(3) && per_op <= 200.0 && statuses_agree;
    println!("goal: <= 3 s, <= 200 bytes per operation: {}", met_or_not(met));
    print_node_warnings("node 1", &mesh.nodes[0]);
    print_node_warnings("node 2", &mesh.nodes[1]);
    Ok(())
}

/// Polls a node until it holds `tasks` tasks and none of them is open or claimed (every
/// task of the offline node ends done); returns when.
async fn wait_merged(node: &BenchNode, tasks: usize) -> anyhow::Result<Instant> {
    let mut client = Client::connect(&node.home).await?;
    let deadline = Instant::now() + MESH_TIMEOUT;
    loop {
        let status = client.call::<route::Status>(&(), &Empty {}).await?;
        if status.tasks >= tasks {
            let unfinished = client.call::<route::TaskList>(&(), &statuses("open,claimed")).await?;
            if unfinished.is_empty() {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("node 1 did not receive the offline node's work within {MESH_TIMEOUT:?}");
        }
        tokio::time::sleep(CONVERGE_POLL_PAUSE).await;
    }
}

/// Polls a node until it is connected to some peer; returns when.
async fn wait_connected(node: &BenchNode) -> anyhow::Result<Instant> {
    let mut client = Client::connect(&node.home).await?;
    let deadline = Instant::now() + MESH_TIMEOUT;
    loop {
        let status = client.call::<route::Status>(&(), &Empty {}).await?;
        if status.peers.iter().any(|peer| peer.connected) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the node did not connect to a peer within {MESH_TIMEOUT:?}");
        }
        tokio::time::sleep(CONVERGE_POLL_PAUSE).await;
    }
}

/// The node's status once its sync counters stood still for [`SYNC_QUIET`].
async fn quiet_status(node: &BenchNode) -> anyhow::Result<NodeStatus> {
    let deadline = Instant::now() + MESH_TIMEOUT;
    let mut last = node.status().await?;
    loop {
        tokio::time::sleep(SYNC_QUIET).await;
        let now = node.status().await?;
        let moved = (now.sync_bytes_sent, now.sync_bytes_received) != (last.sync_bytes_sent, last.sync_bytes_received);
        if !moved || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Whether every node shows the same tasks with the same statuses.
async fn same_statuses(nodes: &[BenchNode]) -> anyhow::Result<bool> {
    let mut views = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut client = Client::connect(&node.home).await?;
        let tasks = client.call::<route::TaskList>(&(), &ListTasks::default()).await?;
        let statuses: BTreeMap<String, TaskStatus> =
            tasks.into_iter().map(|live| (live.task.id.as_str().to_owned(), live.task.status)).collect();
        views.push(statuses);
    }
    Ok(views.windows(2).all(|pair| pair[0] == pair[1]))
}

fn met_or_not(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

/// The `task list` filter of these statuses (`open,claimed`).
fn statuses(statuses: &str) -> ListTasks {
    ListTasks { status: Some(statuses.to_owned()), stale: false, limit: None }
}

/// Processes timed per row of `bench cli` before the timed ones, so the binary and the
/// node's answer paths are warm.
const CLI_WARM_UP_RUNS: usize = 3;
/// How many tasks `bench cli` adds at once while it fills the node.
const CLI_FILL_CLIENTS: usize = 16;
/// The read goals of `bench cli`: p50 at or under this many milliseconds, by queue size.
const CLI_READ_GOALS_MS: [(usize, f64); 2] = [(5_000, 15.0), (20_000, 50.0)];
/// The mutation goal of `bench cli`: p50 at or under this many milliseconds.
const CLI_MUTATION_GOAL_MS: f64 = 2.0;

/// What one row of `bench cli` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CliRow {
    /// `meshwork --version`: the process alone, no node.
    Version,
    /// `task show ID --json`: one small query.
    Show,
    Ready,
    ReadyJson,
    ListJson,
    List,
    Add,
    Claim,
    Done,
}

impl CliRow {
    const ALL: [CliRow; 9] = [
        CliRow::Version,
        CliRow::Show,
        CliRow::Ready,
        CliRow::ReadyJson,
        CliRow::ListJson,
        CliRow::List,
        CliRow::Add,
        CliRow::Claim,
        CliRow::Done,
    ];

    /// The command line after `meshwork --home HOME --agent bench`; `id` is the task a row
    /// about one task names.
    fn args(self, id: &str) -> Vec<String> {
        let words: &[&str] = match self {
            CliRow::Version => &["--version"],
            CliRow::Show => &["task", "show", id, "--json"],
            CliRow::Ready => &["ready"],
            CliRow::ReadyJson => &["ready", "--json"],
            CliRow::ListJson => &["task", "list", "--json"],
            CliRow::List => &["task", "list"],
            CliRow::Add => &["task", "add", "a task added by bench cli"],
            CliRow::Claim => &["claim", id],
            CliRow::Done => &["done", id],
        };
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    fn label(self) -> String {
        let args = self.args("ID");
        format!("`{}`", args.join(" ").replace("a task added by bench cli", "TITLE"))
    }

    /// The goal this row is held to at `tasks` tasks, if the issue names one.
    fn goal_ms(self, tasks: usize) -> Option<f64> {
        match self {
            CliRow::Ready | CliRow::ReadyJson | CliRow::ListJson => {
                CLI_READ_GOALS_MS.iter().find(|(size, _)| *size == tasks).map(|(_, goal)| *goal)
            }
            CliRow::Add | CliRow::Claim | CliRow::Done => Some(CLI_MUTATION_GOAL_MS),
            CliRow::Version | CliRow::Show | CliRow::List => None,
        }
    }
}

/// `meshwork bench cli`: one `meshwork` process per call against a node holding `sizes`
/// tasks in turn; a markdown table of p50/p90/p99 per command and size.
pub(crate) fn cli(sizes: &[usize], runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    runtime()?.block_on(async {
        let mut node = BenchNode::create("cli")?;
        node.start().await?;
        println!("one `meshwork` process per call, spawned and waited for (stdout and stderr piped and read);");
        println!("{runs} timed runs per row after {CLI_WARM_UP_RUNS} untimed; the tasks open and ready but those the rows claim and finish");
        println!();
        println!("| command | tasks | p50 ms | p90 ms | p99 ms | goal |");
        println!("| --- | ---: | ---: | ---: | ---: | --- |");
        for &size in &sizes {
            // The queue holds `size` tasks when the reads run; the rows after them add a
            // few and claim and finish a few, so the next size starts from there.
            let missing = size.saturating_sub(node.status().await?.tasks);
            concurrent_adds(&node.home, CLI_FILL_CLIENTS, missing, false).await?;
            for row in CliRow::ALL {
                let latencies = time_cli_row(&node.home, row, runs).await?;
                print_cli_row(row, size, &latencies);
            }
        }
        print_node_warnings("the node", &node);
        node.stop().await
    })
}

/// Times `runs` processes of one row (after the warm-up ones); sorted latencies.
async fn time_cli_row(home: &Path, row: CliRow, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let ids = if matches!(row, CliRow::Show | CliRow::Claim) {
        ready_ids(home, runs + CLI_WARM_UP_RUNS).await?
    } else if row == CliRow::Done {
        held_ids(home, runs + CLI_WARM_UP_RUNS).await?
    } else {
        Vec::new()
    };
    let mut latencies = Vec::with_capacity(runs);
    for index in 0..runs + CLI_WARM_UP_RUNS {
        let id = ids.get(index).map_or("", String::as_str);
        if row.args(id).iter().any(String::is_empty) {
            bail!("no task left for {} (run {index})", row.label());
        }
        let started = Instant::now();
        let output = meshwork(home).args(["--agent", "bench"]).args(row.args(id)).stdin(Stdio::null()).output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            bail!("{} failed ({}): {}{}", row.label(), output.status, stderr.trim(), stdout.trim());
        }
        if index >= CLI_WARM_UP_RUNS {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The first `count` tasks ready anywhere, in claim order.
async fn ready_ids(home: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await?;
    let ready = client.call::<route::Ready>(&(), &route::ReadyQuery { all: true, limit: Some(count) }).await?;
    if ready.len() < count {
        bail!("only {} tasks are ready, {count} are needed", ready.len());
    }
    Ok(ready.into_iter().take(count).map(|task| task.task.id.as_str().to_owned()).collect())
}

/// The first `count` tasks the agent `bench` holds.
async fn held_ids(home: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await?;
    let claimed = client.call::<route::TaskList>(&(), &statuses("claimed")).await?;
    let held =
        claimed.into_iter().filter(|task| task.task.holder.as_ref().is_some_and(|holder| holder.agent == "bench"));
    let ids: Vec<String> = held.take(count).map(|task| task.task.id.as_str().to_owned()).collect();
    if ids.len() < count {
        bail!("bench holds only {} tasks, {count} are needed", ids.len());
    }
    Ok(ids)
}

fn print_cli_row(row: CliRow, size: usize, sorted: &[Duration]) {
    let [p50, p90, p99] = [0.5, 0.9, 0.99].map(|fraction| millis(percentile(sorted, fraction)));
    let goal = match row.goal_ms(size) {
        Some(goal) => format!("p50 ≤ {goal} ms: {}", met_or_not(p50 <= goal)),
        None => String::new(),
    };
    let tasks = crate::output::thousands(size);
    println!("| {} | {tasks} | {p50:.2} | {p90:.2} | {p99:.2} | {goal} |", row.label());
}
