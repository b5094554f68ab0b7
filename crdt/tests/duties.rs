//! What a node owes after writes and merges: a claim that lost as it was written is still a
//! change to store, and an agent told it lost is told again when its claim counts after all.
//! Both were found by netsim (docs/TESTING.md) and are pinned here without it.

use meshwork_crdt::inbox::{lost_notice_id, reinstated_notice_id, taken_over_notice_id};
use meshwork_crdt::ops::ClaimOptions;
use meshwork_crdt::resolve::LossReason;
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{OpError, QueueDoc, Replica, Speaker};
use meshwork_protocol::api::AddTask;
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::{AgentId, AgentName, NodeKey, TaskId};

const T0: u64 = 1_800_000_000_000;

/// A mesh of three: `replicas[0]` founded it and added the other two; one task, added by the
/// founder, is on all three.
struct Mesh {
    keys: [NodeKey; 3],
    replicas: Vec<Replica>,
    task: TaskId,
    agent: AgentName,
}

fn mesh_of_three() -> Mesh {
    let keys = [node_key(1), node_key(2), node_key(3)];
    let agent = AgentName::new("agent").unwrap();
    let mut founder = Replica::found(&keys[0], 1, "one", "mesh", T0).unwrap().replica;
    for (offset, (key, name)) in (1..).zip(keys[1..].iter().zip(["two", "three"])) {
        let added =
            Membership { action: MembershipAction::Add, member: key.node_id(), name: name.into(), roles: vec![] };
        founder.change_membership(&keys[0], added, T0 + offset).unwrap();
    }
    let request = AddTask { id: Some("T-1".into()), title: "t".into(), ..AddTask::default() };
    let task = founder.add_task(Speaker { key: &keys[0], agent: &agent }, &request, T0 + 3, 1).unwrap().task;
    let saved = founder.doc().save();
    let mut replicas = vec![founder];
    for key in &keys[1..] {
        replicas.push(Replica::open(key.node_id(), 1, QueueDoc::load(Some(&saved), &[]).unwrap().0));
    }
    Mesh { keys, replicas, task, agent }
}

impl Mesh {
    fn agent_of(&self, node: usize) -> AgentId {
        AgentId { agent: self.agent.clone(), node: self.keys[node].node_id() }
    }

    /// Everything `from` has, merged into `into`.
    fn merge(&mut self, from: usize, into: usize, now_ms: u64) {
        let saved = self.replicas[from].doc().save();
        self.replicas[into].apply_changes(&saved, now_ms).unwrap();
    }

    fn inbox_ids(&self, node: usize) -> Vec<String> {
        self.replicas[node].inbox(&self.agent_of(node)).into_iter().map(|entry| entry.id).collect()
    }
}

/// Regression: a quorum claim that split its generation's vote lost the moment it was written,
/// and the node answered the refusal without storing the change, although the other nodes'
/// view of the split depends on it. The refusal now hands the written change back.
#[test]
fn a_claim_that_loses_as_it_is_written_hands_back_its_change_to_store() {
    let mut mesh = mesh_of_three();
    let quorum = ClaimOptions { quorum: true };
    let task = mesh.task.clone();
    for node in [0, 1] {
        let (speaker, replica) = (Speaker { key: &mesh.keys[node], agent: &mesh.agent }, &mut mesh.replicas[node]);
        replica.claim_with(speaker, &task, quorum, T0 + 100).unwrap();
    }
    mesh.merge(0, 2, T0 + 150);
    mesh.merge(1, 2, T0 + 150);

    let speaker = Speaker { key: &mesh.keys[2], agent: &mesh.agent };
    let refused = mesh.replicas[2].claim_with(speaker, &task, quorum, T0 + 200).unwrap_err();
    let Some(written) = refused.written() else { panic!("the refusal names no written change: {refused:?}") };
    assert!(matches!(refused, OpError::Written { .. }));
    assert_eq!(refused.to_error_body().code.as_str(), "CONFLICT");
    let claim = written.record.expect("the written claim's id");
    let state = &mesh.replicas[2].task(&task).unwrap().state;
    let lost = state.lost_claims.iter().find(|lost| lost.claim == claim).expect("the claim is among the lost");
    assert_eq!(lost.reason, LossReason::QuorumSplit);
    // A local write is a change like a merged one: the duties after it tell the agent.
    let touched = meshwork_crdt::Touched { tasks: [task.clone()].into(), ..Default::default() };
    let duties = mesh.replicas[2].fulfil_duties_after(&mesh.keys[2], &touched, T0 + 200);
    assert_eq!(mesh.inbox_ids(2), [lost_notice_id(&claim)], "{:?}", duties.errors);

    // The founder, which holds both earlier quorum claims, learns of the split from exactly the
    // handed-back change.
    mesh.merge(1, 0, T0 + 250);
    assert_eq!(mesh.replicas[0].task(&task).unwrap().state.lost_claims.len(), 0, "two pending claims");
    mesh.replicas[0].apply_changes(&written.changes, T0 + 250).unwrap();
    let founder_view = &mesh.replicas[0].task(&task).unwrap().state;
    assert!(founder_view.claims.contains_key(&claim), "the handed-back change holds the claim");
    assert_eq!(founder_view.lost_claims.len(), 3, "all three quorum claims lost to the split");
}

/// Regression: an agent whose claim lost was told so; then the winner's signer turned out to
/// have been removed before it claimed, so the agent's claim holds the task after all. The
/// agent was never told. It now gets one `won-CLAIM` notice, and asking again writes nothing.
#[test]
fn an_agent_told_it_lost_is_told_once_when_its_claim_counts_after_all() {
    let mut mesh = mesh_of_three();
    let task = mesh.task.clone();
    for node in [1, 2] {
        let (speaker, replica) = (Speaker { key: &mesh.keys[node], agent: &mesh.agent }, &mut mesh.replicas[node]);
        replica.claim(speaker, &task, T0 + 200).unwrap();
    }
    mesh.merge(1, 2, T0 + 300);
    mesh.merge(2, 1, T0 + 300);
    let holder = mesh.replicas[1].task(&task).unwrap().state.holder.clone().expect("one claim holds");
    let (winner, loser) = if holder.node == mesh.keys[1].node_id() { (1, 2) } else { (2, 1) };
    let lost_claim = mesh.replicas[loser].task(&task).unwrap().state.lost_claims[0].claim;

    let duties = mesh.replicas[loser].fulfil_duties(&mesh.keys[loser], std::slice::from_ref(&task), T0 + 300);
    assert_eq!(duties.notices.len(), 1);
    assert_eq!(mesh.inbox_ids(loser), [lost_notice_id(&lost_claim)]);

    // The founder removed the winner before the winner claimed: its removal, stamped earlier,
    // arrives only now, and the winner's claim stops counting.
    let removed = Membership {
        action: MembershipAction::Remove,
        member: mesh.keys[winner].node_id(),
        name: String::new(),
        roles: vec![],
    };
    let removal = mesh.replicas[0].change_membership(&mesh.keys[0], removed, T0 + 100).unwrap();
    let touched = mesh.replicas[loser].apply_changes(&removal, T0 + 400).unwrap();
    let now_holder = mesh.replicas[loser].task(&task).unwrap().state.holder.clone().expect("the loser holds now");
    assert_eq!(now_holder.claim, lost_claim);

    let duties = mesh.replicas[loser].fulfil_duties_after(&mesh.keys[loser], &touched, T0 + 400);
    assert_eq!(duties.notices.len(), 1, "{:?}", duties.notices);
    assert_eq!(mesh.inbox_ids(loser), [lost_notice_id(&lost_claim), reinstated_notice_id(&lost_claim)]);
    let again = mesh.replicas[loser].fulfil_duties_after(&mesh.keys[loser], &touched, T0 + 500);
    assert!(again.changes.is_empty() && again.notices.is_empty(), "a notice is written once");
}

/// Found by the namespace test of a clock an hour off: a node whose clock runs an hour fast
/// sees every fresh lease as expired and takes it over, and by the records (its claim is
/// stamped after the lease's end) the takeover counts. The holder's agent, still at work, was
/// never told. It now gets one `taken-CLAIM` notice; told again, nothing is written.
#[test]
fn a_holder_whose_lease_a_fast_clock_took_over_is_told_once() {
    let mut mesh = mesh_of_three();
    let task = mesh.task.clone();
    let speaker = Speaker { key: &mesh.keys[1], agent: &mesh.agent };
    let claim = mesh.replicas[1].claim(speaker, &task, T0 + 100).unwrap().record.unwrap();
    mesh.merge(1, 2, T0 + 200);

    let an_hour_fast = T0 + 200 + 3_600_000;
    let speaker = Speaker { key: &mesh.keys[2], agent: &mesh.agent };
    mesh.replicas[2].claim(speaker, &task, an_hour_fast).unwrap();
    mesh.merge(2, 1, T0 + 300);
    let state = &mesh.replicas[1].task(&task).unwrap().state;
    assert_eq!(state.holder.as_ref().map(|holder| holder.node), Some(mesh.keys[2].node_id()));
    assert_eq!(state.taken_over.iter().map(|ended| ended.claim).collect::<Vec<_>>(), [claim]);

    let tasks = std::slice::from_ref(&task);
    let duties = mesh.replicas[1].fulfil_duties(&mesh.keys[1], tasks, T0 + 300);
    assert_eq!(duties.notices.len(), 1);
    assert_eq!(mesh.inbox_ids(1), [taken_over_notice_id(&claim)]);
    let notice = &mesh.replicas[1].inbox(&mesh.agent_of(1))[0].message;
    assert_eq!(notice.subject, "lease on T-1 ran out and was taken over");
    assert!(mesh.replicas[1].fulfil_duties(&mesh.keys[1], tasks, T0 + 400).changes.is_empty(), "told once");
    // The taker's own agent is told nothing.
    mesh.replicas[2].fulfil_duties(&mesh.keys[2], tasks, an_hour_fast);
    assert!(mesh.inbox_ids(2).is_empty());
}
