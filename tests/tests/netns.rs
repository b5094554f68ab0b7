//! Network fault tests: real `meshwork` processes, each in its own Linux network namespace on
//! a lab bridge (`meshwork_tests::netns::Lab`), talking QUIC and TCP over the lab's addresses
//! while iptables cuts, drops or duplicates their packets and libfaketime moves a clock. The
//! test process stays outside the namespaces and drives every node through its CLI socket.
//!
//! Needs root, iproute2, iptables, nftables and faketime, so every test here is
//! `#[ignore = "needs root: ..."]`: a plain `cargo test --workspace` names them as ignored,
//! and `.ci/run` runs them as root with `--include-ignored`. A test that is run and cannot
//! set up its lab fails with the reason; it never passes without having run.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use meshwork_tests::netns::{Lab, Need, lab_or_fail, wall_clock_offset_prefix};
use meshwork_tests::{Run, TestNode, join, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshwork");
/// How long a lab mesh may take to form (three starts, two joins, a loaded 2-core box).
const FORM: Duration = Duration::from_secs(60);
/// How long the mesh may take to agree after a partition heals (the scenario's goal).
const HEAL_CONVERGE: Duration = Duration::from_secs(10);
/// How long the mesh may take to agree under 20% loss: generous, the figure is printed.
const LOSSY_CONVERGE: Duration = Duration::from_secs(90);
/// How long the nodes may take to notice a partition: about 10 s on QUIC (idle timeout), 25
/// to 30 s on TCP (two failed pings; libp2p-ping's first failure is silent).
const NOTICE_PARTITION: Duration = Duration::from_secs(60);
/// Ordinary propagation on a healthy lab network.
const CONVERGE: Duration = Duration::from_secs(30);

/// Agents, one per node, in host order.
const AGENTS: [&str; 3] = ["agent-alpha", "agent-beta", "agent-gamma"];

/// Three nodes (of [`three_stopped`]) started in parallel, `beta` and `gamma` joined
/// through `alpha`; returns once every node sees three members and is connected to both others.
fn mesh_of_three(nodes: [TestNode; 3]) -> [TestNode; 3] {
    let nodes: Vec<TestNode> = thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .into_iter()
            .map(|mut node| {
                scope.spawn(move || {
                    node.launch();
                    node
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a node starts")).collect()
    });
    let [alpha, beta, gamma]: [TestNode; 3] = nodes.try_into().expect("three nodes");
    join(&alpha, &beta);
    join(&alpha, &gamma);
    for node in [&alpha, &beta, &gamma] {
        wait_until("every node sees three members", FORM, || members(node) == 3);
        wait_until("every node is connected to both others", FORM, || connected_peers(node).len() == 2);
    }
    [alpha, beta, gamma]
}

/// Three initialised, stopped nodes on the lab's three hosts.
fn three_stopped(lab: &Lab) -> [TestNode; 3] {
    ["alpha", "beta", "gamma"]
        .iter()
        .enumerate()
        .map(|(host, name)| lab.stopped_node(BIN, host, name))
        .collect::<Vec<_>>()
        .try_into()
        .expect("three nodes")
}

fn members(node: &TestNode) -> usize {
    node.ok(&["mesh", "members"]).as_array().map_or(0, Vec::len)
}

/// The node ids of the peers this node is connected to now.
fn connected_peers(node: &TestNode) -> Vec<String> {
    let peers = node.ok(&["node", "status"])["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .filter(|peer| peer["connected"] == true)
        .filter_map(|peer| peer["node_id"].as_str().map(str::to_owned))
        .collect()
}

/// Every task this node knows, by id.
fn tasks(node: &TestNode) -> BTreeMap<String, Value> {
    let list = node.ok(&["task", "list"]);
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|task| Some((task["id"].as_str()?.to_owned(), task.clone())))
        .collect()
}

/// The canonical export: byte-identical on nodes that hold the same records.
fn export(node: &TestNode) -> String {
    let run = node.cli(&["export", "--format", "json"]);
    assert_eq!(run.code, 0, "export failed: {run:?}");
    run.stdout
}

/// Whether all nodes hold the same records (equal exports) and that state satisfies `also`.
fn agreed(nodes: &[TestNode], also: impl Fn(&BTreeMap<String, Value>) -> bool) -> bool {
    let first = export(&nodes[0]);
    nodes[1..].iter().all(|node| export(node) == first) && also(&tasks(&nodes[0]))
}

/// Runs `work(node index, node, agent)` on every node at once.
fn on_every_node<T: Send>(nodes: &[TestNode], work: impl Fn(usize, &TestNode, &str) -> T + Sync) -> Vec<T> {
    let work = &work;
    thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(AGENTS)
            .enumerate()
            .map(|(index, (node, agent))| scope.spawn(move || work(index, node, agent)))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("the work runs")).collect()
    })
}

/// The lost-claim notices in an agent's inbox on its node, by task.
fn lost_notices(node: &TestNode, agent: &str) -> BTreeMap<String, usize> {
    notices(node, agent, "lost-")
}

/// The notices of one kind (`lost-`, `taken-`, `won-`) in an agent's inbox on its node, by task.
fn notices(node: &TestNode, agent: &str, kind: &str) -> BTreeMap<String, usize> {
    let run = node.cli_as(agent, &["inbox", "read", "--json"]);
    assert_eq!(run.code, 0, "inbox read failed: {run:?}");
    let mut notices = BTreeMap::new();
    for message in run.json().as_array().into_iter().flatten() {
        if message["id"].as_str().is_some_and(|id| id.starts_with(kind)) {
            *notices.entry(message["task"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
        }
    }
    notices
}

/// The tasks each agent's claim lost, from the converged task list.
fn lost_by_agent(tasks: &BTreeMap<String, Value>) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut lost: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (id, task) in tasks {
        for claim in task["lost_claims"].as_array().into_iter().flatten() {
            let agent = claim["agent"].as_str().unwrap_or_default().to_owned();
            *lost.entry(agent).or_default().entry(id.clone()).or_insert(0) += 1;
        }
    }
    lost
}

fn task_ids(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|index| format!("{prefix}-{index:02}")).collect()
}

/// A partition of one node from two lets both sides claim the same tasks; once it heals the
/// three nodes agree (equal exports) within 10 s on one holder per task, the other claim is
/// listed as lost, and each losing agent has exactly one notice per lost claim. Method: the
/// claims are made while the cut connections still look alive (frames sent into the void),
/// and the heal comes only after every node noticed the partition and dropped its connections.
#[test]
#[ignore = "needs root: network namespaces, iptables (run with --include-ignored; .ci/run does)"]
fn a_two_one_partition_heals_to_one_holder_per_task() {
    let mut lab = lab_or_fail(3, &[Need::Iptables]);
    let nodes = mesh_of_three(three_stopped(&lab));
    let ids = task_ids("P", 20);
    for id in &ids {
        nodes[0].ok(&["task", "add", "contested across a partition", "--id", id]);
    }
    for node in &nodes {
        wait_until("every task reaches every node", CONVERGE, || tasks(node).len() == ids.len());
    }

    lab.partition(&[0, 1], &[2]);
    // alpha and beta share the tasks between them (no race on their side); gamma claims all.
    let codes = on_every_node(&nodes, |index, node, agent| {
        let mine: Vec<&String> =
            ids.iter().enumerate().filter(|(n, _)| index == 2 || n % 2 == index).map(|(_, id)| id).collect();
        mine.iter().map(|id| (id.to_string(), node.cli_as(agent, &["claim", id, "--json"]))).collect::<Vec<_>>()
    });
    for (id, run) in codes.iter().flatten() {
        assert_eq!(run.code, 0, "each side believes it holds {id} while cut off: {run:?}");
    }
    let gamma_id = nodes[2].node_id();
    wait_until("both sides notice the partition", NOTICE_PARTITION, || {
        connected_peers(&nodes[2]).is_empty()
            && nodes[..2].iter().all(|node| !connected_peers(node).contains(&gamma_id))
    });
    assert!(lab.dropped_packets(2) > 0, "the partition rules dropped packets");

    lab.heal();
    let healed = Instant::now();
    wait_until("the three nodes agree after the heal", HEAL_CONVERGE, || {
        agreed(&nodes, |tasks| {
            tasks.values().all(|task| task["lost_claims"].as_array().is_some_and(|lost| !lost.is_empty()))
        })
    });
    eprintln!("netns figure: a 2|1 partition converged {:?} after the heal", healed.elapsed());

    let reference = tasks(&nodes[0]);
    for node in &nodes {
        let seen = tasks(node);
        for id in &ids {
            let task = &seen[id];
            assert_eq!(task["status"], "claimed", "{id}: {task}");
            assert_eq!(
                task["holder"]["claim_id"], reference[id]["holder"]["claim_id"],
                "one holder of {id} everywhere"
            );
            let lost = task["lost_claims"].as_array().expect("lost_claims");
            assert_eq!(lost.len(), 1, "exactly the other side's claim of {id} lost: {task}");
            let sides = [task["holder"]["agent"].clone(), lost[0]["agent"].clone()];
            assert!(sides.contains(&Value::from(AGENTS[2])), "gamma's claim of {id} won or lost: {task}");
        }
    }
    // Invariant 5: every agent whose claim lost is told exactly once per lost claim.
    let lost = lost_by_agent(&reference);
    for (node, agent) in nodes.iter().zip(AGENTS) {
        let expected = lost.get(agent).cloned().unwrap_or_default();
        wait_until("every losing agent has its notices", CONVERGE, || lost_notices(node, agent) == expected);
        assert_eq!(lost_notices(node, agent), expected, "{agent} is told once per lost claim");
    }
}

/// With 20% of every host's outgoing packets dropped, a workload of adds, claims (racing on
/// shared tasks) and dones on all three nodes converges: equal exports, every task done, one
/// notice per lost claim. Method: iptables `statistic` loss on each host's egress to the lab's
/// subnet, in place for the whole workload and the convergence; the time is printed.
#[test]
#[ignore = "needs root: network namespaces, iptables (run with --include-ignored; .ci/run does)"]
fn twenty_percent_loss_still_converges() {
    let lab = lab_or_fail(3, &[Need::Iptables]);
    let nodes = mesh_of_three(three_stopped(&lab));
    let shared = shared_tasks(&nodes);
    for host in 0..lab.hosts() {
        lab.lose_outgoing(host, 20);
    }
    let converged = race_and_finish(&nodes, &shared, LOSSY_CONVERGE);
    eprintln!("netns figure: under 20% loss, {converged}");
    assert!((0..lab.hosts()).all(|host| lab.dropped_packets(host) > 0), "the loss rules dropped packets");
}

/// With 30% of every host's outgoing packets sent twice, the same workload converges the same
/// way: duplicates change nothing. Method: `nft dup` on each host's egress to the lab's subnet.
#[test]
#[ignore = "needs root: network namespaces, nftables (run with --include-ignored; .ci/run does)"]
fn thirty_percent_duplication_changes_nothing() {
    let lab = lab_or_fail(3, &[Need::Nft]);
    let nodes = mesh_of_three(three_stopped(&lab));
    let shared = shared_tasks(&nodes);
    for host in 0..lab.hosts() {
        lab.duplicate_outgoing(host, 30);
    }
    let converged = race_and_finish(&nodes, &shared, CONVERGE);
    eprintln!("netns figure: under 30% duplication, {converged}");
    assert!((0..lab.hosts()).all(|host| lab.duplicated_packets(host) > 0), "the dup rules sent copies");
}

/// Nine tasks added on alpha before the faults, once every node holds them.
fn shared_tasks(nodes: &[TestNode]) -> Vec<String> {
    let shared = task_ids("S", 9);
    for id in &shared {
        nodes[0].ok(&["task", "add", "raced for by all three", "--id", id]);
    }
    for node in nodes {
        wait_until("the shared tasks reach every node", CONVERGE, || tasks(node).len() == shared.len());
    }
    shared
}

/// On all three nodes at once: add, claim and finish five tasks of its own, and race for every
/// shared task, finishing those it wins. Then waits (up to `bound`) until the nodes agree on
/// all tasks done, and every losing agent has one notice per lost claim. Says how long it took.
fn race_and_finish(nodes: &[TestNode], shared: &[String], bound: Duration) -> String {
    let started = Instant::now();
    let own_per_node = 5;
    on_every_node(nodes, |index, node, agent| {
        for id in task_ids(&format!("L{index}"), own_per_node) {
            for args in [vec!["task", "add", "own work", "--id", &id], vec!["claim", &id], vec!["done", &id]] {
                let run = node.cli_as(agent, &[args.as_slice(), &["--json"]].concat());
                assert_eq!(run.code, 0, "{args:?} on {agent}'s own task: {run:?}");
            }
        }
        for id in shared {
            // INVALID_TRANSITION: the winner's done arrived before this claim.
            let claim = node.cli_as(agent, &["claim", id, "--json"]);
            assert!([0, 5, 9].contains(&claim.code), "a claim wins, is CONFLICT or comes too late: {claim:?}");
            if claim.code == 0 {
                // The claim may still lose to one that arrives late: then NOT_OWNER, or
                // INVALID_TRANSITION once the winner's done arrived first.
                let done = node.cli_as(agent, &["done", id, "--json"]);
                assert!([0, 6, 9].contains(&done.code), "done after a won claim: {done:?}");
            }
        }
    });
    let workload = started.elapsed();
    let expected = shared.len() + nodes.len() * own_per_node;
    wait_until("the three nodes agree on every task done", bound, || {
        agreed(nodes, |tasks| tasks.len() == expected && tasks.values().all(|task| task["status"] == "done"))
    });
    let converged = started.elapsed() - workload;
    let lost = lost_by_agent(&tasks(&nodes[0]));
    for (node, agent) in nodes.iter().zip(AGENTS) {
        let expected = lost.get(agent).cloned().unwrap_or_default();
        wait_until("every losing agent has its notices", CONVERGE, || lost_notices(node, agent) == expected);
    }
    format!("{expected} tasks converged {converged:?} after a workload of {workload:?}")
}

/// A node whose wall clock runs an hour ahead (libfaketime, monotonic clock real) races the
/// other two for the same tasks; every node names the same winner for every task. Method: the
/// skew is checked first (the node's `started_at` and its claims' stamps are an hour ahead),
/// then all three claim all tasks at once and the exports must become equal.
#[test]
#[ignore = "needs root: network namespaces, libfaketime (run with --include-ignored; .ci/run does)"]
fn a_node_an_hour_off_agrees_on_every_winner() {
    let lab = lab_or_fail(3, &[Need::Libfaketime]);
    let mut stopped = three_stopped(&lab);
    stopped[2].set_launch_prefix([lab.launch_prefix(2), wall_clock_offset_prefix("+1h")].concat());
    let nodes = mesh_of_three(stopped);
    let hour_ms: i64 = 3600 * 1000;
    let ahead = |node: &TestNode| rfc3339_ms(&node.ok(&["node", "status"])["started_at"]) - unix_now_ms();
    assert!((ahead(&nodes[2]) - hour_ms).abs() < 120_000, "gamma's clock is an hour ahead: {} ms", ahead(&nodes[2]));
    assert!(ahead(&nodes[0]).abs() < 120_000, "alpha's clock is real: {} ms", ahead(&nodes[0]));

    let ids = task_ids("K", 15);
    for id in &ids {
        nodes[0].ok(&["task", "add", "raced for across an hour of skew", "--id", id]);
    }
    for node in &nodes {
        wait_until("every task reaches every node", CONVERGE, || tasks(node).len() == ids.len());
    }
    let runs = on_every_node(&nodes, |_, node, agent| {
        ids.iter().map(|id| node.cli_as(agent, &["claim", id, "--json"])).collect::<Vec<_>>()
    });
    for run in runs.iter().flatten() {
        assert!([0, 5].contains(&run.code), "a claim wins or is CONFLICT: {run:?}");
    }
    let won_by_gamma = runs[2].iter().filter(|run| run.code == 0).map(Run::json).collect::<Vec<_>>();
    for task in &won_by_gamma {
        let stamped = rfc3339_ms(&task["holder"]["claimed_at"]) - unix_now_ms();
        assert!((stamped - hour_ms).abs() < 120_000, "gamma stamps its claims an hour ahead: {task}");
    }
    wait_until("the three nodes agree on every winner", CONVERGE, || {
        agreed(&nodes, |tasks| tasks.values().all(|task| task["status"] == "claimed"))
    });
    let reference = tasks(&nodes[0]);
    for node in &nodes[1..] {
        let seen = tasks(node);
        for id in &ids {
            assert_eq!(seen[id]["holder"], reference[id]["holder"], "every node names the same winner of {id}");
        }
    }
    let by_gamma = reference.values().filter(|task| task["holder"]["agent"] == AGENTS[2]).count();
    let taken_over = reference.values().filter(|task| task["generation"].as_u64() != Some(0)).count();
    // Every generation here after the first began with a takeover of a lease that gamma's clock
    // saw run out: the displaced holder's agent, maybe still at work, is told exactly once.
    let takeovers: u64 = reference.values().map(|task| task["generation"].as_u64().unwrap_or(0)).sum();
    let told = || -> Vec<BTreeMap<String, usize>> {
        nodes.iter().zip(AGENTS).map(|(node, agent)| notices(node, agent, "taken-")).collect()
    };
    wait_until("every displaced holder is told its lease was taken over", CONVERGE, || {
        told().iter().flat_map(BTreeMap::values).sum::<usize>() as u64 == takeovers
    });
    assert!(told().iter().flat_map(BTreeMap::values).all(|count| *count == 1), "one notice per takeover: {:?}", told());
    eprintln!(
        "netns figure: with gamma an hour ahead, gamma won {by_gamma} of {} tasks, {taken_over} by a takeover \
         (each displaced agent told once)",
        ids.len()
    );
}

/// Milliseconds since the Unix epoch now, by the test process's (real) clock.
fn unix_now_ms() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    i64::try_from(elapsed.as_millis()).expect("a 64-bit time")
}

/// An RFC 3339 UTC time as the node writes it (`2026-11-21T08:13:59.160Z`), in Unix ms.
fn rfc3339_ms(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time string: {value}"));
    let number = |range: std::ops::Range<usize>| -> i64 {
        text.get(range).and_then(|digits| digits.parse().ok()).unwrap_or_else(|| panic!("an RFC 3339 time: {text}"))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second, millis) = (number(11..13), number(14..16), number(17..19), number(20..23));
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis
}
