//! Quorum claims (`claim --quorum`) and their acknowledgements: the resolver's vote count
//! on hand-built records, then the node's side (claim, `acks_due`, `acknowledge`) on real
//! replicas of a mesh of three. Invariant 7, quorum claims are exclusive, as examples here
//! and as a property in `invariants.rs`.

use meshwork_crdt::membership::MemberSet;
use meshwork_crdt::ops::{AckDue, ClaimOptions};
use meshwork_crdt::probes::ProbeBook;
use meshwork_crdt::resolve::{LossReason, ResolveContext, StoredRecord, TaskState, resolve};
use meshwork_crdt::task::TaskFields;
use meshwork_crdt::test_support::{ThreeMembers, founding_record, membership_record, node_key, signed, three_members};
use meshwork_crdt::{QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, TaskStatus};
use meshwork_protocol::record::{Claim, Membership, MembershipAction};
use meshwork_protocol::{AgentName, ErrorCode, MeshId, NodeKey, RecordBody, RecordId, SignedRecord, Stamp, TaskId};

const LEASE_MS: u64 = 60_000;

struct World {
    keys: Vec<NodeKey>,
    mesh: MeshId,
    members: MemberSet,
    probes: ProbeBook,
    fields: TaskFields,
}

fn at(wall_ms: u64) -> Stamp {
    Stamp { wall_ms, logical: 0 }
}

/// A mesh of three members (keys 0 to 2) and one task; key 3 is an outsider.
fn world() -> World {
    let ThreeMembers { keys, mesh, members, fields } = three_members("WRK-7", LEASE_MS);
    World { keys, mesh, members, probes: ProbeBook::default(), fields }
}

impl World {
    fn claim(&self, node: usize, generation: u32, lamport: u64, wall_ms: u64, quorum: bool) -> SignedRecord {
        let body = RecordBody::Claim(Claim {
            task: self.fields.id.clone(),
            generation,
            lamport,
            lease_ms: LEASE_MS,
            probe: None,
            quorum,
            // An honest claimer names the task's terms as it sees them.
            requires: Claim::canonical_requirements(&self.fields.requires),
            max_attempts: self.fields.max_attempts,
        });
        signed(&self.keys[node], self.mesh, at(wall_ms), Some("agent"), body)
    }

    fn quorum_claim(&self, node: usize, lamport: u64, wall_ms: u64) -> SignedRecord {
        self.claim(node, 0, lamport, wall_ms, true)
    }

    fn ack(&self, node: usize, claim: &SignedRecord, generation: u32, wall_ms: u64) -> SignedRecord {
        let body = RecordBody::Ack { task: self.fields.id.clone(), claim: claim.id(), generation };
        signed(&self.keys[node], self.mesh, at(wall_ms), None, body)
    }

    fn resolve(&self, records: &[&SignedRecord]) -> TaskState {
        let stored: Vec<StoredRecord> = records.iter().map(|record| StoredRecord::Valid((*record).clone())).collect();
        resolve(&self.fields, &stored, ResolveContext { members: &self.members, probes: &self.probes })
    }
}

fn holder(state: &TaskState) -> Option<RecordId> {
    state.holder.as_ref().map(|holder| holder.claim)
}

fn is_lost(state: &TaskState, claim: &SignedRecord) -> bool {
    state.lost_claims.iter().any(|lost| lost.claim == claim.id())
}

fn tally(state: &TaskState, claim: &SignedRecord) -> (u32, u32) {
    let tally = &state.tallies[&claim.id()];
    (tally.votes, tally.needed)
}

/// In a mesh of three a quorum claim needs two votes: its own and one ack. With its own vote
/// only it is pending: open, not held, and not reported lost.
#[test]
fn a_quorum_claim_in_a_mesh_of_three_counts_with_two_votes_and_is_pending_with_one() {
    let world = world();
    let claim = world.quorum_claim(0, 1, 10_000);
    let pending = world.resolve(&[&claim]);
    assert_eq!((pending.status, holder(&pending)), (TaskStatus::Open, None));
    assert_eq!(tally(&pending, &claim), (1, 2));
    assert!(!is_lost(&pending, &claim));
    assert_eq!(pending.pending_quorum().map(|(id, _)| *id).collect::<Vec<_>>(), vec![claim.id()]);

    let ack = world.ack(1, &claim, 0, 11_000);
    let counted = world.resolve(&[&ack, &claim]);
    assert_eq!((counted.status, holder(&counted)), (TaskStatus::Claimed, Some(claim.id())));
    assert!(counted.holder.as_ref().unwrap().quorum);
    assert_eq!(tally(&counted, &claim), (2, 2));
    assert_eq!(counted.pending_quorum().count(), 0);
}

/// A pending quorum claim is not a lost claim, even beside other pending ones: a loss notice
/// goes out once, and the claim may still count when acknowledgements arrive.
#[test]
fn a_pending_quorum_claim_is_not_in_lost_claims() {
    let world = world();
    let first = world.quorum_claim(0, 1, 10_000);
    let second = world.quorum_claim(1, 2, 10_001);
    let state = world.resolve(&[&first, &second]);
    assert_eq!(state.status, TaskStatus::Open);
    assert!(state.lost_claims.is_empty(), "{:?}", state.lost_claims);
    assert_eq!(state.pending_quorum().count(), 2);
}

/// Invariant 7: a member that acknowledges two quorum claims of one generation counts only
/// for the first (by stamp, then record id), so the two never both count; its later ack is
/// no vote at all, and the first claim holds.
#[test]
fn two_quorum_claims_of_one_generation_never_both_count_even_when_one_signer_acks_both() {
    let world = world();
    let first = world.quorum_claim(0, 1, 10_000);
    let second = world.quorum_claim(1, 1, 10_000);
    let double_vote = [world.ack(2, &first, 0, 11_000), world.ack(2, &second, 0, 12_000)];
    let state = world.resolve(&[&double_vote[1], &second, &double_vote[0], &first]);
    assert_eq!(tally(&state, &first), (2, 2));
    assert_eq!(tally(&state, &second), (1, 2));
    assert_eq!(holder(&state), Some(first.id()));
    let counting = state.tallies.values().filter(|tally| tally.reached()).count();
    assert_eq!(counting, 1);
    // Its generation is decided, so the other claim loses now.
    assert!(state.lost_claims.iter().any(|lost| lost.claim == second.id()
        && matches!(lost.reason, LossReason::LostTo { winner, .. } if winner == world.keys[0].node_id())));
}

/// A quorum claim is its signer's own vote: a member that acknowledged another claim first
/// and then makes its own quorum claim of that generation votes for the other one.
#[test]
fn a_quorum_claim_made_after_acknowledging_another_is_no_vote_for_itself() {
    let world = world();
    let theirs = world.quorum_claim(0, 1, 10_000);
    let ack = world.ack(1, &theirs, 0, 11_000);
    let mine = world.quorum_claim(1, 2, 12_000);
    let state = world.resolve(&[&mine, &ack, &theirs]);
    assert_eq!(tally(&state, &mine), (0, 2));
    assert_eq!(holder(&state), Some(theirs.id()));
}

/// An ack that names no claim of this task of its own generation (or a claim this node does
/// not have) is no vote: it neither counts nor spends the signer's vote.
#[test]
fn an_ack_that_names_no_claim_of_its_generation_is_no_vote() {
    let world = world();
    let quorum = world.quorum_claim(0, 1, 10_000);
    let wrong_generation = world.ack(1, &quorum, 1, 10_500);
    let names_a_claim_not_here = world.ack(1, &world.claim(2, 0, 5, 9_000, false), 0, 10_600);
    let unknown = world.ack(1, &world.quorum_claim(2, 9, 9_999), 0, 10_700);
    let state = world.resolve(&[&quorum, &wrong_generation, &names_a_claim_not_here, &unknown]);
    assert_eq!(tally(&state, &quorum), (1, 2));
    assert_eq!(state.rejected, 0, "ignored acks are kept, not rejected");
    let real = world.ack(1, &quorum, 0, 10_800);
    let counted = world.resolve(&[&quorum, &wrong_generation, &names_a_claim_not_here, &unknown, &real]);
    assert_eq!(holder(&counted), Some(quorum.id()));
}

/// Acks from a node that is not a member are rejected like any of its records.
#[test]
fn acks_from_non_members_do_not_count() {
    let world = world();
    let claim = world.quorum_claim(0, 1, 10_000);
    let outsider = world.ack(3, &claim, 0, 11_000);
    let state = world.resolve(&[&claim, &outsider]);
    assert_eq!((tally(&state, &claim), state.rejected), ((1, 2), 1));
    assert_eq!(state.status, TaskStatus::Open);
}

/// A plain claim wins its generation at once; a quorum claim of that generation still
/// waiting for votes loses to it, since honest members no longer acknowledge it.
#[test]
fn a_pending_quorum_claim_loses_once_its_generation_is_decided() {
    let world = world();
    let quorum = world.quorum_claim(0, 1, 10_000);
    let plain = world.claim(1, 0, 2, 10_500, false);
    let state = world.resolve(&[&quorum, &plain]);
    assert_eq!(holder(&state), Some(plain.id()));
    assert!(state.lost_claims.iter().any(|lost| lost.claim == quorum.id()
        && matches!(lost.reason, LossReason::LostTo { winner, .. } if winner == world.keys[1].node_id())));
    assert_eq!(state.pending_quorum().count(), 0, "a claim that lost waits for nothing");
    assert_eq!(tally(&state, &quorum), (1, 2), "its tally stays, without its majority");
}

/// Three members each vote for their own quorum claim: none can reach a majority, so the
/// generation ends without a holder (no attempt, no failure) and the next one opens.
#[test]
fn a_split_vote_ends_the_generation_and_opens_the_next() {
    let world = world();
    let claims = [world.quorum_claim(0, 1, 10_000), world.quorum_claim(1, 1, 10_000), world.quorum_claim(2, 1, 10_000)];
    let two_of_three = world.resolve(&[&claims[0], &claims[1]]);
    assert_eq!((two_of_three.generation, two_of_three.lost_claims.len()), (0, 0), "the third member may still decide");
    let state = world.resolve(&claims.iter().collect::<Vec<_>>());
    assert_eq!((state.status, state.generation, state.attempts, state.failures), (TaskStatus::Open, 1, 0, 0));
    assert!(state.lost_claims.iter().all(|lost| lost.reason == LossReason::QuorumSplit));
    assert_eq!(state.lost_claims.len(), 3);
    let next = world.claim(0, 1, 2, 11_000, true);
    let ack = world.ack(1, &next, 1, 11_500);
    let decided = world.resolve(&[&claims[0], &claims[1], &claims[2], &next, &ack]);
    assert_eq!((decided.generation, holder(&decided)), (1, Some(next.id())));
}

/// A quorum claim taking over an expired lease counts once acknowledged, and ends the
/// previous tenure like any takeover.
#[test]
fn a_quorum_takeover_of_an_expired_lease_counts_with_a_majority() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000, false);
    let takeover = world.claim(1, 1, 2, 10_000 + LEASE_MS + 1, true);
    let waiting = world.resolve(&[&first, &takeover]);
    assert_eq!(holder(&waiting), Some(first.id()), "a pending takeover ends nothing");
    assert!(!is_lost(&waiting, &takeover));
    let ack = world.ack(2, &takeover, 1, 10_000 + LEASE_MS + 5);
    let state = world.resolve(&[&first, &takeover, &ack]);
    assert_eq!((state.generation, holder(&state), state.failures), (1, Some(takeover.id()), 1));
}

/// A quorum claim still pending when the task is done can never hold it: it loses then.
#[test]
fn a_pending_quorum_claim_loses_when_the_task_is_finished() {
    let world = world();
    let plain = world.claim(1, 0, 1, 10_000, false);
    let on_plain = |wall_ms, body: fn(TaskId, RecordId) -> RecordBody| {
        signed(&world.keys[1], world.mesh, at(wall_ms), Some("agent"), body(world.fields.id.clone(), plain.id()))
    };
    let release = on_plain(11_000, |task, claim| RecordBody::Release { task, claim, reason: "later".into() });
    let waiting = world.claim(0, 1, 2, 12_000, true);
    let open = world.resolve(&[&plain, &release, &waiting]);
    assert_eq!((open.generation, open.pending_quorum().count()), (1, 1));
    // A done counts whatever its stamp, even after a release.
    let done = on_plain(13_000, |task, claim| RecordBody::Done { task, claim, summary: "ok".into() });
    let state = world.resolve(&[&plain, &release, &waiting, &done]);
    assert_eq!(state.status, TaskStatus::Done);
    assert!(state.lost_claims.iter().any(|lost| lost.claim == waiting.id() && lost.reason == LossReason::TaskClosed));
}

// The node's side, on replicas of one document.

const NOW_MS: u64 = 1_800_000_000_000;

struct Mesh {
    keys: Vec<NodeKey>,
    replicas: Vec<Replica>,
    task: TaskId,
}

/// A mesh of `size` members with one task, and a replica of it on every node.
fn mesh(size: usize) -> Mesh {
    let keys: Vec<NodeKey> = (1..=size as u8).map(node_key).collect();
    let mut founded = Replica::found(&keys[0], 0, "n0", "mesh", NOW_MS).unwrap().replica;
    for (index, key) in keys.iter().enumerate().skip(1) {
        let membership = Membership {
            action: MembershipAction::Add,
            member: key.node_id(),
            name: format!("n{index}"),
            roles: vec![],
        };
        founded.change_membership(&keys[0], membership, NOW_MS + 1).unwrap();
    }
    let agent = AgentName::new("setup").unwrap();
    let request = AddTask { id: Some("WRK-1".into()), title: "t".into(), ..AddTask::default() };
    let task = founded.add_task(Speaker { key: &keys[0], agent: &agent }, &request, NOW_MS + 2, 0).unwrap().task;
    let base = founded.doc().save();
    let replicas =
        keys.iter().map(|key| Replica::open(key.node_id(), 1, QueueDoc::load(Some(&base), &[]).unwrap().0)).collect();
    Mesh { keys, replicas, task }
}

impl Mesh {
    fn quorum_claim(&mut self, node: usize, now_ms: u64) -> Result<RecordId, meshwork_crdt::OpError> {
        let agent = AgentName::new("agent").unwrap();
        let speaker = Speaker { key: &self.keys[node], agent: &agent };
        let applied = self.replicas[node].claim_with(speaker, &self.task, ClaimOptions { quorum: true }, now_ms)?;
        Ok(applied.record.expect("a claim names its record"))
    }

    fn acknowledge(&mut self, node: usize, due: &[AckDue], now_ms: u64) -> Option<Vec<u8>> {
        self.replicas[node].acknowledge(&self.keys[node], due, now_ms).unwrap()
    }

    /// Delivers everything `from` holds to `to`.
    fn merge(&mut self, from: usize, to: usize, now_ms: u64) {
        let saved = self.replicas[from].doc().save();
        self.replicas[to].apply_changes(&saved, now_ms).unwrap();
    }

    fn state(&self, node: usize) -> &TaskState {
        &self.replicas[node].task(&self.task).unwrap().state
    }
}

/// A quorum claim in a mesh of one is its own majority and holds at once.
#[test]
fn a_quorum_claim_in_a_mesh_of_one_holds_at_once() {
    let mut mesh = mesh(1);
    let claim = mesh.quorum_claim(0, NOW_MS + 10).unwrap();
    assert_eq!(holder(mesh.state(0)), Some(claim));
}

/// `acks_due` proposes one ack per task and generation (the first pending claim in the winner
/// order), nothing on the claimer's own node, and nothing once this node voted.
#[test]
fn acks_due_proposes_one_ack_per_task_and_generation_and_none_after_voting() {
    let mut mesh = mesh(3);
    let first = mesh.quorum_claim(0, NOW_MS + 10).unwrap();
    assert_eq!(mesh.state(0).status, TaskStatus::Open, "pending, not held");
    assert!(mesh.replicas[0].acks_due([&mesh.task]).is_empty(), "a claim is its own node's vote");
    mesh.merge(0, 1, NOW_MS + 11);
    let second = mesh.quorum_claim(1, NOW_MS + 12).unwrap();
    mesh.merge(0, 2, NOW_MS + 13);
    mesh.merge(1, 2, NOW_MS + 13);
    let due = mesh.replicas[2].acks_due([&mesh.task, &mesh.task]);
    // The first claim has the lower Lamport number, so it comes first in the winner order.
    assert_eq!(due, vec![AckDue { task: mesh.task.clone(), claim: first, generation: 0 }]);
    assert_ne!(first, second);
    assert!(mesh.acknowledge(2, &due, NOW_MS + 14).is_some());
    assert!(mesh.replicas[2].acks_due([&mesh.task]).is_empty());
    assert_eq!(mesh.acknowledge(2, &due, NOW_MS + 15), None, "a stale list is no second vote");
    assert_eq!(holder(mesh.state(2)), Some(first));
}

/// The acks one node writes make the claim count on the claimer's replica after a merge.
#[test]
fn acknowledge_writes_records_that_make_the_claim_count_on_another_replica_after_merge() {
    let mut mesh = mesh(3);
    let claim = mesh.quorum_claim(0, NOW_MS + 10).unwrap();
    mesh.merge(0, 1, NOW_MS + 11);
    let due = mesh.replicas[1].acks_due([&mesh.task]);
    assert!(mesh.acknowledge(1, &due, NOW_MS + 12).is_some());
    assert_eq!(mesh.state(0).tallies[&claim].votes, 1);
    mesh.merge(1, 0, NOW_MS + 13);
    let state = mesh.state(0);
    assert_eq!((state.tallies[&claim].votes, state.tallies[&claim].needed), (2, 2));
    assert_eq!(holder(state), Some(claim));
}

/// A node that acknowledged one quorum claim refuses its own quorum claim of that
/// generation with a retryable conflict; its agent asking again for its own pending claim
/// changes nothing.
#[test]
fn a_node_that_voted_refuses_its_own_quorum_claim_of_that_generation() {
    let mut mesh = mesh(5);
    let first = mesh.quorum_claim(0, NOW_MS + 10).unwrap();
    assert_eq!(mesh.quorum_claim(0, NOW_MS + 11).unwrap(), first, "a retried quorum claim is the same claim");
    mesh.merge(0, 1, NOW_MS + 12);
    let due = mesh.replicas[1].acks_due([&mesh.task]);
    assert!(mesh.acknowledge(1, &due, NOW_MS + 13).is_some());
    assert_eq!(mesh.state(1).status, TaskStatus::Open, "two of five votes");
    let refused = mesh.quorum_claim(1, NOW_MS + 14).unwrap_err().to_error_body();
    assert_eq!(refused.code, ErrorCode::Conflict);
    assert!(refused.retryable, "{refused:?}");
}

/// A plain claim is no vote: a member that claimed without `--quorum` and then acknowledged
/// another's quorum claim of the same generation gives that claim its vote.
#[test]
fn a_plain_claim_is_no_vote_and_leaves_its_signer_free_to_acknowledge() {
    let world = world();
    let plain = world.claim(1, 0, 5, 9_000, false);
    let quorum = world.quorum_claim(0, 1, 10_000);
    let ack = world.ack(1, &quorum, 0, 11_000);
    let state = world.resolve(&[&plain, &quorum, &ack]);
    assert_eq!(tally(&state, &quorum), (2, 2), "member 1's ack counts although its plain claim came first");
    assert!(!state.tallies.contains_key(&plain.id()), "a plain claim has no tally");
}

/// A member's first vote is its earliest by stamp, whatever the order of record ids: of two
/// acks naming two quorum claims of one generation, the earlier one counts, either way round.
#[test]
fn a_members_first_vote_is_its_earliest_by_stamp() {
    let world = world();
    let (x, y) = (world.quorum_claim(0, 1, 10_000), world.quorum_claim(2, 2, 10_000));
    let mut later_ack_first_by_id = false;
    for offset in 0..8 {
        for (x_at, y_at) in [(11_000 + offset, 12_000), (12_000 + offset, 11_000)] {
            let (ack_x, ack_y) = (world.ack(1, &x, 0, x_at), world.ack(1, &y, 0, y_at));
            let ((first, first_ack), (second, second_ack)) =
                if x_at < y_at { ((&x, &ack_x), (&y, &ack_y)) } else { ((&y, &ack_y), (&x, &ack_x)) };
            later_ack_first_by_id |= second_ack.id() < first_ack.id();
            let state = world.resolve(&[&x, &y, &ack_x, &ack_y]);
            assert_eq!(tally(&state, first), (2, 2), "the earlier ack is member 1's vote");
            assert_eq!(tally(&state, second).0, 1, "the later ack counts for nothing");
            assert_eq!(holder(&state), Some(first.id()));
        }
    }
    assert!(later_ack_first_by_id, "some round had the later ack first in record id order");
}

/// Out of attempts, a split vote opens no further generation: the quorum claims of the
/// generation after the last failure are closed and the task stays failed there.
#[test]
fn out_of_attempts_a_split_vote_opens_no_generation() {
    let mut world = world();
    world.fields.max_attempts = 1;
    let first = world.claim(0, 0, 1, 10_000, false);
    let failed = {
        let body = RecordBody::Fail { task: world.fields.id.clone(), claim: first.id(), reason: "broke".into() };
        signed(&world.keys[0], world.mesh, at(11_000), Some("agent"), body)
    };
    let split: Vec<SignedRecord> = (0..3).map(|node| world.claim(node, 1, 2, 12_000, true)).collect();
    let records: Vec<&SignedRecord> = [&first, &failed].into_iter().chain(&split).collect();
    let state = world.resolve(&records);
    assert_eq!((state.status, state.generation, state.failures), (TaskStatus::Failed, 1, 1));
    assert!(split.iter().all(|claim| {
        state.lost_claims.iter().any(|lost| lost.claim == claim.id() && lost.reason == LossReason::TaskClosed)
    }));
}

/// A split vote on the next generation among claims stamped after the holder's lease ran
/// out ends that lease like a takeover would: the generation counts a failure, the split one
/// opens none, and the task is open for the one after. Claims stamped at the lease's last
/// millisecond are no evidence: the holder keeps the task.
#[test]
fn a_split_vote_after_the_lease_ran_out_takes_the_task_over() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000, false);
    let lease_until = 10_000 + LEASE_MS;
    let split_at =
        |wall_ms: u64| -> Vec<SignedRecord> { (0..3).map(|node| world.claim(node, 1, 2, wall_ms, true)).collect() };
    let after = split_at(lease_until + 1);
    let records: Vec<&SignedRecord> = std::iter::once(&first).chain(&after).collect();
    let state = world.resolve(&records);
    assert_eq!((state.status, holder(&state)), (TaskStatus::Open, None));
    assert_eq!((state.generation, state.failures), (2, 1), "generation 0 taken over, 1 split");
    assert!(
        state.lost_claims.iter().filter(|lost| lost.generation == 1).all(|lost| lost.reason == LossReason::QuorumSplit)
    );

    let at_the_end = split_at(lease_until);
    let records: Vec<&SignedRecord> = std::iter::once(&first).chain(&at_the_end).collect();
    let state = world.resolve(&records);
    assert_eq!((state.status, holder(&state), state.generation), (TaskStatus::Claimed, Some(first.id()), 0));
}

// Confirmation of plain claims (issue 11): a majority of votes confirms any claim, and a
// confirmed claim wins its generation.

/// A plain claim that a majority voted for (its own node, asking after the settle time, and
/// one other member acknowledging it) is confirmed: it wins its generation over a claim first
/// in the winner order, and that claim loses. With one vote it is not, and the order decides.
#[test]
fn a_confirmed_claim_wins_its_generation_over_a_claim_first_in_the_winner_order() {
    let world = world();
    let confirmed = world.claim(0, 0, 7, 10_000, false);
    let first_in_order = world.claim(2, 0, 1, 10_000, false);
    let own_vote = world.ack(0, &confirmed, 0, 10_050);
    let other_vote = world.ack(1, &confirmed, 0, 10_010);
    let one_vote = world.resolve(&[&confirmed, &own_vote, &first_in_order]);
    assert!(!one_vote.is_confirmed(&confirmed.id()));
    assert_eq!(holder(&one_vote), Some(first_in_order.id()));
    let state = world.resolve(&[&confirmed, &own_vote, &other_vote, &first_in_order]);
    assert!(state.is_confirmed(&confirmed.id()));
    assert_eq!(tally(&state, &confirmed), (2, 2));
    assert_eq!(holder(&state), Some(confirmed.id()));
    assert!(is_lost(&state, &first_in_order));
    assert!(!state.holder.as_ref().unwrap().quorum, "a confirmed plain claim is no quorum claim");
}

/// A claim's majority is of the members at its stamp: one confirmed by two of three stays
/// confirmed when a fourth member joins later, while a claim made after the join needs three.
#[test]
fn a_member_added_after_a_claim_leaves_it_confirmed() {
    let mut world = world();
    let (mesh, founding) = founding_record(&world.keys[0], 1_000);
    assert_eq!(mesh, world.mesh);
    let mut membership = vec![founding];
    for key in &world.keys[1..3] {
        membership.push(membership_record(&world.keys[0], mesh, 2_000, MembershipAction::Add, key));
    }
    membership.push(membership_record(&world.keys[0], mesh, 20_000, MembershipAction::Add, &world.keys[3]));
    world.members = MemberSet::derive(mesh, &membership);
    let before_join = world.claim(0, 0, 1, 10_000, false);
    let votes = [world.ack(0, &before_join, 0, 10_050), world.ack(1, &before_join, 0, 10_060)];
    let state = world.resolve(&[&before_join, &votes[0], &votes[1]]);
    assert_eq!(tally(&state, &before_join), (2, 2));
    assert!(state.is_confirmed(&before_join.id()));
    let after_join = world.claim(1, 0, 1, 30_000, true);
    let state = world.resolve(&[&after_join, &world.ack(2, &after_join, 0, 30_010)]);
    assert_eq!(tally(&state, &after_join), (2, 3));
    assert_eq!(holder(&state), None);
}

/// A takeover a majority confirmed ends the tenure before it, though the holder renewed in
/// time where that majority could not see: the holder is taken over and the confirmed claim
/// holds. Unconfirmed, the same takeover came too early and lost.
#[test]
fn a_confirmed_takeover_ends_a_lease_renewed_out_of_sight() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000, false);
    let renew = RecordBody::Renew { task: world.fields.id.clone(), claim: first.id() };
    let renewal = signed(&world.keys[0], world.mesh, at(10_000 + LEASE_MS - 5), Some("agent"), renew);
    let takeover = world.claim(1, 1, 2, 10_000 + LEASE_MS + 10, false);
    let votes =
        [world.ack(1, &takeover, 1, 10_000 + LEASE_MS + 20), world.ack(2, &takeover, 1, 10_000 + LEASE_MS + 30)];
    let unconfirmed = world.resolve(&[&first, &renewal, &takeover]);
    assert_eq!(holder(&unconfirmed), Some(first.id()));
    assert!(is_lost(&unconfirmed, &takeover));
    let state = world.resolve(&[&first, &renewal, &takeover, &votes[0], &votes[1]]);
    assert_eq!(holder(&state), Some(takeover.id()));
    assert!(!is_lost(&state, &takeover));
    assert!(state.taken_over.iter().any(|taken| taken.claim == first.id()));
}

/// A node votes for another node's claim that holds in its view as soon as it merges it,
/// but for its own only when asked (after the settle time).
#[test]
fn a_node_votes_for_its_own_claim_only_when_asked() {
    let mut mesh = mesh(3);
    let agent = AgentName::new("agent").unwrap();
    let claim = mesh.replicas[0]
        .claim(Speaker { key: &mesh.keys[0], agent: &agent }, &mesh.task.clone(), NOW_MS + 10)
        .unwrap()
        .record
        .unwrap();
    let task = mesh.task.clone();
    assert!(mesh.replicas[0].acks_due([&task]).is_empty());
    mesh.merge(0, 1, NOW_MS + 11);
    assert_eq!(mesh.replicas[1].acks_due([&task]), vec![AckDue { task: task.clone(), claim, generation: 0 }]);
    let asked = mesh.replicas[0].ask_confirmation(&mesh.keys[0], &task, claim, NOW_MS + 20).unwrap();
    assert!(asked.is_some());
    assert_eq!(mesh.state(0).tallies[&claim].votes, 1);
    assert!(mesh.replicas[0].ask_confirmation(&mesh.keys[0], &task, claim, NOW_MS + 21).unwrap().is_none());
}

/// Three nodes claim one task at once. Each votes, once it merged the others' claims, for the
/// one that holds in its view, and its own only when asked after the settle time: exactly one
/// claim is confirmed, it holds on every node, and the two others lost.
#[test]
fn concurrent_claims_on_three_nodes_confirm_exactly_one() {
    let mut mesh = mesh(3);
    let task = mesh.task.clone();
    let agent = AgentName::new("agent").unwrap();
    let claims: Vec<RecordId> = (0..3)
        .map(|node| {
            let speaker = Speaker { key: &mesh.keys[node], agent: &agent };
            mesh.replicas[node].claim(speaker, &task, NOW_MS + 10).unwrap().record.unwrap()
        })
        .collect();
    let merge_all = |mesh: &mut Mesh, now_ms: u64| {
        for (from, to) in [(0, 1), (1, 2), (2, 0), (0, 1)] {
            mesh.merge(from, to, now_ms);
        }
    };
    merge_all(&mut mesh, NOW_MS + 11);
    for node in 0..3 {
        let due = mesh.replicas[node].acks_due([&task]);
        mesh.acknowledge(node, &due, NOW_MS + 12);
    }
    for (node, claim) in claims.iter().enumerate() {
        mesh.replicas[node].ask_confirmation(&mesh.keys[node], &task, *claim, NOW_MS + 20).unwrap();
    }
    merge_all(&mut mesh, NOW_MS + 21);
    let confirmed: Vec<RecordId> = claims.iter().copied().filter(|claim| mesh.state(0).is_confirmed(claim)).collect();
    assert_eq!(confirmed.len(), 1, "{:?}", mesh.state(0).tallies);
    for node in 0..3 {
        let state = mesh.state(node);
        assert_eq!(state.holder.as_ref().map(|holder| holder.claim), Some(confirmed[0]));
        assert_eq!(state.lost_claims.len(), 2);
    }
}
