//! Black-box tests of the event stream: `meshwork watch` against real nodes, and
//! `GET /v1/events` resumed with `Last-Event-ID` (what `watch --after ID` sends).

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, SystemTime};

use meshwork_tests::{LOOPBACK_FLAGS, TestNode, WatchedEvent, join, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshwork");
/// How long the mesh may take to agree (loopback, a loaded 2-core CI box).
const CONVERGE: Duration = Duration::from_secs(30);
/// The bound from a merge to the loser's event on its stream.
const LOST_EVENT_LATENCY_MAX: Duration = Duration::from_secs(1);
/// Tasks both sides claim while apart: each is lost by one side, at random by the winner
/// rule's rendezvous hash, so alpha loses at least one of them but with odds of 2^-16.
const CONTESTED_TASKS: usize = 16;

fn two_node_mesh() -> (TestNode, TestNode) {
    let (alpha, beta) = thread::scope(|scope| {
        let alpha = scope.spawn(|| TestNode::online(BIN, "alpha"));
        let beta = scope.spawn(|| TestNode::online(BIN, "beta"));
        (alpha.join().expect("alpha starts"), beta.join().expect("beta starts"))
    });
    join(&alpha, &beta);
    for node in [&alpha, &beta] {
        wait_until("both nodes see two members", CONVERGE, || {
            node.ok(&["mesh", "members"]).as_array().map(Vec::len) == Some(2)
        });
    }
    (alpha, beta)
}

fn holder_agent(node: &TestNode, id: &str) -> Option<String> {
    let run = node.cli(&["task", "show", id, "--json"]);
    (run.code == 0).then(|| run.json()["holder"]["agent"].as_str().map(str::to_owned)).flatten()
}

fn kind(event: &WatchedEvent) -> &str {
    event.event["kind"].as_str().unwrap_or_default()
}

/// The RFC 3339 `at` of an event as a system time.
fn published_at(event: &Value) -> SystemTime {
    let text = event["at"].as_str().unwrap_or_default();
    let parsed = chrono_free_rfc3339_ms(text).unwrap_or_else(|| panic!("not an RFC 3339 time: {text:?}"));
    SystemTime::UNIX_EPOCH + Duration::from_millis(parsed)
}

/// `2026-12-07T10:00:00.123Z` as milliseconds since the epoch (the node writes exactly this).
fn chrono_free_rfc3339_ms(text: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, millis) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (year, month) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + millis)
}

#[test]
fn the_losing_agent_sees_its_lost_claim_on_its_watch_stream_within_a_second_of_the_merge() {
    let (alpha, mut beta) = two_node_mesh();
    let ids: Vec<String> = (0..CONTESTED_TASKS).map(|index| format!("C-{index}")).collect();
    for id in &ids {
        alpha.ok(&["task", "add", "contested", "--id", id]);
    }
    wait_until("the tasks reach beta", CONVERGE, || {
        holder_agent(&beta, &ids[CONTESTED_TASKS - 1]).is_none()
            && beta.cli(&["task", "show", &ids[CONTESTED_TASKS - 1]]).code == 0
    });

    // Apart, both sides claim every task: each claim is written, and one side of each loses.
    beta.terminate();
    beta.set_start_flags(&["--offline"]);
    beta.launch();
    for id in &ids {
        assert_eq!(beta.cli_as("agent-beta", &["claim", id, "--json"]).code, 0, "beta claims {id} offline");
        assert_eq!(alpha.cli_as("agent-alpha", &["claim", id, "--json"]).code, 0, "alpha claims {id} alone");
    }
    let alpha_watch = alpha.watch(Some("agent-alpha"), &["--kind", "claim_lost"]);
    // Let the watcher connect before the merge can happen.
    thread::sleep(Duration::from_millis(500));

    beta.terminate();
    beta.set_start_flags(&LOOPBACK_FLAGS);
    beta.launch();
    // `--after 0`: everything this boot of beta published, from its start.
    let beta_watch = beta.watch(Some("agent-beta"), &["--kind", "claim_lost", "--after", "0"]);
    wait_until("every task has one holder on both nodes", CONVERGE, || {
        ids.iter().all(|id| {
            let holder = holder_agent(&alpha, id);
            holder.is_some() && holder == holder_agent(&beta, id)
        })
    });
    let lost_by_alpha: BTreeSet<String> =
        ids.iter().filter(|id| holder_agent(&alpha, id).as_deref() == Some("agent-beta")).cloned().collect();
    let lost_by_beta: BTreeSet<String> = ids.iter().filter(|id| !lost_by_alpha.contains(*id)).cloned().collect();
    assert!(!lost_by_alpha.is_empty(), "alpha lost none of {CONTESTED_TASKS} tasks (odds 2^-16)");

    let seen = alpha_watch.until("alpha's stream shows each claim it lost", CONVERGE, |seen| {
        seen.iter().filter(|event| kind(event) == "claim_lost").count() >= lost_by_alpha.len()
    });
    let told: Vec<String> =
        seen.iter().map(|event| event.event["task"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(told.iter().cloned().collect::<BTreeSet<_>>(), lost_by_alpha, "one event per lost claim");
    assert_eq!(told.len(), lost_by_alpha.len(), "no lost claim told twice");
    for event in &seen {
        assert_eq!(event.event["agent"], "agent-alpha");
        assert_eq!(event.event["node_id"], alpha.node_id().as_str());
        // The node publishes at the merge, in the step that takes the merge in.
        let latency = event.arrived.duration_since(published_at(&event.event)).unwrap_or_default();
        assert!(latency <= LOST_EVENT_LATENCY_MAX, "the lost claim reached the stream {latency:?} after the merge");
    }

    let beta_seen = beta_watch.until("beta's stream shows each claim it lost", CONVERGE, |seen| {
        seen.iter().filter(|event| kind(event) == "claim_lost").count() >= lost_by_beta.len()
    });
    let beta_told: BTreeSet<String> = beta_seen
        .iter()
        .filter(|event| kind(event) == "claim_lost")
        .map(|event| event.event["task"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(beta_told, lost_by_beta);
}

#[test]
fn a_stream_resumed_with_last_event_id_misses_and_repeats_nothing() {
    let node = TestNode::start(BIN);
    let whole = node.watch(None, &[]);
    let first = node.watch(None, &[]);
    thread::sleep(Duration::from_millis(300));
    for index in 0..5 {
        node.ok(&["task", "add", &format!("before {index}"), "--id", &format!("B-{index}")]);
    }
    let before = first.until("the first five tasks", CONVERGE, |seen| {
        seen.iter().filter(|event| kind(event) == "task_created").count() >= 5
    });
    let before_rest = first.stop();
    let last_id = before.iter().chain(&before_rest).filter_map(|event| event.event["id"].as_u64()).max().expect("ids");

    // Events published while nobody from the first stream listened.
    for index in 0..5 {
        node.ok(&["task", "add", &format!("between {index}"), "--id", &format!("M-{index}")]);
    }
    node.ok(&["claim", "M-0"]);
    let resumed = node.watch(None, &["--after", &last_id.to_string()]);
    node.ok(&["done", "M-0"]);
    let after = resumed.until("the resumed stream reaches the done task", CONVERGE, |seen| {
        seen.iter().any(|event| kind(event) == "task_finished")
    });
    let everything = whole.until("the unbroken stream reaches the done task", CONVERGE, |seen| {
        seen.iter().any(|event| kind(event) == "task_finished")
    });

    let ids = |events: &[WatchedEvent]| -> Vec<u64> {
        events.iter().filter_map(|event| event.event["id"].as_u64()).collect()
    };
    let mut pieced = ids(&before);
    pieced.extend(ids(&before_rest));
    pieced.extend(ids(&after));
    assert_eq!(pieced, ids(&everything), "the resumed stream continues exactly where the first one stopped");
    assert!(after.iter().all(|event| kind(event) != "gap"), "nothing was gone from the window: {after:#?}");
    assert!(pieced.windows(2).all(|pair| pair[1] == pair[0] + 1), "ids follow each other: {pieced:?}");
}
