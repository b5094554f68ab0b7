//! Task objects in bulk: a listing's JSON, written task by task, is the JSON of its task
//! objects, whatever the tasks hold.

use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{Replica, Speaker, TaskEntry};
use meshwork_protocol::AgentName;
use meshwork_protocol::api::{AddTask, HandoffRequest};

const NOW_MS: u64 = 1_800_000_000_000;

/// Tasks in every status, with holders, progress, handoffs, results, failures and
/// dependencies, written by two agents.
fn varied_replica() -> Replica {
    let key = node_key(1);
    let (ann, bob) = (AgentName::new("ann").unwrap(), AgentName::new("bob").unwrap());
    let (ann, bob) = (Speaker { key: &key, agent: &ann }, Speaker { key: &key, agent: &bob });
    let mut replica = Replica::found(&key, 1, "laptop", "mesh", NOW_MS).unwrap().replica;
    let add = |replica: &mut Replica, id: &str, after: &[&str], at: u64| {
        let request = AddTask {
            id: Some(id.to_owned()),
            title: format!("task \"{id}\"\twith escapes"),
            description: "line one\nline two".to_owned(),
            after: after.iter().map(|id| (*id).to_owned()).collect(),
            labels: vec!["ui".to_owned()],
            priority: 3,
            ..AddTask::default()
        };
        replica.add_task(ann, &request, NOW_MS + at, at).unwrap().task
    };
    let open = add(&mut replica, "OPEN", &[], 1);
    add(&mut replica, "BLOCKED", &["OPEN"], 2);
    let held = add(&mut replica, "HELD", &[], 3);
    replica.claim(bob, &held, NOW_MS + 10).unwrap();
    replica.progress(bob, &held, "half way", Some(50), NOW_MS + 11).unwrap();
    let handoff = HandoffRequest { commits: vec!["abc".to_owned()], next: "tests".to_owned(), ..Default::default() };
    replica.handoff(bob, &held, &handoff, NOW_MS + 12).unwrap();
    let done = add(&mut replica, "DONE", &[], 4);
    replica.claim(ann, &done, NOW_MS + 20).unwrap();
    replica.done(ann, &done, "shipped", NOW_MS + 21).unwrap();
    let failed = add(&mut replica, "FAILED", &[], 5);
    replica.claim(ann, &failed, NOW_MS + 30).unwrap();
    replica.fail(ann, &failed, "flaky", NOW_MS + 31).unwrap();
    let cancelled = add(&mut replica, "CANCELLED", &[], 6);
    replica.cancel(bob, &cancelled, "not needed", NOW_MS + 40).unwrap();
    assert!(replica.task(&open).is_some());
    replica
}

/// Goal: the listing written task by task is byte for byte the JSON of the live task
/// objects, stale or not, and the bulk views are the single views. Method: a queue holding
/// every kind of task, read while the held task's lease holds and after it ran out.
#[test]
fn a_listing_written_task_by_task_is_the_json_of_its_task_objects() {
    let replica = varied_replica();
    let entries: Vec<&TaskEntry> = replica.tasks().values().collect();
    let views = replica.task_views_of(entries.iter().copied());
    let single: Vec<_> = entries.iter().map(|entry| replica.task_view(entry)).collect();
    assert_eq!(views, single);
    let a_year_later = NOW_MS + 365 * 24 * 3_600_000;
    for now in [NOW_MS + 50, a_year_later] {
        let live = replica.live_task_views_of(entries.iter().copied(), now);
        let single: Vec<_> = entries.iter().map(|entry| replica.live_task_view(entry, now)).collect();
        assert_eq!(live, single);
        assert_eq!(live.iter().filter(|view| view.stale.is_some()).count(), usize::from(now == a_year_later));
        let expected = serde_json::to_vec(&live).unwrap();
        let written = replica.live_task_views_json(&entries, now);
        assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
        assert_eq!(replica.live_task_views_json(&entries[2..3], now), serde_json::to_vec(&live[2..3]).unwrap());
        assert_eq!(replica.live_task_views_json(&[], now), b"[]");
    }
}
