//! `bench mesh`: nodes on loopback joined in one mesh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use meshwork_protocol::ErrorCode;
use meshwork_protocol::TaskId;
use meshwork_protocol::api::{
    AddTask, ClaimTask, Confirmation, InviteRequest, JoinMesh, LiveTaskView, NodeStatus, TaskStatus,
};
use meshwork_protocol::event::{Event, EventsQuery};
use meshwork_protocol::route::{self, Empty, ListTasks};
use meshwork_protocol::time::parse_rfc3339_ms;

use meshwork_client::Client;

use super::{BenchNode, concurrent_adds, met_or_not, millis, percentile, print_node_warnings, runtime, statuses};

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

/// `meshwork bench mesh`.
pub(crate) fn mesh(nodes: usize, tasks: usize, ops: usize) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::form("mesh", nodes).await?;
        propagation(&mesh, tasks).await?;
        conflict_storm(&mesh, tasks).await?;
        mesh.print_warnings();
        drop(mesh);
        lost_claim_events(tasks).await?;
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
    /// What the won claim's receipt said it can rely on.
    confirmation: Option<Confirmation>,
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
            let (acknowledged, confirmation) = match client.call::<route::Claim>(&(), &request).await {
                Ok(view) => {
                    let holder = view.task.holder.with_context(|| format!("the claim of {id} has no holder"))?;
                    (Some(holder.claim_id), view.receipt.map(|receipt| receipt.confirmation))
                }
                Err(error) if matches!(error.code, ErrorCode::Conflict | ErrorCode::InvalidTransition) => (None, None),
                Err(error) => return Err(error).with_context(|| format!("the claim of {id} failed")),
            };
            let answered = Instant::now();
            claims.push(StormClaim { node: self.node, task, acknowledged, confirmation, sent, answered });
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
    /// Won claims by receipt: `quorum`, `settled`, `offline`.
    receipts: BTreeMap<&'static str, usize>,
    /// Tasks with two or more claims answered `quorum` (goal 0: a quorum receipt is exclusive).
    twice_quorum: usize,
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
            let quorum = won.iter().filter(|claim| claim.confirmation == Some(Confirmation::Quorum)).count();
            if quorum > 1 {
                check.twice_quorum += 1;
            }
            for claim in won {
                *check.wins_per_node.entry(claim.node + 1).or_default() += 1;
                let receipt = claim.confirmation.map_or("none", Confirmation::as_str);
                *check.receipts.entry(receipt).or_default() += 1;
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
        let receipts: Vec<String> =
            self.receipts.iter().map(|(receipt, count)| format!("{receipt}: {count}")).collect();
        println!("receipts of the won claims: {}", receipts.join(", "));
        println!(
            "goal: no task answered `quorum` to two agents (required): {} ({} tasks)",
            met_or_not(self.twice_quorum == 0),
            self.twice_quorum
        );
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

/// The bound from a merge to the lost-claim event on the loser's stream (p99), and
/// what to aim for.
const LOST_EVENT_GOAL: Duration = Duration::from_secs(1);
const LOST_EVENT_AIM: Duration = Duration::from_millis(50);

/// Lost-claim events: node 2 of a two-node mesh goes offline, both nodes claim the same
/// `tasks` tasks, node 2 comes back. For every claim node 1's agent lost, the time from the
/// merge to the `claim_lost` event on that agent's stream, which was open before node 2
/// came back: the event's `at` is when node 1 published it, in the step that took in the
/// records deciding it (the merge), and the bench notes when it arrived. Both clocks are
/// this machine's.
async fn lost_claim_events(tasks: usize) -> anyhow::Result<()> {
    println!();
    let mut mesh = Mesh::form("lost", 2).await?;
    let ids = mesh.add_everywhere("contested", tasks).await?;
    mesh.nodes[1].stop().await?;
    mesh.nodes[1].start().await?;
    let mut alpha = Client::connect(&mesh.nodes[0].home).await?.with_agent("alpha")?;
    let mut beta = Client::connect(&mesh.nodes[1].home).await?.with_agent("beta")?;
    let mut alpha_claims = BTreeMap::new();
    for id in &ids {
        let claim = ClaimTask { task: Some(id.clone()), ..ClaimTask::default() };
        beta.call::<route::Claim>(&(), &claim).await.context("node 2 claims offline")?;
        let claimed = alpha.call::<route::Claim>(&(), &claim).await.context("node 1 claims alone")?;
        let holder = claimed.task.holder.context("node 1's claim answered without a holder")?;
        alpha_claims.insert(holder.claim_id, id.clone());
    }
    let query = EventsQuery { agent: Some("alpha".to_owned()), kind: Some("claim_lost".to_owned()), after: None };
    let mut stream = Client::connect(&mesh.nodes[0].home).await?.events(&query, None).await?;
    let (arrivals_in, mut arrivals) = tokio::sync::mpsc::channel(tasks + 16);
    let listener = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            let arrived_ms = super::now_ms();
            if arrivals_in.send((event?, arrived_ms)).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });

    mesh.nodes[1].stop().await?;
    let started = Instant::now();
    mesh.nodes[1].start_online().await?;
    let (_, holders) = agreed_holders(&mesh, &ids).await?;
    let lost: BTreeMap<&String, &String> = alpha_claims.iter().filter(|(claim, _)| !holders.contains(claim)).collect();
    let mut latencies = Vec::with_capacity(lost.len());
    let mut since_start = Vec::with_capacity(lost.len());
    let mut told = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + MESH_TIMEOUT;
    while told.len() < lost.len() {
        let Ok(Some((envelope, arrived_ms))) = tokio::time::timeout_at(deadline, arrivals.recv()).await else {
            bail!("node 1's stream told {} of the {} claims it lost within {MESH_TIMEOUT:?}", told.len(), lost.len());
        };
        let arrived = Instant::now();
        let Event::ClaimLost { claim_id, task, .. } = envelope.event else { continue };
        let published_ms = parse_rfc3339_ms(&envelope.at).context("an event's `at` is not RFC 3339")?;
        latencies.push(Duration::from_millis(arrived_ms.saturating_sub(published_ms)));
        since_start.push(arrived - started);
        if told.insert(claim_id, task).is_some() {
            bail!("node 1's stream told a lost claim twice");
        }
    }
    listener.abort();
    let exact = told.iter().collect::<BTreeMap<_, _>>() == lost;
    latencies.sort();
    since_start.sort();
    println!(
        "lost-claim events: node 2 of 2 claimed {tasks} tasks offline while node 1 claimed them too; node 1 lost {} \
         when node 2 came back",
        lost.len()
    );
    println!(
        "merge to the event on the loser's stream: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (event `at` to arrival, \
         millisecond clock)",
        millis(percentile(&latencies, 0.5)),
        millis(percentile(&latencies, 0.99)),
        millis(percentile(&latencies, 1.0))
    );
    println!(
        "node 2's start to the event: p50 {:.0} ms, p99 {:.0} ms (its start, dial, sync and merge included)",
        millis(percentile(&since_start, 0.5)),
        millis(percentile(&since_start, 0.99))
    );
    println!("every lost claim told once, and only those: {}", if exact { "yes" } else { "NO" });
    let p99 = percentile(&latencies, 0.99);
    println!(
        "goal: p99 <= {} ms: {}; aim <= {} ms: {}",
        LOST_EVENT_GOAL.as_millis(),
        met_or_not(p99 <= LOST_EVENT_GOAL && exact),
        LOST_EVENT_AIM.as_millis(),
        met_or_not(p99 <= LOST_EVENT_AIM && exact)
    );
    mesh.print_warnings();
    Ok(())
}
