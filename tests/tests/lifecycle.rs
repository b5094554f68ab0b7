//! The task lifecycle, every exit code of the contract, idempotent retries and restart
//! persistence, through the real `meshwork` binary against a real node in a temporary home.

use std::time::Duration;

use meshwork_tests::TestNode;

const BIN: &str = env!("CARGO_BIN_EXE_meshwork");

/// A task goes open -> claimed -> done through the CLI, and every step's JSON says so.
#[test]
fn a_task_goes_from_added_to_done_through_the_cli() {
    let node = TestNode::start(BIN);
    let added = node.ok(&[
        "task",
        "add",
        "Write the parser",
        "--id",
        "WRK-1",
        "--priority",
        "5",
        "--description",
        "the WRK format",
    ]);
    assert_eq!(added["id"], "WRK-1");
    assert_eq!(added["status"], "open");
    assert_eq!(added["ready"], true);

    let ready = node.ok(&["ready"]);
    assert_eq!(ready.as_array().map(Vec::len), Some(1));

    let claimed = node.ok(&["claim", "WRK-1"]);
    assert_eq!(claimed["status"], "claimed");
    assert_eq!(claimed["holder"]["agent"], "agent-a");
    assert_eq!(claimed["generation"], 0);

    node.ok(&["progress", "WRK-1", "parser half done", "--percent", "50"]);
    node.ok(&["renew", "WRK-1"]);
    node.ok(&["handoff", "WRK-1", "--commit", "abc123", "--test", "cargo test", "--risk", "none", "--next", "review"]);
    let done = node.ok(&["done", "WRK-1", "--summary", "parser written"]);
    assert_eq!(done["status"], "done");
    assert_eq!(done["result"]["summary"], "parser written");
    assert_eq!(done["progress"][0]["percent"], 50);
    assert_eq!(done["handoffs"][0]["commits"][0], "abc123");

    let shown = node.ok(&["task", "show", "WRK-1"]);
    assert_eq!(shown, done);
    let listed = node.ok(&["task", "list", "--status", "done"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(node.ok(&["task", "list", "--status", "open"]).as_array().map(Vec::len), Some(0));
}

/// Listings for people show their first rows and count the rest; `--limit` picks how many
/// and `--limit 0` shows all; `--json` lists everything unless told a limit.
#[test]
fn long_listings_show_their_head_and_count_the_rest() {
    let node = TestNode::start(BIN);
    for (id, priority) in [("L-1", "1"), ("L-2", "3"), ("L-3", "2")] {
        node.ok(&["task", "add", &format!("task {id}"), "--id", id, "--priority", priority]);
    }
    let rows = |run: meshwork_tests::Run| -> Vec<String> {
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout.lines().map(|line| line.split_whitespace().next().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(rows(node.cli(&["ready", "--limit", "2"])), ["ID", "L-2", "L-3", "…"]);
    let cut = node.cli(&["task", "list", "--limit", "1"]);
    assert!(cut.stdout.ends_with("… and 2 more (--limit N shows N rows, --limit 0 all)\n"), "{cut:?}");
    assert_eq!(rows(node.cli(&["task", "list", "--limit", "0"])), ["ID", "L-1", "L-2", "L-3"]);
    assert_eq!(rows(node.cli(&["ready"])), ["ID", "L-2", "L-3", "L-1"]);
    assert_eq!(node.ok(&["ready"]).as_array().map(Vec::len), Some(3));
    let first = node.ok(&["ready", "--limit", "1"]);
    assert_eq!(
        first.as_array().map(|tasks| tasks.iter().map(|task| task["id"].clone()).collect()),
        Some(vec![serde_json::json!("L-2")])
    );
}

/// Dependencies gate readiness, `claim --next` takes the highest priority ready task, and
/// release and fail open the task again in a new generation.
#[test]
fn dependencies_priorities_and_generations() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "first", "--id", "A", "--priority", "1"]);
    node.ok(&["task", "add", "second", "--id", "B", "--after", "A", "--priority", "9"]);
    node.ok(&["task", "add", "urgent", "--id", "C", "--priority", "7"]);
    let blocked = node.ok(&["task", "show", "B"]);
    assert_eq!(blocked["ready"], false);
    assert_eq!(blocked["blocked_by"][0], "A");

    let next = node.ok(&["claim", "--next"]);
    assert_eq!(next["id"], "C", "highest priority among ready tasks");
    let released = node.ok(&["release", "C", "--reason", "switching"]);
    assert_eq!((released["status"].as_str(), released["generation"].as_u64()), (Some("open"), Some(1)));

    node.ok(&["claim", "A"]);
    node.ok(&["done", "A"]);
    assert_eq!(node.ok(&["task", "show", "B"])["ready"], true);
    node.ok(&["claim", "B"]);
    let failed = node.ok(&["fail", "B", "--reason", "tests broke"]);
    assert_eq!(failed["status"], "open");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["failure"]["reason"], "tests broke");
}

/// Each exit code of the contract, with the error JSON on stdout under --json.
#[test]
fn every_exit_code_of_the_contract() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "held", "--id", "H"]);
    node.ok(&["task", "add", "blocked", "--id", "B", "--after", "H"]);
    node.ok(&["task", "add", "gated", "--id", "G", "--requires", "tool:no-such-tool-anywhere"]);
    node.ok(&["task", "add", "approval", "--id", "P", "--needs-approval"]);
    node.ok(&["claim", "H"]);

    let check = |code: i32, name: &str, run: meshwork_tests::Run| {
        assert_eq!(run.code, code, "{name}: {run:?}");
        if !name.is_empty() {
            assert_eq!(run.error_code(), name, "{run:?}");
            assert!(run.json()["error"]["message"].as_str().is_some_and(|text| !text.is_empty()));
            assert!(run.json()["error"]["retryable"].is_boolean());
        }
    };
    check(0, "", node.cli(&["task", "show", "H", "--json"]));
    check(2, "USAGE", node.cli(&["task", "add", "--no-such-flag", "--json"]));
    check(2, "USAGE", node.cli(&["claim", "--json"]));
    let elsewhere = TestNode::stopped(BIN);
    check(3, "NODE_UNAVAILABLE", elsewhere.cli(&["task", "list", "--json"]));
    check(4, "NOT_FOUND", node.cli(&["task", "show", "NOPE", "--json"]));
    check(5, "CONFLICT", node.cli_as("agent-b", &["claim", "H", "--json"]));
    check(5, "CONFLICT", node.cli(&["task", "add", "again", "--id", "H", "--json"]));
    check(6, "NOT_OWNER", node.cli_as("agent-b", &["done", "H", "--json"]));
    check(7, "GATE_REFUSED", node.cli(&["claim", "G", "--json"]));
    check(7, "GATE_REFUSED", node.cli(&["claim", "P", "--json"]));
    check(8, "INVALID_INPUT", node.cli(&["task", "add", &"x".repeat(201), "--json"]));
    check(8, "INVALID_INPUT", node.cli(&["task", "edit", "H", "--after", "B", "--json"]));
    check(8, "INVALID_INPUT", node.cli(&["task", "add", "bad req", "--requires", "mem>lots", "--json"]));
    check(9, "INVALID_TRANSITION", node.cli(&["claim", "B", "--json"]));
    check(9, "INVALID_TRANSITION", node.cli(&["done", "B", "--json"]));

    // Without --json the error goes to stderr, for people.
    let human = node.cli(&["task", "show", "NOPE"]);
    assert_eq!(human.code, 4);
    assert!(human.stderr.contains("NOPE"), "{human:?}");
}

/// The over-limit message names the limit, so users know which one they hit.
#[test]
fn limits_are_named_in_the_error() {
    let node = TestNode::start(BIN);
    let run = node.cli(&["task", "add", &"x".repeat(201), "--json"]);
    assert!(run.json()["error"]["message"].as_str().unwrap_or_default().contains("TITLE_BYTES_MAX"), "{run:?}");
    let many: Vec<String> = (0..65).map(|index| format!("--check=cmd{index}")).collect();
    let mut args = vec!["task", "add", "many checks", "--json"];
    args.extend(many.iter().map(String::as_str));
    let run = node.cli(&args);
    assert_eq!(run.error_code(), "INVALID_INPUT");
    assert!(run.json()["error"]["message"].as_str().unwrap_or_default().contains("LIST_ITEMS_MAX"), "{run:?}");
}

/// Repeating a mutation with the same --request-id returns the first answer and changes
/// nothing, also after the node restarted.
#[test]
fn retries_with_a_request_id_are_idempotent_across_restarts() {
    let mut node = TestNode::start(BIN);
    let first = node.ok(&["task", "add", "once", "--request-id", "req-1"]);
    let again = node.ok(&["task", "add", "once", "--request-id", "req-1"]);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(node.ok(&["task", "list"]).as_array().map(Vec::len), Some(1));
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    let claimed = node.ok(&["claim", &id, "--request-id", "req-2"]);

    node.terminate();
    node.launch();
    let after_restart = node.ok(&["task", "add", "once", "--request-id", "req-1"]);
    assert_eq!(after_restart["id"], first["id"]);
    assert_eq!(node.ok(&["claim", &id, "--request-id", "req-2"]), claimed);
    assert_eq!(node.ok(&["task", "list"]).as_array().map(Vec::len), Some(1));
    // Another agent's same request id is another request.
    let other = node.cli_as("agent-b", &["task", "add", "theirs", "--request-id", "req-1", "--json"]);
    assert_ne!(other.json()["id"], first["id"]);
}

/// Everything acknowledged survives a clean restart and a SIGKILL restart.
#[test]
fn the_queue_survives_restarts() {
    let mut node = TestNode::start(BIN);
    node.ok(&["task", "add", "a", "--id", "A"]);
    node.ok(&["task", "add", "b", "--id", "B", "--after", "A"]);
    node.ok(&["claim", "A"]);
    node.ok(&["progress", "A", "working"]);
    let before = node.ok(&["export"]);

    node.terminate();
    node.launch();
    assert_eq!(node.ok(&["export"]), before);

    node.kill9();
    node.launch();
    assert_eq!(node.ok(&["export"]), before);
    node.ok(&["done", "A"]);
    assert_eq!(node.ok(&["task", "show", "B"])["ready"], true);
}

/// `node status` describes the node; `node stop` stops it; then commands exit 3.
#[test]
fn node_status_and_stop() {
    let mut node = TestNode::start(BIN);
    node.ok(&["task", "add", "x"]);
    let status = node.ok(&["node", "status"]);
    assert!(status["node_id"].as_str().is_some_and(|id| id.starts_with("12D3KooW")), "{status}");
    assert_eq!(status["name"], "test-node");
    assert_eq!(status["tasks"], 1);
    assert_eq!(status["rejected_records"], 0);
    let init_again = node.ok(&["init"]);
    assert_eq!(init_again["node_id"], status["node_id"]);
    assert_eq!(init_again["mesh_id"], status["mesh_id"]);

    assert_eq!(node.cli(&["node", "stop"]).code, 0);
    assert!(node.wait_exit(Duration::from_secs(20)), "the node did not stop");
    assert_eq!(node.cli(&["node", "status"]).code, 3);
}

/// A damaged log file is reported with its path and left in place; the node starts from
/// what it can read.
#[test]
fn a_corrupt_log_is_reported_and_left_in_place() {
    let mut node = TestNode::start(BIN);
    node.ok(&["task", "add", "kept", "--id", "K"]);
    node.terminate();
    let doc = node.home().join("doc");
    let mut segments: Vec<_> = std::fs::read_dir(&doc)
        .expect("doc dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "mwl"))
        .collect();
    segments.sort();
    let damaged = segments.last().expect("a log segment").clone();
    let mut bytes = std::fs::read(&damaged).expect("read segment");
    bytes.extend_from_slice(b"\x10\x00\x00\x00garbage garbage garbage");
    std::fs::write(&damaged, &bytes).expect("damage segment");

    node.launch();
    let status = node.ok(&["node", "status"]);
    let skipped = status["skipped_files"].as_array().cloned().unwrap_or_default();
    assert!(
        skipped.iter().any(|line| line.as_str().is_some_and(|text| text.contains(&*damaged.to_string_lossy()))),
        "{status}"
    );
    assert_eq!(node.ok(&["task", "show", "K"])["id"], "K");
    assert_eq!(std::fs::read(&damaged).expect("still there"), bytes, "the damaged file is left as it was");
}

/// The export is the same canonical JSON whatever node state produced it, and the raw
/// Automerge export is a loadable document.
#[test]
fn exports_in_every_format() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "x", "--id", "X"]);
    let json = node.ok(&["export"]);
    assert_eq!(json["tasks"][0]["id"], "X");
    let lines = node.cli(&["export", "--format", "jsonl"]);
    assert_eq!(lines.code, 0);
    assert_eq!(lines.stdout.lines().count(), 1);
    let file = node.home().join("queue.automerge");
    let raw = node.cli(&["export", "--format", "automerge", "--output", &file.to_string_lossy()]);
    assert_eq!(raw.code, 0, "{raw:?}");
    assert!(std::fs::metadata(&file).map(|meta| meta.len()).unwrap_or(0) > 0);
}

/// Right after a node's first start, a task whose requirements this machine meets can be
/// claimed: the node publishes its probe before it serves.
#[test]
fn requirements_this_machine_meets_pass_the_gate_from_the_first_start() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "linux only", "--id", "L", "--requires", "os=linux", "--requires", "cpus>=1"]);
    assert_eq!(node.ok(&["ready"]).as_array().map(Vec::len), Some(1));
    let claimed = node.ok(&["claim", "--next"]);
    assert_eq!(claimed["id"], "L");
    let caps = node.ok(&["caps"]);
    assert_eq!(caps["os"], "linux");
}

/// Edit, approve and cancel through the CLI; the API socket is private to its owner.
#[test]
fn edit_approve_and_cancel_through_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let node = TestNode::start(BIN);
    let mode = std::fs::metadata(node.home().join("node.sock")).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is private");

    node.ok(&["task", "add", "draft", "--id", "E", "--priority", "1"]);
    let edited = node.ok(&["task", "edit", "E", "--title", "final", "--priority", "-3", "--description", "now clear"]);
    assert_eq!((edited["title"].as_str(), edited["priority"].as_i64()), (Some("final"), Some(-3)));
    assert_eq!(edited["description"], "now clear");

    node.ok(&["task", "add", "gated", "--id", "P", "--needs-approval"]);
    assert_eq!(node.ok(&["task", "show", "P"])["ready"], false);
    let approved = node.ok(&["approve", "P"]);
    assert_eq!((approved["approved"].as_bool(), approved["ready"].as_bool()), (Some(true), Some(true)));
    assert_eq!(node.ok(&["claim", "P"])["status"], "claimed");

    let cancelled = node.ok(&["task", "cancel", "E", "--reason", "not needed"]);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancelled"]["reason"], "not needed");
    assert_eq!(node.cli(&["claim", "E", "--json"]).error_code(), "INVALID_TRANSITION");
    node.ok(&["done", "P"]);
    assert_eq!(node.cli(&["task", "cancel", "P", "--json"]).error_code(), "INVALID_TRANSITION");
}

/// The verified-records cache is only a cache: damaged, it is ignored and every signature is
/// checked; the queue comes back whole.
#[test]
fn a_damaged_verified_records_cache_is_ignored() {
    let mut node = TestNode::start(BIN);
    node.ok(&["task", "add", "a", "--id", "A"]);
    node.ok(&["claim", "A"]);
    node.ok(&["done", "A", "--summary", "ok"]);
    let before = node.ok(&["export"]);
    node.terminate();
    let cache = node.home().join("verified.bin");
    assert!(cache.exists(), "a clean stop writes the cache");
    std::fs::write(&cache, b"not a cache").expect("damage the cache");
    node.launch();
    assert_eq!(node.ok(&["export"]), before);
    assert_eq!(node.ok(&["node", "status"])["rejected_records"], 0);
}

/// Fills a node with tasks in several states and stops it cleanly (which writes the start
/// caches); returns the export from before the stop.
fn busy_node_stopped(node: &mut TestNode) -> serde_json::Value {
    node.ok(&["task", "add", "a", "--id", "A"]);
    node.ok(&["task", "add", "b", "--id", "B", "--after", "A"]);
    node.ok(&["task", "add", "c", "--id", "C", "--requires", "os=linux"]);
    node.ok(&["claim", "A"]);
    node.ok(&["progress", "A", "half", "--percent", "50"]);
    node.ok(&["done", "A", "--summary", "ok"]);
    node.ok(&["task", "cancel", "C", "--reason", "not needed"]);
    let before = node.ok(&["export"]);
    node.terminate();
    before
}

/// Starts the node with its log at `info` into a file, waits for its first answer, stops it
/// with SIGTERM; returns the log without colour codes.
fn start_and_stop_logging(node: &TestNode) -> String {
    let log = node.home().join("start.log");
    let child = std::process::Command::new(BIN)
        .args(["node", "start", "--offline", "--home"])
        .arg(node.home())
        .env("MESHWORK_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create the log file"))
        .spawn()
        .expect("spawn meshwork node start");
    let mut child = Guard(child);
    let started = std::time::Instant::now();
    while node.cli(&["node", "status"]).code != 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "the node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status();
    let _ = child.0.wait();
    let text = std::fs::read_to_string(&log).expect("read the log");
    strip_colours(&text)
}

/// A child process killed when dropped, so a failed assertion leaves no node running.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().take_while(|c| *c != 'm').for_each(drop);
        } else {
            out.push(c);
        }
    }
    out
}

/// A clean restart takes every task's state from the derived-state cache the stop wrote,
/// and serves the same queue.
#[test]
fn a_clean_restart_takes_the_derived_state_from_its_cache() {
    let mut node = TestNode::start(BIN);
    let before = busy_node_stopped(&mut node);
    assert!(node.home().join("derived.bin").exists(), "a clean stop writes the derived-state cache");
    let log = start_and_stop_logging(&node);
    assert!(log.contains("derived_cache=used"), "{log}");
    node.launch();
    assert_eq!(node.ok(&["export"]), before);
}

/// The derived-state cache is only a cache: damaged (a flipped byte, cut short, not a cache
/// at all), it is ignored and every task's state derived; the queue comes back whole.
#[test]
fn a_damaged_derived_state_cache_is_ignored() {
    let mut node = TestNode::start(BIN);
    let before = busy_node_stopped(&mut node);
    let cache = node.home().join("derived.bin");
    let intact = std::fs::read(&cache).expect("a clean stop writes the derived-state cache");
    let mut flipped = intact.clone();
    flipped[intact.len() / 2] ^= 0x01;
    for damaged in [flipped, intact[..intact.len() / 2].to_vec(), b"not a cache".to_vec()] {
        std::fs::write(&cache, &damaged).expect("damage the cache");
        node.launch();
        assert_eq!(node.ok(&["export"]), before);
        assert_eq!(node.ok(&["node", "status"])["rejected_records"], 0);
        node.terminate();
    }
}

/// A derived-state cache of an older state of the document (as after a crash, or a cache
/// restored from a backup) is refused by its heads; every task, old and new, is served.
#[test]
fn a_stale_derived_state_cache_is_refused_and_every_task_served() {
    let mut node = TestNode::start(BIN);
    node.ok(&["task", "add", "old", "--id", "OLD"]);
    node.terminate();
    let cache = node.home().join("derived.bin");
    let stale = std::fs::read(&cache).expect("a clean stop writes the derived-state cache");
    node.launch();
    node.ok(&["task", "add", "new", "--id", "NEW"]);
    node.ok(&["claim", "OLD"]);
    let before = node.ok(&["export"]);
    node.terminate();
    std::fs::write(&cache, &stale).expect("put the stale cache back");
    let log = start_and_stop_logging(&node);
    assert!(log.contains("derived_cache=other-document"), "{log}");
    node.launch();
    assert_eq!(node.ok(&["export"]), before);
    assert_eq!(node.ok(&["task", "show", "OLD"])["status"], "claimed");
    assert_eq!(node.ok(&["node", "status"])["tasks"], 2);
}

/// Regression (issue "Node foundation"): `task add X; claim X; done X; task edit X --requires
/// gpu` left X open with no result and offered it again. An edit of a finished task's terms is
/// refused and changes nothing; an edit of a held task's requirements never ejects its holder.
#[test]
fn editing_requirements_never_reopens_a_done_task_nor_ejects_a_holder() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "finished work", "--id", "X"]);
    node.ok(&["claim", "X"]);
    node.ok(&["done", "X", "--summary", "shipped"]);
    let edit = node.cli(&["task", "edit", "X", "--requires", "gpu", "--json"]);
    assert_eq!((edit.code, edit.error_code()), (9, "INVALID_TRANSITION".to_owned()), "{edit:?}");
    let shown = node.ok(&["task", "show", "X"]);
    assert_eq!((shown["status"].as_str(), shown["result"]["summary"].as_str()), (Some("done"), Some("shipped")));
    assert_eq!(shown["requires"], serde_json::json!([]), "the refused edit changed nothing");
    let offered = node.ok(&["ready", "--all"]);
    assert!(offered.as_array().is_some_and(|tasks| tasks.iter().all(|task| task["id"] != "X")), "{offered}");

    // A held task: the edit applies to later claims; the holder keeps the task.
    node.ok(&["task", "add", "held work", "--id", "Y"]);
    let claimed = node.ok(&["claim", "Y"]);
    node.ok(&["task", "edit", "Y", "--requires", "gpu>=1"]);
    let held = node.ok(&["task", "show", "Y"]);
    assert_eq!(held["status"], "claimed");
    assert_eq!(held["holder"]["claim_id"], claimed["holder"]["claim_id"], "the holder was not ejected");
    assert_eq!(node.ok(&["done", "Y"])["status"], "done", "the holder can still finish it");
}

/// Regression (issue "Node foundation"): a task whose holder's lease expired stayed
/// `claimed`, never offered and nobody told. Now `ready` offers it as stale, with the holder
/// and since when; `task list --stale` lists it; the holder's agent gets one notice; and
/// `claim --next` takes it over.
#[test]
fn a_task_whose_lease_expired_is_offered_listed_told_and_taken_over() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "abandoned", "--id", "S", "--lease", "10s", "--priority", "3"]);
    node.ok(&["task", "add", "fresh but less urgent", "--id", "F"]);
    let claimed = node.cli_as("agent-gone", &["claim", "S", "--json"]);
    assert_eq!(claimed.code, 0, "{claimed:?}");
    let lease_until = claimed.json()["holder"]["lease_until"].as_str().unwrap_or_default().to_owned();
    let offered = |node: &TestNode| node.ok(&["ready"]).as_array().cloned().unwrap_or_default();
    assert!(offered(&node).iter().all(|task| task["id"] != "S"), "a live lease is not offered");

    meshwork_tests::wait_until("the lease runs out", Duration::from_secs(30), || {
        offered(&node).iter().any(|task| task["id"] == "S")
    });
    let stale = offered(&node).into_iter().find(|task| task["id"] == "S").unwrap_or_default();
    assert_eq!(stale["status"], "claimed", "on record the task is still claimed");
    assert_eq!(stale["stale"]["agent"], "agent-gone");
    assert_eq!(stale["stale"]["since"], lease_until.as_str());
    assert_eq!(offered(&node)[0]["id"], "S", "stale work of higher priority goes first");
    let listed = node.ok(&["task", "list", "--stale"]);
    let ids: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|task| task["id"].as_str()).collect();
    assert_eq!(ids, ["S"]);

    let notices = |agent: &str| -> usize {
        let inbox = node.cli_as(agent, &["inbox", "read", "--json"]).json();
        let ids = inbox.as_array().cloned().unwrap_or_default();
        ids.iter().filter(|message| message["id"].as_str().is_some_and(|id| id.starts_with("expired-"))).count()
    };
    meshwork_tests::wait_until("the holder's agent is told", Duration::from_secs(10), || notices("agent-gone") == 1);

    let taken = node.cli_as("agent-new", &["claim", "--next", "--json"]);
    assert_eq!(taken.code, 0, "{taken:?}");
    let taken = taken.json();
    assert_eq!((taken["id"].as_str(), taken["holder"]["agent"].as_str()), (Some("S"), Some("agent-new")));
    assert_eq!(taken["generation"], 1, "a takeover opens the next generation");
    assert!(taken["stale"].is_null());
    assert_eq!(notices("agent-gone"), 1, "told once");
}

/// Issue 11, as a user of a mesh of one meets it: a claim answers a `quorum` receipt at once
/// (its own vote is a majority of one), `task show` calls the holder confirmed, and a
/// `--timeout` past `CLAIM_TIMEOUT_MS_MAX` is `INVALID_INPUT` and claims nothing.
#[test]
fn a_claim_in_a_mesh_of_one_answers_a_quorum_receipt() {
    let node = TestNode::start(BIN);
    node.ok(&["task", "add", "solo", "--id", "S-1"]);
    node.ok(&["task", "add", "too patient", "--id", "S-2"]);
    let claimed = node.ok(&["claim", "S-1"]);
    assert_eq!(claimed["receipt"]["confirmation"], "quorum", "{claimed}");
    assert_eq!(claimed["receipt"]["needed"], 1);
    assert_eq!(claimed["receipt"]["acknowledged_by"][0], node.node_id());
    assert_eq!(node.ok(&["task", "show", "S-1"])["holder"]["confirmed"], true);
    let text = node.cli(&["claim", "S-1"]);
    assert!(text.stdout.contains("confirmed by a quorum (1 of 1 votes)"), "{text:?}");
    let refused = node.cli(&["claim", "S-2", "--timeout", "11m", "--json"]);
    assert_eq!((refused.code, refused.error_code().as_str()), (8, "INVALID_INPUT"), "{refused:?}");
    assert_eq!(node.ok(&["task", "show", "S-2"])["status"], "open");
}
