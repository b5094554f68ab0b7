//! The winner rule, step by step, on hand-built records: each test names the rule it pins.

use meshwork_crdt::membership::MemberSet;
use meshwork_crdt::probes::ProbeBook;
use meshwork_crdt::resolve::{LossReason, ResolveContext, StoredRecord, TaskState, rendezvous, resolve};
use meshwork_crdt::task::TaskFields;
use meshwork_crdt::test_support::{ThreeMembers, founding_record, membership_record, signed, three_members};
use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::record::{Claim, MembershipAction};
use meshwork_protocol::{MeshId, NodeKey, RecordBody, RecordId, SignedRecord, Stamp, TaskId};

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

fn world() -> World {
    let ThreeMembers { keys, mesh, members, fields } = three_members("WRK-1", LEASE_MS);
    World { keys, mesh, members, probes: ProbeBook::default(), fields }
}

impl World {
    fn claim(&self, node: usize, generation: u32, lamport: u64, wall_ms: u64) -> SignedRecord {
        let body = RecordBody::Claim(Claim {
            task: self.fields.id.clone(),
            generation,
            lamport,
            lease_ms: LEASE_MS,
            probe: None,
            quorum: false,
            // An honest claimer names the task's terms as it sees them.
            requires: Claim::canonical_requirements(&self.fields.requires),
            max_attempts: self.fields.max_attempts,
        });
        signed(&self.keys[node], self.mesh, at(wall_ms), Some("agent"), body)
    }

    fn follow_up(
        &self,
        node: usize,
        wall_ms: u64,
        make: impl FnOnce(TaskId, RecordId) -> RecordBody,
        claim: &SignedRecord,
    ) -> SignedRecord {
        signed(&self.keys[node], self.mesh, at(wall_ms), Some("agent"), make(self.fields.id.clone(), claim.id()))
    }

    fn resolve(&self, records: &[&SignedRecord]) -> TaskState {
        let stored: Vec<StoredRecord> = records.iter().map(|record| StoredRecord::Valid((*record).clone())).collect();
        resolve(&self.fields, &stored, ResolveContext { members: &self.members, probes: &self.probes })
    }

    fn holder_node(&self, state: &TaskState) -> Option<usize> {
        let holder = state.holder.as_ref()?;
        self.keys.iter().position(|key| key.node_id() == holder.node)
    }
}

/// Step 1: within one generation the lowest Lamport number wins, whatever the stamps.
#[test]
fn lowest_lamport_wins_within_a_generation() {
    let world = world();
    let early_but_higher = world.claim(0, 0, 2, 4_000);
    let late_but_lower = world.claim(1, 0, 1, 9_000);
    let state = world.resolve(&[&early_but_higher, &late_but_lower]);
    assert_eq!(state.status, TaskStatus::Claimed);
    assert_eq!(world.holder_node(&state), Some(1));
    assert_eq!(state.lost_claims.len(), 1);
    assert!(matches!(state.lost_claims[0].reason, LossReason::LostTo { .. }));
}

/// Step 2: equal Lamport numbers fall to the lower rendezvous hash of (task, node key).
#[test]
fn equal_lamport_falls_to_the_rendezvous_hash() {
    let world = world();
    let claims = [world.claim(0, 0, 1, 4_000), world.claim(1, 0, 1, 4_000), world.claim(2, 0, 1, 4_000)];
    let state = world.resolve(&claims.iter().collect::<Vec<_>>());
    let expected = (0..3).min_by_key(|index| rendezvous(&world.fields.id, &world.keys[*index].node_id())).unwrap();
    assert_eq!(world.holder_node(&state), Some(expected));
    assert_eq!(state.lost_claims.len(), 2);
}

/// Rendezvous spreads wins: over many tasks, each of three nodes wins some.
#[test]
fn rendezvous_hash_spreads_wins_across_nodes() {
    let world = world();
    let mut wins = [0u32; 3];
    for index in 0..300 {
        let task = TaskId::new(&format!("T-{index}")).unwrap();
        let winner = (0..3).min_by_key(|node| rendezvous(&task, &world.keys[*node].node_id())).unwrap();
        wins[winner] += 1;
    }
    assert!(wins.iter().all(|count| *count > 60), "{wins:?}");
}

/// Steps 3 and 4: two claims by one node with equal Lamport numbers tie on the hash and the
/// node id, and fall to the lower record id.
#[test]
fn same_node_same_lamport_falls_to_the_record_id() {
    let world = world();
    let first = world.claim(0, 0, 1, 4_000);
    let second = world.claim(0, 0, 1, 4_001);
    let state = world.resolve(&[&first, &second]);
    let expected = first.id().min(second.id());
    assert_eq!(state.holder.as_ref().map(|holder| holder.claim), Some(expected));
}

/// A takeover of generation 1 counts once generation 0's lease expired before its stamp.
#[test]
fn takeover_after_lease_expiry_starts_the_next_generation() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000);
    let takeover = world.claim(1, 1, 2, 10_000 + LEASE_MS + 1);
    let state = world.resolve(&[&first, &takeover]);
    assert_eq!(state.generation, 1);
    assert_eq!(world.holder_node(&state), Some(1));
    assert_eq!(state.attempts, 2);
    assert_eq!(state.failures, 1);
    let taken: Vec<(RecordId, u32, u64)> =
        state.taken_over.iter().map(|ended| (ended.claim, ended.generation, ended.lease_until_ms)).collect();
    assert_eq!(taken, [(first.id(), 0, 10_000 + LEASE_MS)], "the displaced holder is named, to be told");
}

/// A tenure its holder closed (release or fail) was not taken over: nobody needs telling.
#[test]
fn a_released_or_failed_tenure_is_not_listed_as_taken_over() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000);
    let release =
        world.follow_up(0, 11_000, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, &first);
    let next = world.claim(1, 1, 2, 10_000 + LEASE_MS + 1);
    let state = world.resolve(&[&first, &release, &next]);
    assert_eq!(world.holder_node(&state), Some(1));
    assert!(state.taken_over.is_empty(), "{:?}", state.taken_over);
}

/// A holder whose renewal was signed in time keeps the task even if the renewal arrives
/// after a takeover attempt; the taker learns it lost.
/// Found by netsim (seed 8): a node whose clock is a few ms behind merges a failure and
/// claims at once; its hybrid clock stamps the claim in the failure's millisecond with a
/// higher logical count, which is after the failure and must open the next generation.
#[test]
fn a_claim_stamped_in_the_failures_millisecond_but_after_it_takes_the_next_generation() {
    let world = world();
    let first = world.claim(0, 0, 1, 4_000);
    let fail =
        world.follow_up(0, 5_000, |task, claim| RecordBody::Fail { task, claim, reason: "broke".to_owned() }, &first);
    let body = RecordBody::Claim(Claim {
        task: world.fields.id.clone(),
        generation: 1,
        lamport: 2,
        lease_ms: LEASE_MS,
        probe: None,
        quorum: false,
        requires: Vec::new(),
        max_attempts: world.fields.max_attempts,
    });
    let after = signed(&world.keys[1], world.mesh, Stamp { wall_ms: 5_000, logical: 1 }, Some("agent"), body);
    let state = world.resolve(&[&first, &fail, &after]);
    assert_eq!(state.generation, 1);
    assert_eq!(world.holder_node(&state), Some(1), "lost: {:?}", state.lost_claims);
}

#[test]
fn a_timely_renewal_beats_an_early_takeover() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000);
    let renew = world.follow_up(0, 10_000 + LEASE_MS - 5, |task, claim| RecordBody::Renew { task, claim }, &first);
    let takeover = world.claim(1, 1, 2, 10_000 + LEASE_MS + 1);
    let state = world.resolve(&[&takeover, &first, &renew]);
    assert_eq!(world.holder_node(&state), Some(0));
    assert_eq!(state.generation, 0);
    assert!(
        state.lost_claims.iter().any(|lost| lost.claim == takeover.id() && lost.reason == LossReason::EarlyTakeover)
    );
}

/// A renewal signed after the lease expired does not revive it.
#[test]
fn a_late_renewal_does_not_revive_an_expired_lease() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000);
    let late_renew =
        world.follow_up(0, 10_000 + LEASE_MS + 10, |task, claim| RecordBody::Renew { task, claim }, &first);
    let takeover = world.claim(1, 1, 2, 10_000 + LEASE_MS + 1);
    let state = world.resolve(&[&first, &late_renew, &takeover]);
    assert_eq!(world.holder_node(&state), Some(1));
}

/// Release opens the next generation without counting a failure; fail counts one, and at
/// max_attempts the task fails for good.
#[test]
fn failures_count_toward_max_attempts_and_releases_do_not() {
    let mut world = world();
    world.fields.max_attempts = 2;
    let claim0 = world.claim(0, 0, 1, 10_000);
    let release =
        world.follow_up(0, 11_000, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, &claim0);
    let claim1 = world.claim(1, 1, 2, 12_000);
    let fail1 =
        world.follow_up(1, 13_000, |task, claim| RecordBody::Fail { task, claim, reason: "broke".into() }, &claim1);
    let claim2 = world.claim(2, 2, 3, 14_000);
    let fail2 = world.follow_up(
        2,
        15_000,
        |task, claim| RecordBody::Fail { task, claim, reason: "broke again".into() },
        &claim2,
    );
    let open = world.resolve(&[&claim0, &release, &claim1, &fail1]);
    assert_eq!((open.status, open.generation, open.failures), (TaskStatus::Open, 2, 1));
    let failed = world.resolve(&[&claim0, &release, &claim1, &fail1, &claim2, &fail2]);
    assert_eq!((failed.status, failed.failures, failed.attempts), (TaskStatus::Failed, 2, 3));
    assert_eq!(failed.failure.map(|failure| failure.value), Some("broke again".to_owned()));
    // Out of attempts, a claim of the next generation is closed: it never holds the task.
    let too_late = world.claim(0, 3, 4, 16_000);
    let closed = world.resolve(&[&claim0, &release, &claim1, &fail1, &claim2, &fail2, &too_late]);
    assert_eq!((closed.status, world.holder_node(&closed)), (TaskStatus::Failed, None));
    assert!(closed.lost_claims.iter().any(|lost| lost.claim == too_late.id() && lost.reason == LossReason::TaskClosed));
}

/// A done record makes the task done for good; later claims lose and a cancel changes nothing.
#[test]
fn finished_stays_finished_whatever_arrives_later() {
    let world = world();
    let claim = world.claim(0, 0, 1, 10_000);
    let done =
        world.follow_up(0, 11_000, |task, claim| RecordBody::Done { task, claim, summary: "shipped".into() }, &claim);
    let late_claim = world.claim(1, 1, 2, 10_000 + 2 * LEASE_MS);
    let cancel = signed(
        &world.keys[2],
        world.mesh,
        at(20_000),
        None,
        RecordBody::Cancel { task: world.fields.id.clone(), reason: "no".into() },
    );
    let state = world.resolve(&[&claim, &done, &late_claim, &cancel]);
    assert_eq!(state.status, TaskStatus::Done);
    assert_eq!(state.result.map(|result| result.value), Some("shipped".to_owned()));
    assert!(state.holder.is_none());
}

/// A loser's done is kept beside the winner's accepted result.
#[test]
fn the_winners_result_is_accepted_and_the_losers_kept() {
    let world = world();
    let winner = world.claim(0, 0, 1, 10_000);
    let loser = world.claim(1, 0, 2, 10_000);
    let loser_done =
        world.follow_up(1, 11_000, |task, claim| RecordBody::Done { task, claim, summary: "mine".into() }, &loser);
    let winner_done =
        world.follow_up(0, 12_000, |task, claim| RecordBody::Done { task, claim, summary: "ours".into() }, &winner);
    let state = world.resolve(&[&loser_done, &winner, &loser, &winner_done]);
    assert_eq!(state.result.map(|result| result.value), Some("ours".to_owned()));
    assert_eq!(state.other_results.len(), 1);
    assert_eq!(state.lost_claims.len(), 1);
}

/// A record whose signature does not verify is ignored and counted.
#[test]
fn a_forged_signature_is_ignored_and_counted() {
    let world = world();
    let honest = world.claim(1, 0, 2, 10_000);
    let mut forged_bytes = world.claim(0, 0, 1, 10_000).bytes().to_vec();
    let last = forged_bytes.len() - 1;
    forged_bytes[last] ^= 0xff;
    assert!(SignedRecord::decode(&forged_bytes).is_err());
    let stored = vec![StoredRecord::Invalid, StoredRecord::Valid(honest.clone())];
    let state = resolve(&world.fields, &stored, ResolveContext { members: &world.members, probes: &world.probes });
    assert_eq!(state.holder.map(|holder| holder.claim), Some(honest.id()));
    assert_eq!(state.rejected, 1);
}

/// A validly signed claim from a node that is not a member is ignored and counted.
#[test]
fn a_non_member_signer_is_ignored_and_counted() {
    let world = world();
    let outsider = world.claim(3, 0, 1, 10_000);
    let member = world.claim(1, 0, 5, 10_000);
    let state = world.resolve(&[&outsider, &member]);
    assert_eq!(world.holder_node(&state), Some(1));
    assert_eq!(state.rejected, 1);
    assert!(state.lost_claims.is_empty());
}

/// A record filed under one task but naming another is ignored and counted.
#[test]
fn a_record_about_another_task_is_ignored() {
    let mut world = world();
    let claim = world.claim(0, 0, 1, 10_000);
    world.fields.id = TaskId::new("WRK-2").unwrap();
    let state = world.resolve(&[&claim]);
    assert_eq!((state.status, state.rejected), (TaskStatus::Open, 1));
}

/// A claim naming a generation that is not open loses with the open generation named.
#[test]
fn a_claim_of_a_generation_not_open_loses() {
    let world = world();
    let future = world.claim(0, 3, 1, 10_000);
    let state = world.resolve(&[&future]);
    assert_eq!(state.status, TaskStatus::Open);
    assert_eq!(state.lost_claims[0].reason, LossReason::WrongGeneration { open: 0 });
}

/// Gates hold: a claim on a task with hard requirements that names no probe is refused on
/// every node.
#[test]
fn a_claim_without_a_probe_meeting_the_requirements_is_refused() {
    let mut world = world();
    world.fields.requires = vec!["tool:matlab".parse().unwrap()];
    let claim = world.claim(0, 0, 1, 10_000);
    let state = world.resolve(&[&claim]);
    assert_eq!(state.status, TaskStatus::Open);
    assert!(matches!(state.lost_claims[0].reason, LossReason::Gate { .. }));
}

/// A claim before approval does not count on a task that needs approval.
#[test]
fn claims_before_approval_do_not_count() {
    let mut world = world();
    world.fields.needs_approval = true;
    let early = world.claim(0, 0, 1, 10_000);
    let approve =
        signed(&world.keys[2], world.mesh, at(11_000), None, RecordBody::Approve { task: world.fields.id.clone() });
    let after = world.claim(1, 0, 2, 12_000);
    let state = world.resolve(&[&early, &approve, &after]);
    assert_eq!(world.holder_node(&state), Some(1));
    assert_eq!(state.lost_claims[0].reason, LossReason::NotApproved);
}

/// A removed member's records signed after its removal do not count.
#[test]
fn records_signed_after_removal_do_not_count() {
    let mut world = world();
    let (_, founding) = founding_record(&world.keys[0], 1_000);
    let added = membership_record(&world.keys[0], world.mesh, 2_000, MembershipAction::Add, &world.keys[1]);
    let removed = membership_record(&world.keys[0], world.mesh, 5_000, MembershipAction::Remove, &world.keys[1]);
    world.members = MemberSet::derive(world.mesh, &[founding, added, removed]);
    let claim = world.claim(1, 0, 1, 10_000);
    let state = world.resolve(&[&claim]);
    assert_eq!((state.status, state.rejected), (TaskStatus::Open, 1));
}

/// A record signed by a member but for another mesh is replayed here in vain.
#[test]
fn a_record_of_another_mesh_does_not_count() {
    let world = world();
    let foreign = signed(
        &world.keys[0],
        MeshId([9; 16]),
        at(10_000),
        Some("agent"),
        RecordBody::Claim(Claim {
            task: world.fields.id.clone(),
            generation: 0,
            lamport: 1,
            lease_ms: LEASE_MS,
            probe: None,
            quorum: false,
            requires: Vec::new(),
            max_attempts: world.fields.max_attempts,
        }),
    );
    let state = world.resolve(&[&foreign]);
    assert_eq!((state.status, state.rejected), (TaskStatus::Open, 1));
}

/// Every reason a claim loses reads as words for people: the CLI, the lost-claim notice and
/// the event stream show it as is.
#[test]
fn every_loss_reason_reads_as_words() {
    let winner = NodeKey::from_seed([7; 32]).node_id();
    let agent = meshwork_protocol::AgentName::new("claude-1").unwrap();
    let reasons = [
        LossReason::LostTo { winner, winner_agent: Some(agent) },
        LossReason::LostTo { winner, winner_agent: None },
        LossReason::EarlyTakeover,
        LossReason::WrongGeneration { open: 3 },
        LossReason::Gate { unmet: vec!["gpu>=24G: no GPU".to_owned(), "tool:cargo: no tool cargo on PATH".to_owned()] },
        LossReason::NotApproved,
        LossReason::QuorumSplit,
        LossReason::TaskClosed,
    ];
    let shown: Vec<String> =
        reasons.iter().map(|reason| reason.to_string().replace(&winner.to_string(), "NODE")).collect();
    expect_test::expect![[r#"
        [
            "lost to claude-1@NODE",
            "lost to NODE",
            "took over before the previous holder's lease ended",
            "stale generation (generation 3 is open)",
            "gate refused: gpu>=24G: no GPU; tool:cargo: no tool cargo on PATH",
            "claimed before the task was approved",
            "the votes of its generation split; no quorum claim could reach a majority",
            "the task was already finished",
        ]
    "#]]
    .assert_debug_eq(&shown);
}

/// A task counts at most `RECORDS_PER_TASK_MAX` records, the first by record id, on every
/// node alike; each one over the cap is counted as rejected, beside the records of other
/// tasks, which never count.
#[test]
fn records_beyond_the_cap_are_rejected_and_counted() {
    use meshwork_protocol::limits::RECORDS_PER_TASK_MAX;
    let world = world();
    let claim = world.claim(0, 0, 1, 1_000);
    let progress = |index: usize| {
        world.follow_up(
            0,
            2_000 + index as u64,
            |task, claim| RecordBody::Progress { task, claim, message: format!("step {index}"), percent: None },
            &claim,
        )
    };
    let notes: Vec<SignedRecord> = (0..RECORDS_PER_TASK_MAX + 1).map(progress).collect();
    let mut other = three_members("WRK-2", LEASE_MS);
    let elsewhere = {
        let body = RecordBody::Approve { task: other.fields.id.clone() };
        signed(&other.keys.remove(0), other.mesh, at(1_500), None, body)
    };

    let at_the_cap: Vec<&SignedRecord> = std::iter::once(&claim).chain(&notes[..RECORDS_PER_TASK_MAX - 1]).collect();
    let state = world.resolve(&at_the_cap);
    assert_eq!((state.records, state.rejected), (RECORDS_PER_TASK_MAX as u32, 0));

    let over: Vec<&SignedRecord> = std::iter::once(&claim).chain(&notes).chain([&elsewhere]).collect();
    let state = world.resolve(&over);
    assert_eq!(state.records, RECORDS_PER_TASK_MAX as u32);
    assert_eq!(state.rejected, 3, "two over the cap and one about another task");
}

/// Step 4.1: a claim of the next generation must be stamped strictly after the end of the
/// tenure before it. One stamped at the release's very stamp took over early and loses; one
/// a logical tick later counts.
#[test]
fn a_claim_stamped_at_the_previous_release_takes_over_early() {
    let world = world();
    let first = world.claim(0, 0, 1, 10_000);
    let release =
        world.follow_up(0, 11_000, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, &first);
    let body =
        |lamport| RecordBody::Claim(Claim { generation: 1, lamport, ..claim_of(&world.claim(1, 1, lamport, 0)) });
    let same_stamp = signed(&world.keys[1], world.mesh, at(11_000), Some("agent"), body(2));
    let state = world.resolve(&[&first, &release, &same_stamp]);
    assert_eq!((state.status, state.generation), (TaskStatus::Open, 1));
    assert!(
        state.lost_claims.iter().any(|lost| lost.claim == same_stamp.id() && lost.reason == LossReason::EarlyTakeover)
    );

    let tick_later = signed(&world.keys[1], world.mesh, Stamp { wall_ms: 11_000, logical: 1 }, Some("agent"), body(3));
    let state = world.resolve(&[&first, &release, &tick_later]);
    assert_eq!((state.status, world.holder_node(&state)), (TaskStatus::Claimed, Some(1)));
}

fn claim_of(record: &SignedRecord) -> Claim {
    match &record.record().body {
        RecordBody::Claim(claim) => claim.clone(),
        other => panic!("not a claim: {other:?}"),
    }
}

/// Step 4.6: only a claim of the *next* generation stamped *after* the lease ends it. A
/// losing claim of the holder's own generation stamped late, or a next-generation claim
/// stamped at the lease's last millisecond, leaves the holder holding.
#[test]
fn only_a_next_generation_claim_after_the_lease_takes_over() {
    let world = world();
    let holder = world.claim(0, 0, 1, 10_000);
    let lease_until = 10_000 + LEASE_MS;
    let same_generation_late = world.claim(1, 0, 2, lease_until + 5);
    let state = world.resolve(&[&holder, &same_generation_late]);
    assert_eq!((state.status, world.holder_node(&state), state.generation), (TaskStatus::Claimed, Some(0), 0));

    let at_the_last_millisecond = world.claim(2, 1, 3, lease_until);
    let state = world.resolve(&[&holder, &at_the_last_millisecond]);
    assert_eq!((state.status, world.holder_node(&state), state.generation), (TaskStatus::Claimed, Some(0), 0));
    assert!(
        state
            .lost_claims
            .iter()
            .any(|lost| lost.claim == at_the_last_millisecond.id() && lost.reason == LossReason::EarlyTakeover)
    );
}

/// Step 4.6: a tenure ends by its own holder's release or failure of *this* claim, signed
/// while its lease held. A release of the holder's earlier claim, one signed by another node,
/// or one signed after the lease ran out ends nothing.
#[test]
fn only_the_holders_own_release_of_this_claim_within_its_lease_ends_the_tenure() {
    let world = world();
    let release = |node: usize, wall_ms: u64, claim: &SignedRecord| {
        world.follow_up(node, wall_ms, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, claim)
    };
    let fail = |node: usize, wall_ms: u64, claim: &SignedRecord| {
        world.follow_up(node, wall_ms, |task, claim| RecordBody::Fail { task, claim, reason: "broke".into() }, claim)
    };
    // Node 0 released generation 0 and failed generation 1, then claimed generation 2: those
    // records name its earlier claims and end nothing now.
    let first = world.claim(0, 0, 1, 10_000);
    let released = release(0, 11_000, &first);
    let second = world.claim(0, 1, 2, 12_000);
    let failed = fail(0, 13_000, &second);
    let third = world.claim(0, 2, 3, 14_000);
    let state = world.resolve(&[&first, &released, &second, &failed, &third]);
    assert_eq!((state.status, world.holder_node(&state), state.generation), (TaskStatus::Claimed, Some(0), 2));

    let by_another = release(1, 15_000, &third);
    let after_the_lease = release(0, 14_000 + LEASE_MS + 1, &third);
    let state = world.resolve(&[&first, &released, &second, &failed, &third, &by_another, &after_the_lease]);
    assert_eq!((state.status, world.holder_node(&state), state.generation), (TaskStatus::Claimed, Some(0), 2));
}

/// Step 6: claims the walk did not reach lose for the reason that fits: a claim two
/// generations ahead of a holder is of the wrong generation even when stamped within the
/// holder's lease; a quorum claim waiting for votes on a generation that is not open loses too.
#[test]
fn claims_the_walk_did_not_reach_lose_for_the_reason_that_fits() {
    let world = world();
    let holder = world.claim(0, 0, 1, 10_000);
    let two_ahead = world.claim(1, 2, 2, 11_000);
    let state = world.resolve(&[&holder, &two_ahead]);
    assert!(
        state
            .lost_claims
            .iter()
            .any(|lost| lost.claim == two_ahead.id() && lost.reason == LossReason::WrongGeneration { open: 0 })
    );

    let released =
        world.follow_up(0, 12_000, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, &holder);
    let quorum_far_ahead = {
        let body = RecordBody::Claim(Claim { quorum: true, ..claim_of(&world.claim(2, 3, 4, 13_000)) });
        signed(&world.keys[2], world.mesh, at(13_000), Some("agent"), body)
    };
    let state = world.resolve(&[&holder, &released, &quorum_far_ahead]);
    assert_eq!((state.status, state.generation), (TaskStatus::Open, 1));
    assert!(
        state
            .lost_claims
            .iter()
            .any(|lost| lost.claim == quorum_far_ahead.id() && lost.reason == LossReason::WrongGeneration { open: 1 })
    );
}

/// Step 7: the winner's `done` is the accepted result whatever the record order, a loser's
/// joins the others; of two `done`s naming one winning claim the first by record id counts;
/// of two winning generations' results the later generation's counts.
#[test]
fn the_winners_result_is_accepted_and_every_other_is_kept() {
    let world = world();
    let done = |node: usize, wall_ms: u64, summary: &str, claim: &SignedRecord| {
        let summary = summary.to_owned();
        world.follow_up(node, wall_ms, |task, claim| RecordBody::Done { task, claim, summary }, claim)
    };
    let summary = |state: &TaskState| state.result.as_ref().map(|result| result.value.clone());
    let winner = world.claim(0, 0, 1, 10_000);
    let loser = world.claim(1, 0, 2, 10_000);
    let mut loser_first = false;
    for offset in 0..8 {
        let (won, lost) = (done(0, 11_000 + offset, "won", &winner), done(1, 11_000 + offset, "lost", &loser));
        loser_first |= lost.id() < won.id();
        let state = world.resolve(&[&winner, &loser, &won, &lost]);
        assert_eq!((state.status, summary(&state)), (TaskStatus::Done, Some("won".to_owned())));
        assert_eq!(state.other_results.iter().map(|result| result.value.as_str()).collect::<Vec<_>>(), ["lost"]);
    }
    assert!(loser_first, "some round had the loser's done first in record id order");

    let (once, twice) = (done(0, 12_000, "once", &winner), done(0, 12_001, "twice", &winner));
    let first_by_id = if once.id() < twice.id() { "once" } else { "twice" };
    let state = world.resolve(&[&winner, &once, &twice]);
    assert_eq!(summary(&state).as_deref(), Some(first_by_id));
    assert_eq!(state.other_results.len(), 1);

    let released =
        world.follow_up(0, 13_000, |task, claim| RecordBody::Release { task, claim, reason: "busy".into() }, &winner);
    let next = world.claim(2, 1, 3, 14_000);
    for offset in 0..8 {
        let (old, new) =
            (done(0, 15_000 + offset, "generation 0", &winner), done(2, 15_000 + offset, "generation 1", &next));
        let state = world.resolve(&[&winner, &released, &next, &old, &new]);
        assert_eq!(summary(&state).as_deref(), Some("generation 1"), "the later generation's result counts");
    }
}

/// Step 9: progress and handoffs count only from the node that made the claim they name.
#[test]
fn progress_and_handoffs_count_only_from_the_claims_own_node() {
    let world = world();
    let claim = world.claim(0, 0, 1, 10_000);
    let progress = |node: usize, message: &str| {
        let message = message.to_owned();
        world.follow_up(
            node,
            11_000,
            |task, claim| RecordBody::Progress { task, claim, message, percent: None },
            &claim,
        )
    };
    let handoff = |node: usize, next: &str| {
        let handoff = meshwork_protocol::record::Handoff {
            task: world.fields.id.clone(),
            claim: claim.id(),
            commits: Vec::new(),
            files: Vec::new(),
            tests: Vec::new(),
            risks: Vec::new(),
            next: next.to_owned(),
        };
        signed(&world.keys[node], world.mesh, at(12_000), Some("agent"), RecordBody::Handoff(handoff))
    };
    let (own, foreign) = (progress(0, "mine"), progress(1, "not mine"));
    let (own_handoff, foreign_handoff) = (handoff(0, "tests"), handoff(2, "not mine"));
    let state = world.resolve(&[&claim, &own, &foreign, &own_handoff, &foreign_handoff]);
    assert_eq!(state.progress.iter().map(|note| note.value.message.as_str()).collect::<Vec<_>>(), ["mine"]);
    assert_eq!(state.handoffs.iter().map(|note| note.value.next.as_str()).collect::<Vec<_>>(), ["tests"]);
}
