//! A replica over restarts: its clock and its actor.

use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{QueueDoc, Replica, Speaker};
use meshwork_protocol::api::AddTask;
use meshwork_protocol::{AgentName, TaskId};

const NOW_MS: u64 = 1_800_000_000_000;

/// A node whose wall clock went back an hour still stamps after everything it signed.
#[test]
fn a_reopened_replica_stamps_after_its_newest_record_even_if_the_clock_went_back() {
    let key = node_key(1);
    let agent = AgentName::new("agent").unwrap();
    let speaker = Speaker { key: &key, agent: &agent };
    let mut replica = Replica::found(&key, 1, "n", "m", NOW_MS).unwrap().replica;
    let id = replica.add_task(speaker, &AddTask { title: "t".into(), ..AddTask::default() }, NOW_MS, 1).unwrap().task;
    replica.claim(speaker, &id, NOW_MS + 5_000).unwrap();
    let claimed_at = replica.task(&id).unwrap().state.holder.as_ref().unwrap().claimed_at;

    let mut reopened = Replica::open(key.node_id(), 2, QueueDoc::load(Some(&replica.doc().save()), &[]).unwrap().0);
    let an_hour_earlier = NOW_MS - 3_600_000;
    assert!(reopened.stamp(an_hour_earlier) > claimed_at);
    assert_eq!(
        reopened.task(&TaskId::new(id.as_str()).unwrap()).unwrap().state.holder.as_ref().unwrap().claimed_at,
        claimed_at
    );
}
