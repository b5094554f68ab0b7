//! Task objects in bulk: a listing's JSON, written task by task, is the JSON of its task
//! objects, whatever the tasks hold.

use meshwork_crdt::document::QueueDoc;
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{Replica, Speaker, TaskEntry};
use meshwork_protocol::api::{AddTask, EditTask, HandoffRequest};
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::{AgentName, TaskId};
use proptest::prelude::*;

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

/// One step of [`cached_listing_is_the_fresh_listing`]: an operation on node `a` (which lists)
/// or `b` (whose changes reach `a` at the next sync).
#[derive(Debug, Clone)]
enum Step {
    Add {
        on_b: bool,
        after: Option<usize>,
    },
    Claim {
        on_b: bool,
        task: usize,
    },
    Done {
        on_b: bool,
        task: usize,
    },
    Fail {
        on_b: bool,
        task: usize,
    },
    Cancel {
        task: usize,
    },
    Edit {
        task: usize,
        priority: i64,
        title: bool,
    },
    Progress {
        on_b: bool,
        task: usize,
    },
    /// `a` names `b` anew: every holder shown as `b` changes name.
    RenameB {
        round: u8,
    },
    Sync,
    /// Time passes, past some leases.
    Wait {
        ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<bool>(), proptest::option::of(0usize..8)).prop_map(|(on_b, after)| Step::Add { on_b, after }),
        3 => (any::<bool>(), 0usize..8).prop_map(|(on_b, task)| Step::Claim { on_b, task }),
        2 => (any::<bool>(), 0usize..8).prop_map(|(on_b, task)| Step::Done { on_b, task }),
        1 => (any::<bool>(), 0usize..8).prop_map(|(on_b, task)| Step::Fail { on_b, task }),
        1 => (0usize..8).prop_map(|task| Step::Cancel { task }),
        2 => (0usize..8, -3i64..3, any::<bool>()).prop_map(|(task, priority, title)| Step::Edit { task, priority, title }),
        1 => (any::<bool>(), 0usize..8).prop_map(|(on_b, task)| Step::Progress { on_b, task }),
        1 => any::<u8>().prop_map(|round| Step::RenameB { round }),
        3 => Just(Step::Sync),
        1 => (1u64..120_000).prop_map(|ms| Step::Wait { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Goal: a listing that copies the JSON kept from earlier listings is byte for byte the JSON
    /// of the task objects as they are now, whatever changed in between: a task's own records
    /// and fields, its dependencies' status (readiness), a member's name, merged changes of
    /// another node, the clock (stale). Method: two nodes make random changes; after every
    /// step, node `a` lists every task and the ready tasks, and each listing is compared with
    /// the task objects built afresh.
    #[test]
    fn cached_listing_is_the_fresh_listing(steps in proptest::collection::vec(step(), 1..40)) {
        let (key_a, key_b) = (node_key(1), node_key(2));
        let agent = AgentName::new("ann").unwrap();
        let (on_a, on_b) = (Speaker { key: &key_a, agent: &agent }, Speaker { key: &key_b, agent: &agent });
        let mut a = Replica::found(&key_a, 1, "laptop", "mesh", NOW_MS).unwrap().replica;
        let named = |name: String| Membership { action: MembershipAction::Add, member: key_b.node_id(), name, roles: vec![] };
        a.change_membership(&key_a, named("desk".to_owned()), NOW_MS).unwrap();
        let doc = QueueDoc::load(Some(&a.doc().save()), &[]).unwrap().0;
        let mut b = Replica::open(key_b.node_id(), 1, doc);
        let mut now = NOW_MS + 1;
        let mut ids: Vec<TaskId> = Vec::new();
        for step in steps {
            now += 1;
            let pick = |task: usize| ids.get(task % ids.len().max(1)).cloned();
            match step {
                Step::Add { on_b: remote, after } => {
                    let after = after.and_then(pick).map(|id| vec![id.to_string()]).unwrap_or_default();
                    let request = AddTask { title: format!("task {}", ids.len()), after, ..AddTask::default() };
                    let (replica, speaker) = if remote { (&mut b, on_b) } else { (&mut a, on_a) };
                    if let Ok(added) = replica.add_task(speaker, &request, now, now) {
                        ids.push(added.task);
                    }
                }
                Step::Claim { on_b: remote, task } => if let Some(id) = pick(task) {
                    let _ = if remote { b.claim(on_b, &id, now) } else { a.claim(on_a, &id, now) };
                },
                Step::Done { on_b: remote, task } => if let Some(id) = pick(task) {
                    let _ = if remote { b.done(on_b, &id, "shipped", now) } else { a.done(on_a, &id, "shipped", now) };
                },
                Step::Fail { on_b: remote, task } => if let Some(id) = pick(task) {
                    let _ = if remote { b.fail(on_b, &id, "flaky", now) } else { a.fail(on_a, &id, "flaky", now) };
                },
                Step::Cancel { task } => if let Some(id) = pick(task) {
                    let _ = a.cancel(on_a, &id, "not needed", now);
                },
                Step::Edit { task, priority, title } => if let Some(id) = pick(task) {
                    let edit = EditTask {
                        priority: Some(priority),
                        title: title.then(|| format!("renamed \"{id}\"")),
                        ..EditTask::default()
                    };
                    let _ = a.edit_task(on_a, &id, &edit, now);
                },
                Step::Progress { on_b: remote, task } => if let Some(id) = pick(task) {
                    let _ = if remote { b.progress(on_b, &id, "half", Some(50), now) } else { a.progress(on_a, &id, "half", Some(50), now) };
                },
                Step::RenameB { round } => {
                    a.change_membership(&key_a, named(format!("desk-{round}")), now).unwrap();
                }
                Step::Sync => {
                    a.apply_changes(&b.doc().save(), now).unwrap();
                    b.apply_changes(&a.doc().save(), now).unwrap();
                }
                Step::Wait { ms } => now += ms,
            }
            let all: Vec<&TaskEntry> = a.tasks().values().collect();
            let ready = a.ready_tasks_at(now);
            for listed in [all, ready] {
                let fresh = serde_json::to_vec(&a.live_task_views_of(listed.iter().copied(), now)).unwrap();
                let written = a.live_task_views_json(&listed, now);
                prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(fresh).unwrap());
            }
        }
    }
}
