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

/// Regression: when two nodes created one task id and a merge brought in the creation that
/// loses Automerge's conflict, no visible value changed, so the task was not read again and
/// the clash went unreported until a restart. Both creators see it right after the merge.
#[test]
fn both_creators_of_one_task_id_see_the_clash_right_after_a_merge() {
    use meshwork_protocol::record::{Membership, MembershipAction};
    let (one, two) = (node_key(1), node_key(2));
    let agent = AgentName::new("agent").unwrap();
    let mut a = Replica::found(&one, 1, "one", "mesh", NOW_MS).unwrap().replica;
    let joined = Membership { action: MembershipAction::Add, member: two.node_id(), name: "two".into(), roles: vec![] };
    a.change_membership(&one, joined, NOW_MS).unwrap();
    let mut b = Replica::open(two.node_id(), 1, QueueDoc::load(Some(&a.doc().save()), &[]).unwrap().0);
    let request = AddTask { id: Some("SAME".into()), title: "t".into(), ..AddTask::default() };
    a.add_task(Speaker { key: &one, agent: &agent }, &request, NOW_MS + 1, 1).unwrap();
    b.add_task(Speaker { key: &two, agent: &agent }, &request, NOW_MS + 1, 1).unwrap();
    let (saved_a, saved_b) = (a.doc().save(), b.doc().save());
    a.apply_changes(&saved_b, NOW_MS + 2).unwrap();
    b.apply_changes(&saved_a, NOW_MS + 2).unwrap();
    let same = TaskId::new("SAME").unwrap();
    for replica in [&a, &b] {
        let fields = &replica.task(&same).unwrap().fields;
        let other = if fields.created_by == one.node_id() { two.node_id() } else { one.node_id() };
        assert_eq!(fields.id_conflicts, vec![other], "as {} sees it", replica.node());
    }
}
