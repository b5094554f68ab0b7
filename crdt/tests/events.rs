//! The events a change makes (`crdt::events`): derived from the replica's state before and
//! after, so a merge that makes a claim lose says so, a finished dependency makes its
//! dependent ready, and a lease is warned about and declared expired once each.

use meshwork_crdt::events::EventDigest;
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{QueueDoc, Replica, Speaker, Touched};
use meshwork_protocol::api::{AddTask, TaskStatus};
use meshwork_protocol::event::Event;
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::{AgentName, NodeKey, TaskId};

const T0: u64 = 1_800_000_000_000;

/// Two members with the same document: the founder added the other and the tasks.
fn two_nodes(tasks: &[AddTask]) -> ([NodeKey; 2], Vec<Replica>, AgentName) {
    let keys = [node_key(1), node_key(2)];
    let agent = AgentName::new("agent").unwrap();
    let mut founder = Replica::found(&keys[0], 1, "one", "mesh", T0).unwrap().replica;
    let added =
        Membership { action: MembershipAction::Add, member: keys[1].node_id(), name: "two".into(), roles: vec![] };
    founder.change_membership(&keys[0], added, T0 + 1).unwrap();
    for (offset, request) in (2..).zip(tasks) {
        founder.add_task(Speaker { key: &keys[0], agent: &agent }, request, T0 + offset, offset).unwrap();
    }
    let saved = founder.doc().save();
    let other = Replica::open(keys[1].node_id(), 1, QueueDoc::load(Some(&saved), &[]).unwrap().0);
    (keys, vec![founder, other], agent)
}

fn task(id: &str, after: &[&str]) -> AddTask {
    AddTask {
        id: Some(id.into()),
        title: format!("task {id}"),
        after: after.iter().map(|id| (*id).to_owned()).collect(),
        lease_ms: Some(60_000),
        ..AddTask::default()
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

#[test]
fn a_merge_that_makes_a_claim_lose_tells_the_loser_once() {
    // Goal: after concurrent claims, the losing node's digest says `claim_lost` for its
    // agent's claim at the merge, and the next merge of the same records says nothing more.
    let (keys, mut replicas, agent) = two_nodes(&[task("T-1", &[])]);
    let id = TaskId::new("T-1").unwrap();
    let mut digests: Vec<EventDigest> = replicas.iter().map(EventDigest::of).collect();
    for (index, key) in keys.iter().enumerate() {
        replicas[index].claim(Speaker { key, agent: &agent }, &id, T0 + 100).unwrap();
    }
    let own: Vec<Vec<Event>> = (0..2)
        .map(|index| {
            let touched = Touched { tasks: [id.clone()].into(), ..Touched::default() };
            digests[index].advance(&replicas[index], &touched)
        })
        .collect();
    assert_eq!(kinds(&own[0]), ["task_claimed"]);
    assert_eq!(kinds(&own[1]), ["task_claimed"]);

    let saved = [replicas[0].doc().save(), replicas[1].doc().save()];
    let mut merged = Vec::new();
    for (into, from) in [(0, 1), (1, 0)] {
        let touched = replicas[into].apply_changes(&saved[from], T0 + 200).unwrap();
        merged.push(digests[into].advance(&replicas[into], &touched));
    }
    let holder = replicas[0].task(&id).unwrap().state.holder.clone().unwrap();
    let loser = usize::from(holder.node == keys[0].node_id());
    let lost: Vec<&Event> = merged[loser].iter().filter(|event| event.kind() == "claim_lost").collect();
    assert_eq!(lost.len(), 1, "{:?}", merged[loser]);
    let Event::ClaimLost { agent: told, node_id, .. } = lost[0] else { unreachable!() };
    assert_eq!((told.as_deref(), node_id.as_str()), (Some("agent"), keys[loser].node_id().to_string().as_str()));
    assert!(kinds(&merged[loser]).contains(&"task_claimed"), "the winner now holds it: {:?}", merged[loser]);

    let again = replicas[loser].apply_changes(&saved[1 - loser], T0 + 300).unwrap();
    let repeated = digests[loser].advance(&replicas[loser], &again);
    assert!(!kinds(&repeated).contains(&"claim_lost"), "told twice: {repeated:?}");
}

#[test]
fn finishing_a_dependency_makes_its_dependent_ready() {
    // Goal: `task_ready` for a task nobody touched, when the task it waits for is done.
    let (keys, mut replicas, agent) = two_nodes(&[task("A", &[]), task("B", &["A"])]);
    let replica = &mut replicas[0];
    let mut digest = EventDigest::of(replica);
    let a = TaskId::new("A").unwrap();
    let speaker = Speaker { key: &keys[0], agent: &agent };
    let touched = Touched { tasks: [a.clone()].into(), ..Touched::default() };
    replica.claim(speaker, &a, T0 + 100).unwrap();
    assert_eq!(kinds(&digest.advance(replica, &touched)), ["task_claimed"]);
    replica.done(speaker, &a, "ok", T0 + 200).unwrap();
    let events = digest.advance(replica, &touched);
    assert_eq!(
        events,
        [Event::TaskFinished { task: "A".into(), status: TaskStatus::Done }, Event::TaskReady { task: "B".into() }]
    );
}

#[test]
fn a_lease_is_warned_then_declared_expired_once_each() {
    // Goal: lease events come from the clock the node passes, once per lease end; a renewal
    // is warned again at its own time.
    let (keys, mut replicas, agent) = two_nodes(&[task("T-1", &[])]);
    let replica = &mut replicas[0];
    let id = TaskId::new("T-1").unwrap();
    let speaker = Speaker { key: &keys[0], agent: &agent };
    replica.claim(speaker, &id, T0 + 100).unwrap();
    let mut digest = EventDigest::of(replica);
    let lease_until = replica.task(&id).unwrap().state.holder.as_ref().unwrap().lease_until_ms;
    let warn_at = digest.next_lease_event_ms().unwrap();
    assert!(warn_at < lease_until && lease_until - warn_at <= 30_000, "{warn_at} {lease_until}");
    assert!(digest.lease_events(warn_at - 1).is_empty());
    assert_eq!(kinds(&digest.lease_events(warn_at)), ["lease_expiring"]);
    assert!(digest.lease_events(warn_at + 1).is_empty(), "warned once");
    assert_eq!(digest.next_lease_event_ms(), Some(lease_until + 1));

    replica.renew(speaker, &id, warn_at + 10).unwrap();
    digest.advance(replica, &Touched { tasks: [id.clone()].into(), ..Touched::default() });
    let renewed_until = replica.task(&id).unwrap().state.holder.as_ref().unwrap().lease_until_ms;
    assert!(renewed_until > lease_until);
    assert!(digest.lease_events(lease_until + 1).is_empty(), "the renewal moved the lease");
    let expired = digest.lease_events(renewed_until + 1);
    assert_eq!(kinds(&expired), ["lease_expired"]);
    let Event::LeaseExpired { agent: holder, .. } = &expired[0] else { unreachable!() };
    assert_eq!(holder.as_deref(), Some("agent"));
    assert!(digest.lease_events(renewed_until + 60_000).is_empty(), "expired once");
    assert_eq!(digest.next_lease_event_ms(), None);
}
