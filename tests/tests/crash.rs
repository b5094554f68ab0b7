//! Crash safety: a node under a stream of acknowledged mutations is killed with SIGKILL at
//! random moments; after each restart every acknowledged mutation is present and the
//! document loads. The seed is printed so a failing run can be repeated
//! (`MESHWORK_CRASH_SEED=N`); `MESHWORK_CRASH_ROUNDS` sets the number of kills (default 20).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshwork_tests::TestNode;

const BIN: &str = env!("CARGO_BIN_EXE_meshwork");
const CLIENTS: usize = 3;

/// A small deterministic generator, so a seed replays the same kill times.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the clients were told succeeded: task id -> whether it was claimed too.
type Acknowledged = Arc<Mutex<BTreeMap<String, bool>>>;

fn client_loop(node: &TestNode, client: usize, round: usize, stop: &AtomicBool, acknowledged: &Acknowledged) {
    let agent = format!("crash-{client}");
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let id = format!("R{round}-C{client}-{sequence}");
        let request_id = format!("add-{id}");
        let added =
            node.cli_as(&agent, &["task", "add", "crash test", "--id", &id, "--request-id", &request_id, "--json"]);
        if added.code != 0 {
            return; // the node is gone
        }
        acknowledged.lock().expect("ack lock").insert(id.clone(), false);
        if sequence % 2 == 0 {
            let claimed = node.cli_as(&agent, &["claim", &id, "--json"]);
            if claimed.code != 0 {
                return;
            }
            acknowledged.lock().expect("ack lock").insert(id, true);
        }
    }
}

/// Every acknowledged add and claim survives SIGKILL at a random moment, 20 times over.
#[test]
fn acknowledged_mutations_survive_sigkill_at_random_moments() {
    let seed = std::env::var("MESHWORK_CRASH_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64) | 1
    });
    let rounds: usize = std::env::var("MESHWORK_CRASH_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(20);
    println!("crash test seed {seed}, {rounds} rounds");
    let mut random = XorShift(seed);
    let mut node = TestNode::start(BIN);
    let acknowledged: Acknowledged = Arc::default();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let node_ref = &node;
        thread::scope(|scope| {
            for client in 0..CLIENTS {
                let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
                scope.spawn(move || client_loop(node_ref, client, round, &stop, &acknowledged));
            }
            thread::sleep(Duration::from_millis(50 + random.next() % 400));
            // SIGKILL while the clients are mid-request.
            if let Some(pid) = node_ref.pid() {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            stop.store(true, Ordering::Relaxed);
        });
        node.kill9(); // reaps the killed process
        node.launch();
        let listed = node.ok(&["task", "list"]);
        let present: BTreeMap<String, String> = listed
            .as_array()
            .into_iter()
            .flatten()
            .map(|task| {
                (
                    task["id"].as_str().unwrap_or_default().to_owned(),
                    task["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (id, claimed) in acknowledged.lock().expect("ack lock").iter() {
            let status =
                present.get(id).unwrap_or_else(|| panic!("seed {seed} round {round}: acknowledged task {id} is lost"));
            if *claimed {
                assert_eq!(status, "claimed", "seed {seed} round {round}: acknowledged claim of {id} is lost");
            }
        }
    }
    assert!(acknowledged.lock().expect("ack lock").len() > rounds, "the clients got too few mutations through");
}
