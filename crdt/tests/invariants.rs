//! Invariants 1-4 of the design as properties over real Automerge documents: records made
//! on three nodes (claims of any generation and Lamport number, renewals, releases, done,
//! fail, progress; stamps spread over several leases) are delivered to fresh replicas in
//! any order, duplicated, or as a subset and then the rest. Invariant 7 the same way, on
//! meshes of three to five members making quorum claims and acks, double votes included.

use std::collections::{BTreeMap, BTreeSet};

use meshwork_crdt::document::{QueueDoc, put_task_record};
use meshwork_crdt::fields::{FieldEdit, write_edit};
use meshwork_crdt::resolve::{StoredRecord, TaskState};
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{Replica, Speaker};
use meshwork_protocol::api::{AddTask, TaskStatus};
use meshwork_protocol::limits::ATTEMPTS_DEFAULT;
use meshwork_protocol::record::{Claim, Membership, MembershipAction, RECORD_VERSION};
use meshwork_protocol::{AgentName, NodeKey, Record, RecordBody, RecordId, SignedRecord, Stamp, TaskId};
use proptest::prelude::*;

const NODES: usize = 3;
const TASKS: [&str; 2] = ["WRK-1", "WRK-2"];
const BASE_MS: u64 = 1_800_000_000_000;
const LEASE_MS: u64 = 60_000;

/// One record a node makes, as generated.
#[derive(Debug, Clone)]
struct GenRecord {
    node: usize,
    task: usize,
    kind: u8,
    generation: u32,
    lamport: u64,
    offset_ms: u64,
    target: usize,
}

fn gen_record() -> impl Strategy<Value = GenRecord> {
    (0..NODES, 0..TASKS.len(), 0u8..8, 0u32..3, 1u64..5, 0u64..(4 * LEASE_MS), any::<usize>()).prop_map(
        |(node, task, kind, generation, lamport, offset_ms, target)| GenRecord {
            node,
            task,
            kind,
            generation,
            lamport,
            offset_ms,
            target,
        },
    )
}

/// The shared starting document: a mesh of three and two tasks, the second after the first.
fn base() -> (Vec<NodeKey>, Vec<u8>) {
    let keys: Vec<NodeKey> = (1..=NODES as u8).map(node_key).collect();
    let mut founded = Replica::found(&keys[0], 0, "n0", "mesh", BASE_MS).unwrap().replica;
    for (index, key) in keys.iter().enumerate().skip(1) {
        let membership = Membership {
            action: MembershipAction::Add,
            member: key.node_id(),
            name: format!("n{index}"),
            roles: vec![],
        };
        founded.change_membership(&keys[0], membership, BASE_MS + 1).unwrap();
    }
    let agent = AgentName::new("setup").unwrap();
    let speaker = Speaker { key: &keys[0], agent: &agent };
    for (index, id) in TASKS.iter().enumerate() {
        let after = if index == 0 { vec![] } else { vec![TASKS[0].to_owned()] };
        let request = AddTask {
            id: Some((*id).to_owned()),
            title: (*id).to_owned(),
            after,
            lease_ms: Some(LEASE_MS),
            ..AddTask::default()
        };
        founded.add_task(speaker, &request, BASE_MS + 2, 0).unwrap();
    }
    (keys, founded.doc().save())
}

/// Signs the generated records on each node's own fork; returns each record's change bytes.
fn make_changes(keys: &[NodeKey], base: &[u8], plan: &[GenRecord]) -> (Vec<Vec<u8>>, Vec<RecordId>) {
    let steps: Vec<Step> = plan.iter().map(|record| Step::Record(record.clone(), Terms::default())).collect();
    make_step_changes(keys, base, &[None; NODES], &steps)
}

/// The terms a generated claim names (requirements, attempt limit), and whether it names its
/// node's probe.
#[derive(Debug, Clone, Copy)]
struct Terms {
    needs_gpu: bool,
    max_attempts: u32,
}

impl Default for Terms {
    fn default() -> Terms {
        Terms { needs_gpu: false, max_attempts: ATTEMPTS_DEFAULT }
    }
}

/// An edit a node makes of a task's plain fields: unsigned, under Automerge's last-writer
/// rule, with no record.
#[derive(Debug, Clone)]
struct GenEdit {
    node: usize,
    task: usize,
    requires_gpu: Option<bool>,
    max_attempts: Option<u32>,
    priority: Option<i64>,
}

/// One step of a plan: a signed record (and the terms a claim names), or an edit.
#[derive(Debug, Clone)]
enum Step {
    Record(GenRecord, Terms),
    Edit(GenEdit),
}

/// Makes every step on its node's own fork; returns each step's change and each record's id.
/// Claims name their node's probe from `probes`.
fn make_step_changes(
    keys: &[NodeKey],
    base: &[u8],
    probes: &[Option<RecordId>; NODES],
    plan: &[Step],
) -> (Vec<Vec<u8>>, Vec<RecordId>) {
    let mut forks: Vec<Replica> = (0..NODES)
        .map(|node| Replica::open(keys[node].node_id(), 1, QueueDoc::load(Some(base), &[]).unwrap().0))
        .collect();
    let mesh = forks[0].mesh().unwrap();
    let mut claims: BTreeMap<(usize, usize), Vec<RecordId>> = BTreeMap::new();
    let (mut changes, mut ids) = (Vec::new(), Vec::new());
    let mut index = 0usize;
    for step in plan {
        let (step, terms) = match step {
            Step::Record(record, terms) => (record, *terms),
            Step::Edit(edit) => {
                changes.push(make_edit(&mut forks[edit.node], edit));
                continue;
            }
        };
        let task = TaskId::new(TASKS[step.task]).unwrap();
        let own_claims = claims.entry((step.node, step.task)).or_default();
        let body = match (step.kind, own_claims.is_empty()) {
            (0..=2, _) | (_, true) => RecordBody::Claim(Claim {
                task: task.clone(),
                generation: step.generation,
                lamport: step.lamport,
                lease_ms: LEASE_MS,
                probe: probes[step.node],
                quorum: false,
                requires: if terms.needs_gpu { vec![gpu_label()] } else { Vec::new() },
                max_attempts: terms.max_attempts,
            }),
            (kind, false) => {
                let claim = own_claims[step.target % own_claims.len()];
                match kind {
                    3 => RecordBody::Renew { task: task.clone(), claim },
                    4 => RecordBody::Release { task: task.clone(), claim, reason: "r".into() },
                    5 => RecordBody::Done { task: task.clone(), claim, summary: format!("s{index}") },
                    6 => RecordBody::Fail { task: task.clone(), claim, reason: "f".into() },
                    _ => RecordBody::Progress { task: task.clone(), claim, message: "p".into(), percent: Some(50) },
                }
            }
        };
        let record = Record {
            version: RECORD_VERSION,
            mesh,
            signer: keys[step.node].node_id(),
            agent: Some(AgentName::new("agent").unwrap()),
            stamp: Stamp { wall_ms: BASE_MS + 10 + step.offset_ms, logical: index as u32 },
            body,
        };
        let signed = SignedRecord::sign(record, &keys[step.node]).unwrap();
        if matches!(signed.record().body, RecordBody::Claim(_)) {
            own_claims.push(signed.id());
        }
        let fork = &mut forks[step.node];
        let change =
            fork.doc_mut().change(BASE_MS, "record", |tx, maps| put_task_record(tx, maps, &task, &signed)).unwrap();
        changes.push(change);
        ids.push(signed.id());
        // Records are numbered among records only, so the same records have the same bytes
        // with or without edits between them.
        index += 1;
    }
    (changes, ids)
}

fn gpu_label() -> meshwork_protocol::Requirement {
    "label:gpu".parse().unwrap()
}

/// Writes an edit into a fork's document, as `task edit` on a node that had not seen the
/// task finish would (the fields are unsigned: any member may write them).
fn make_edit(fork: &mut Replica, edit: &GenEdit) -> Vec<u8> {
    let task = TaskId::new(TASKS[edit.task]).unwrap();
    let field_edit = FieldEdit {
        requires: edit.requires_gpu.map(|gpu| if gpu { vec![gpu_label()] } else { Vec::new() }),
        max_attempts: edit.max_attempts,
        priority: edit.priority,
        ..FieldEdit::default()
    };
    fork.doc_mut().change(BASE_MS, "edit", |tx, maps| write_edit(tx, maps, &task, &field_edit)).unwrap()
}

fn fresh(keys: &[NodeKey], base: &[u8]) -> Replica {
    Replica::open(keys[0].node_id(), 7, QueueDoc::load(Some(base), &[]).unwrap().0)
}

/// Invariant 2 (one holder) on one replica's state: at most one claim per generation is not
/// lost (quorum claims still waiting for votes aside: they won nothing yet), and a holder
/// exists exactly when the task is claimed.
fn assert_one_holder(replica: &Replica) {
    for entry in replica.tasks().values() {
        let state = &entry.state;
        assert_eq!(state.holder.is_some(), state.status == TaskStatus::Claimed, "{:?}", entry.fields.id);
        let lost: BTreeSet<RecordId> = state.lost_claims.iter().map(|lost| lost.claim).collect();
        let mut winners_per_generation: BTreeMap<u32, usize> = BTreeMap::new();
        for (id, claim) in &state.claims {
            let pending = state.tallies.get(id).is_some_and(|tally| !tally.reached());
            if !lost.contains(id) && !pending {
                *winners_per_generation.entry(claim.claim.generation).or_default() += 1;
            }
        }
        assert!(
            winners_per_generation.values().all(|count| *count <= 1),
            "two winners in one generation: {winners_per_generation:?}"
        );
        if let Some(holder) = &state.holder {
            assert!(!lost.contains(&holder.claim));
        }
    }
}

fn statuses(replica: &Replica) -> BTreeMap<TaskId, TaskStatus> {
    replica.tasks().iter().map(|(id, entry)| (id.clone(), entry.state.status)).collect()
}

fn plan_and_orders() -> impl Strategy<Value = (Vec<GenRecord>, Vec<usize>, Vec<usize>, usize)> {
    proptest::collection::vec(gen_record(), 1..14).prop_flat_map(|plan| {
        let indices: Vec<usize> = (0..plan.len()).collect();
        let len = plan.len();
        (Just(plan), Just(indices.clone()).prop_shuffle(), proptest::collection::vec(0..len, 0..len * 2), 0..=len)
    })
}

/// The records' changes delivered in a shuffled order with duplicates appended.
fn shuffled_with_duplicates<'a>(changes: &'a [Vec<u8>], order: &[usize], duplicates: &[usize]) -> Vec<&'a Vec<u8>> {
    let mut delivery: Vec<&Vec<u8>> = order.iter().map(|index| &changes[*index]).collect();
    delivery.extend(duplicates.iter().map(|index| &changes[*index]));
    delivery
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Invariant 1, convergence: the same records delivered in order, shuffled with
    /// duplicates, or as a subset and then the rest give byte-identical exports.
    #[test]
    fn convergence_any_order_duplication_or_split_gives_the_same_export((plan, order, duplicates, split) in plan_and_orders()) {
        let (keys, base) = base();
        let (changes, _) = make_changes(&keys, &base, &plan);
        let mut in_order = fresh(&keys, &base);
        for change in &changes {
            in_order.apply_changes(change, BASE_MS).unwrap();
        }
        let mut shuffled = fresh(&keys, &base);
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            shuffled.apply_changes(change, BASE_MS).unwrap();
        }
        let mut subset_then_rest = fresh(&keys, &base);
        let (first, rest) = order.split_at(split);
        for index in first.iter().chain(rest) {
            subset_then_rest.apply_changes(&changes[*index], BASE_MS).unwrap();
        }
        let expected = in_order.export_json();
        prop_assert_eq!(&expected, &shuffled.export_json());
        prop_assert_eq!(&expected, &subset_then_rest.export_json());
    }

    /// Invariant 2, one holder: after every delivered change, no generation has two
    /// winners and a holder exists exactly when the task is claimed.
    #[test]
    fn one_holder_at_every_step_of_any_delivery((plan, order, duplicates, _split) in plan_and_orders()) {
        let (keys, base) = base();
        let (changes, _) = make_changes(&keys, &base, &plan);
        let mut replica = fresh(&keys, &base);
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            replica.apply_changes(change, BASE_MS).unwrap();
            assert_one_holder(&replica);
        }
    }

    /// Invariant 3, nothing lost: every record made on any node is in the document once all
    /// changes arrived, whatever the order.
    #[test]
    fn nothing_lost_every_record_made_is_in_the_merged_document((plan, order, duplicates, _split) in plan_and_orders()) {
        let (keys, base) = base();
        let (changes, ids) = make_changes(&keys, &base, &plan);
        let mut replica = fresh(&keys, &base);
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            replica.apply_changes(change, BASE_MS).unwrap();
        }
        let mut stored: BTreeSet<RecordId> = BTreeSet::new();
        for task in TASKS {
            for record in replica.doc().read_task_records(&TaskId::new(task).unwrap()) {
                if let StoredRecord::Valid(signed) = record {
                    stored.insert(signed.id());
                }
            }
        }
        for id in &ids {
            prop_assert!(stored.contains(id), "record {} lost", id);
        }
    }

    /// Invariant 4, finished stays finished: once a task is done on a replica, no later
    /// change makes it anything else.
    #[test]
    fn finished_stays_finished_whatever_arrives_later((plan, order, duplicates, _split) in plan_and_orders()) {
        let (keys, base) = base();
        let (changes, _) = make_changes(&keys, &base, &plan);
        let mut replica = fresh(&keys, &base);
        let mut done: BTreeSet<TaskId> = BTreeSet::new();
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            replica.apply_changes(change, BASE_MS).unwrap();
            let now = statuses(&replica);
            for id in &done {
                prop_assert_eq!(now.get(id), Some(&TaskStatus::Done), "finished stays finished: {}", id);
            }
            done.extend(now.into_iter().filter(|(_, status)| *status == TaskStatus::Done).map(|(id, _)| id));
        }
    }
}

/// One record of the quorum property: a quorum claim, an ack of a quorum claim made before
/// (its own generation or, now and then, another), or a plain claim.
#[derive(Debug, Clone)]
struct QuorumStep {
    node: usize,
    kind: u8,
    generation: u32,
    lamport: u64,
    offset_ms: u64,
    target: usize,
}

fn quorum_step(members: usize) -> impl Strategy<Value = QuorumStep> {
    (0..members, 0u8..10, 0u32..2, 1u64..4, 0u64..(3 * LEASE_MS), any::<usize>()).prop_map(
        |(node, kind, generation, lamport, offset_ms, target)| QuorumStep {
            node,
            kind,
            generation,
            lamport,
            offset_ms,
            target,
        },
    )
}

/// A mesh of `members` nodes and one task, saved.
fn quorum_base(members: usize) -> (Vec<NodeKey>, Vec<u8>, TaskId) {
    let keys: Vec<NodeKey> = (1..=members as u8).map(node_key).collect();
    let mut founded = Replica::found(&keys[0], 0, "n0", "mesh", BASE_MS).unwrap().replica;
    for (index, key) in keys.iter().enumerate().skip(1) {
        let membership = Membership {
            action: MembershipAction::Add,
            member: key.node_id(),
            name: format!("n{index}"),
            roles: vec![],
        };
        founded.change_membership(&keys[0], membership, BASE_MS + 1).unwrap();
    }
    let agent = AgentName::new("setup").unwrap();
    let request =
        AddTask { id: Some("WRK-Q".to_owned()), title: "q".to_owned(), lease_ms: Some(LEASE_MS), ..AddTask::default() };
    let task = founded.add_task(Speaker { key: &keys[0], agent: &agent }, &request, BASE_MS + 2, 0).unwrap().task;
    (keys, founded.doc().save(), task)
}

/// Signs the planned records, each on its node's own fork; returns each record's change.
fn make_quorum_changes(keys: &[NodeKey], base: &[u8], task: &TaskId, plan: &[QuorumStep]) -> Vec<Vec<u8>> {
    let mut forks: Vec<Replica> =
        keys.iter().map(|key| Replica::open(key.node_id(), 1, QueueDoc::load(Some(base), &[]).unwrap().0)).collect();
    let mesh = forks[0].mesh().unwrap();
    let mut quorum_claims: Vec<(RecordId, u32)> = Vec::new();
    let mut changes = Vec::new();
    for (index, step) in plan.iter().enumerate() {
        let claim = |quorum| {
            RecordBody::Claim(Claim {
                task: task.clone(),
                generation: step.generation,
                lamport: step.lamport,
                lease_ms: LEASE_MS,
                probe: None,
                quorum,
                requires: Vec::new(),
                max_attempts: ATTEMPTS_DEFAULT,
            })
        };
        let body = match step.kind {
            3..=8 if !quorum_claims.is_empty() => {
                let (claim, generation) = quorum_claims[step.target % quorum_claims.len()];
                // Now and then an ack names the wrong generation: it must be no vote.
                let generation = if step.kind == 8 { step.generation } else { generation };
                RecordBody::Ack { task: task.clone(), claim, generation }
            }
            9 => claim(false),
            _ => claim(true),
        };
        let agent = matches!(body, RecordBody::Claim(_)).then(|| AgentName::new("agent").unwrap());
        let record = Record {
            version: RECORD_VERSION,
            mesh,
            signer: keys[step.node].node_id(),
            agent,
            stamp: Stamp { wall_ms: BASE_MS + 10 + step.offset_ms, logical: index as u32 },
            body,
        };
        let signed = SignedRecord::sign(record, &keys[step.node]).unwrap();
        if let RecordBody::Claim(Claim { quorum: true, generation, .. }) = &signed.record().body {
            quorum_claims.push((signed.id(), *generation));
        }
        let change = forks[step.node]
            .doc_mut()
            .change(BASE_MS, "record", |tx, maps| put_task_record(tx, maps, task, &signed))
            .unwrap();
        changes.push(change);
    }
    changes
}

/// Invariant 7 on one replica's state: per generation at most one quorum claim counts, no
/// member votes twice, and a quorum claim holds only with a majority.
fn assert_quorum_exclusive(replica: &Replica) {
    let members = replica.members().current().count() as u32;
    for entry in replica.tasks().values() {
        let state = &entry.state;
        let mut counting: BTreeMap<u32, Vec<RecordId>> = BTreeMap::new();
        let mut voters: BTreeMap<u32, Vec<meshwork_protocol::NodeId>> = BTreeMap::new();
        for (id, tally) in &state.tallies {
            assert_eq!(tally.votes as usize, tally.voters.len());
            assert_eq!(tally.needed, members / 2 + 1);
            if tally.votes * 2 > members {
                counting.entry(tally.generation).or_default().push(*id);
            }
            voters.entry(tally.generation).or_default().extend(&tally.voters);
        }
        for (generation, claims) in &counting {
            assert!(claims.len() <= 1, "two quorum claims of generation {generation} count: {claims:?}");
        }
        for (generation, voters) in &voters {
            let distinct: BTreeSet<_> = voters.iter().collect();
            assert_eq!(distinct.len(), voters.len(), "a member voted twice in generation {generation}");
        }
        if let Some(holder) = state.holder.as_ref().filter(|holder| holder.quorum) {
            assert!(state.tallies[&holder.claim].reached(), "a quorum claim holds without a majority");
        }
    }
}

/// Every task's derived state, tallies included: more than the export shows.
fn task_states(replica: &Replica) -> Vec<(TaskId, TaskState)> {
    replica.tasks().iter().map(|(id, entry)| (id.clone(), entry.state.clone())).collect()
}

fn quorum_plan_and_orders() -> impl Strategy<Value = (usize, Vec<QuorumStep>, Vec<usize>, Vec<usize>, usize)> {
    (3usize..=5)
        .prop_flat_map(|members| (Just(members), proptest::collection::vec(quorum_step(members), 1..16)))
        .prop_flat_map(|(members, plan)| {
            let len = plan.len();
            let indices: Vec<usize> = (0..len).collect();
            (
                Just(members),
                Just(plan),
                Just(indices).prop_shuffle(),
                proptest::collection::vec(0..len, 0..len * 2),
                0..=len,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Invariant 7, quorum claims are exclusive: whatever members sign (double votes, acks of
    /// claims of other generations, duplicates) and in whatever order it arrives, no two
    /// quorum claims of one generation ever both count, at any step; and every order,
    /// duplication or split of the same records gives the same state, tallies included.
    #[test]
    fn quorum_claims_are_exclusive_in_any_order((members, plan, order, duplicates, split) in quorum_plan_and_orders()) {
        let (keys, base, task) = quorum_base(members);
        let changes = make_quorum_changes(&keys, &base, &task, &plan);
        let mut in_order = fresh(&keys, &base);
        for change in &changes {
            in_order.apply_changes(change, BASE_MS).unwrap();
            assert_quorum_exclusive(&in_order);
        }
        let mut shuffled = fresh(&keys, &base);
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            shuffled.apply_changes(change, BASE_MS).unwrap();
            assert_quorum_exclusive(&shuffled);
        }
        let mut subset_then_rest = fresh(&keys, &base);
        let (first, rest) = order.split_at(split);
        for index in first.iter().chain(rest) {
            subset_then_rest.apply_changes(&changes[*index], BASE_MS).unwrap();
        }
        let expected = task_states(&in_order);
        prop_assert_eq!(&expected, &task_states(&shuffled));
        prop_assert_eq!(&expected, &task_states(&subset_then_rest));
        assert_one_holder(&in_order);
    }
}

/// The shared starting document with a probe of each node: only node 1's machine has the
/// label `gpu`. Returns the probes' record ids too.
fn base_with_probes() -> (Vec<NodeKey>, Vec<u8>, [Option<RecordId>; NODES]) {
    let (keys, base) = base();
    let mut replica = fresh(&keys, &base);
    let mut probes = [None; NODES];
    for (node, key) in keys.iter().enumerate() {
        let mut fork = Replica::open(key.node_id(), 1, QueueDoc::load(Some(&replica.doc().save()), &[]).unwrap().0);
        let labels = if node == 1 { vec!["gpu".to_owned()] } else { Vec::new() };
        let probe = meshwork_protocol::Probe { os: "linux".into(), labels, ..meshwork_protocol::Probe::default() };
        let change = fork.publish_probe(key, probe, BASE_MS + 3).unwrap().unwrap();
        probes[node] = fork.probes().latest(&key.node_id()).map(|(id, _)| id);
        replica.apply_changes(&change, BASE_MS + 3).unwrap();
    }
    (keys, replica.doc().save(), probes)
}

fn gen_edit() -> impl Strategy<Value = GenEdit> {
    (
        0..NODES,
        0..TASKS.len(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(1u32..=3),
        proptest::option::of(0i64..3),
    )
        .prop_map(|(node, task, requires_gpu, max_attempts, priority)| GenEdit {
            node,
            task,
            requires_gpu,
            max_attempts,
            priority,
        })
}

fn gen_step() -> impl Strategy<Value = Step> {
    let terms = (any::<bool>(), 1u32..=3).prop_map(|(needs_gpu, max_attempts)| Terms { needs_gpu, max_attempts });
    prop_oneof![
        3 => (gen_record(), terms).prop_map(|(record, terms)| Step::Record(record, terms)),
        1 => gen_edit().prop_map(Step::Edit),
    ]
}

fn steps_and_orders() -> impl Strategy<Value = (Vec<Step>, Vec<usize>, Vec<usize>)> {
    proptest::collection::vec(gen_step(), 1..16).prop_flat_map(|plan| {
        let len = plan.len();
        let indices: Vec<usize> = (0..len).collect();
        (Just(plan), Just(indices).prop_shuffle(), proptest::collection::vec(0..len, 0..len))
    })
}

/// What signed records alone decide of a task: who holds it, which claims count (won a
/// generation), whose leases were taken over, the accepted result, and whether it is done or
/// cancelled. (Whether a task with no holder is `open` or `failed` for good follows the
/// current attempt limit: an edit applies to later generations.)
#[derive(Debug, PartialEq, Eq)]
struct Decided {
    task: TaskId,
    holder: Option<RecordId>,
    counting: BTreeSet<RecordId>,
    taken_over: Vec<RecordId>,
    result: Option<RecordId>,
    done: bool,
    cancelled: bool,
}

fn decided_by_records(replica: &Replica) -> Vec<Decided> {
    replica
        .tasks()
        .iter()
        .map(|(id, entry)| {
            let state = &entry.state;
            let lost: BTreeSet<RecordId> = state.lost_claims.iter().map(|lost| lost.claim).collect();
            Decided {
                task: id.clone(),
                holder: state.holder.as_ref().map(|holder| holder.claim),
                counting: state.claims.keys().filter(|claim| !lost.contains(*claim)).copied().collect(),
                taken_over: state.taken_over.iter().map(|ended| ended.claim).collect(),
                result: state.result.as_ref().map(|result| result.record),
                done: state.status == TaskStatus::Done,
                cancelled: state.status == TaskStatus::Cancelled,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Invariant 4 against edits: records and edits of requirements, attempt limits and
    /// priorities, made concurrently on three nodes and delivered in any order with
    /// duplicates, give the same export in every order; a task done on a replica stays done
    /// whatever arrives later; and the edits change nothing of what the records decide (the
    /// same records without the edits give the same holders, counting claims and results).
    #[test]
    fn edits_in_any_order_never_change_which_claim_counts_nor_reopen_a_done_task((plan, order, duplicates) in steps_and_orders()) {
        let (keys, base, probes) = base_with_probes();
        let (changes, _) = make_step_changes(&keys, &base, &probes, &plan);
        let mut in_order = fresh(&keys, &base);
        for change in &changes {
            in_order.apply_changes(change, BASE_MS).unwrap();
        }
        let mut shuffled = fresh(&keys, &base);
        let mut done: BTreeSet<TaskId> = BTreeSet::new();
        for change in shuffled_with_duplicates(&changes, &order, &duplicates) {
            shuffled.apply_changes(change, BASE_MS).unwrap();
            let now = statuses(&shuffled);
            for id in &done {
                prop_assert_eq!(now.get(id), Some(&TaskStatus::Done), "finished stays finished: {}", id);
            }
            done.extend(now.into_iter().filter(|(_, status)| *status == TaskStatus::Done).map(|(id, _)| id));
            assert_one_holder(&shuffled);
        }
        prop_assert_eq!(in_order.export_json(), shuffled.export_json());

        let records_only: Vec<Step> = plan.iter().filter(|step| matches!(step, Step::Record(..))).cloned().collect();
        let (record_changes, _) = make_step_changes(&keys, &base, &probes, &records_only);
        let mut without_edits = fresh(&keys, &base);
        for change in &record_changes {
            without_edits.apply_changes(change, BASE_MS).unwrap();
        }
        prop_assert_eq!(decided_by_records(&in_order), decided_by_records(&without_edits));
    }
}
