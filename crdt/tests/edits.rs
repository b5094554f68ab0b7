//! Invariant 4, finished stays finished, against edits: which claim counts is decided by
//! signed records only. A claim names the terms it was made on (requirements, attempt
//! limit), and the resolver judges it by them, never by the task's plain fields, which are
//! unsigned and editable. So an edit binds the claims made after their claimer saw it, never
//! ejects a holder and never reopens a done task; and a node refuses to edit what a finished
//! task needed in order to run.

use meshwork_crdt::document::Touched;
use meshwork_crdt::fields::{FieldEdit, write_edit};
use meshwork_crdt::membership::MemberSet;
use meshwork_crdt::probes::ProbeBook;
use meshwork_crdt::resolve::{LossReason, ResolveContext, StoredRecord, TaskState, resolve};
use meshwork_crdt::test_support::{ThreeMembers, node_key, signed, three_members};
use meshwork_crdt::{OpError, QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, EditTask, TaskStatus};
use meshwork_protocol::probe::Gpu;
use meshwork_protocol::record::{Claim, Membership, MembershipAction, RECORD_VERSION_LEGACY};
use meshwork_protocol::{
    AgentName, ErrorCode, MeshId, NodeKey, Probe, RecordBody, Requirement, SignedRecord, Stamp, TaskId,
};

const T0: u64 = 1_800_000_000_000;
const LEASE_MS: u64 = 60_000;

fn gpu() -> Requirement {
    "gpu".parse().unwrap()
}

/// A machine with a GPU, or without one.
fn machine(with_gpu: bool) -> Probe {
    let gpus = if with_gpu { vec![Gpu { model: "RTX".into(), memory_bytes: 24 << 30 }] } else { vec![] };
    Probe { os: "linux".into(), arch: "x86_64".into(), cpus: 8, gpus, ..Probe::default() }
}

/// Two members: `replicas[0]` (no GPU) founded the mesh and added `replicas[1]` (a GPU); task
/// `X`, with no requirements, is on both.
struct Pair {
    keys: [NodeKey; 2],
    replicas: Vec<Replica>,
    agent: AgentName,
    task: TaskId,
}

fn pair() -> Pair {
    let keys = [node_key(1), node_key(2)];
    let agent = AgentName::new("agent").unwrap();
    let mut founder = Replica::found(&keys[0], 1, "laptop", "mesh", T0).unwrap().replica;
    let added =
        Membership { action: MembershipAction::Add, member: keys[1].node_id(), name: "gpu-box".into(), roles: vec![] };
    founder.change_membership(&keys[0], added, T0 + 1).unwrap();
    founder.publish_probe(&keys[0], machine(false), T0 + 2).unwrap();
    let request = AddTask { id: Some("X".into()), title: "x".into(), lease_ms: Some(LEASE_MS), ..AddTask::default() };
    let task = founder.add_task(Speaker { key: &keys[0], agent: &agent }, &request, T0 + 3, 1).unwrap().task;
    let mut other = Replica::open(keys[1].node_id(), 1, QueueDoc::load(Some(&founder.doc().save()), &[]).unwrap().0);
    other.publish_probe(&keys[1], machine(true), T0 + 4).unwrap();
    let mut pair = Pair { keys, replicas: vec![founder, other], agent, task };
    pair.merge(1, 0, T0 + 5);
    pair
}

impl Pair {
    /// Runs an operation on `node`'s replica as its agent.
    fn at<R>(&mut self, node: usize, operation: impl FnOnce(&mut Replica, Speaker<'_>) -> R) -> R {
        let speaker = Speaker { key: &self.keys[node], agent: &self.agent };
        operation(&mut self.replicas[node], speaker)
    }

    /// Everything `from` has, merged into `into`.
    fn merge(&mut self, from: usize, into: usize, now_ms: u64) {
        let saved = self.replicas[from].doc().save();
        self.replicas[into].apply_changes(&saved, now_ms).unwrap();
    }

    fn state(&self, node: usize) -> &TaskState {
        &self.replicas[node].task(&self.task).unwrap().state
    }

    fn requires_gpu(&mut self, node: usize, now_ms: u64) {
        let edit = EditTask { requires: Some(vec!["gpu".into()]), ..EditTask::default() };
        let (key, agent) = (&self.keys[node], &self.agent);
        self.replicas[node].edit_task(Speaker { key, agent }, &self.task, &edit, now_ms).unwrap();
    }

    /// Writes an edit of the requirements straight into the document, as a member whose node
    /// skips the check against finished tasks would (the fields are unsigned: anyone may).
    fn force_requirements(&mut self, node: usize, requires: Vec<Requirement>, now_ms: u64) {
        let edit = FieldEdit { requires: Some(requires), ..FieldEdit::default() };
        let task = self.task.clone();
        let replica = &mut self.replicas[node];
        replica.doc_mut().change(now_ms, "forced edit", |tx, maps| write_edit(tx, maps, &task, &edit)).unwrap();
        replica.refresh(&Touched { tasks: [task].into(), ..Touched::default() }, now_ms);
    }

    fn is_offered(&self, node: usize, now_ms: u64) -> bool {
        self.replicas[node].ready_tasks_at(now_ms).iter().any(|entry| entry.fields.id == self.task)
    }
}

/// Regression (the reported defect): `task add X; claim X; done X; task edit X --requires gpu`
/// left X open with no result, and `ready --all` offered it again, because every claim was
/// judged against the task's current requirements. The edit now changes nothing of the state.
#[test]
fn a_done_task_stays_done_after_its_requirements_are_edited() {
    let mut pair = pair();
    let task = pair.task.clone();
    pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 10)).unwrap();
    pair.at(0, |replica, speaker| replica.done(speaker, &task, "shipped", T0 + 20)).unwrap();
    let export_before = pair.replicas[0].task_view(pair.replicas[0].task(&task).unwrap());

    // The same document, edited after the done by a node that skips the check.
    pair.force_requirements(0, vec![gpu()], T0 + 30);
    let state = pair.state(0);
    assert_eq!(state.status, TaskStatus::Done);
    assert_eq!(state.result.as_ref().map(|result| result.value.as_str()), Some("shipped"));
    assert!(!pair.is_offered(0, T0 + 40) && !pair.is_offered(0, T0 + 10 * LEASE_MS));
    let view = pair.replicas[0].task_view(pair.replicas[0].task(&task).unwrap());
    assert_eq!(view.requires, ["gpu"]);
    assert_eq!((view.status, view.result, view.holder), (export_before.status, export_before.result, None));

    // A concurrent edit on another node, which never saw the claim or the done.
    pair.requires_gpu(1, T0 + 15);
    pair.merge(1, 0, T0 + 50);
    pair.merge(0, 1, T0 + 50);
    for node in 0..2 {
        assert_eq!(pair.state(node).status, TaskStatus::Done, "on node {node}");
    }
}

/// A holder keeps its task when the requirements change under it: the claim it won was made
/// on the terms it saw. It may renew and finish as before.
#[test]
fn an_edit_of_requirements_never_ejects_the_current_holder() {
    let mut pair = pair();
    let task = pair.task.clone();
    let claim = pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 10)).unwrap().record.unwrap();
    pair.merge(0, 1, T0 + 11);
    // The GPU box makes the task need a GPU, which the holder's machine lacks.
    pair.requires_gpu(1, T0 + 12);
    pair.merge(1, 0, T0 + 13);
    for node in 0..2 {
        let holder = pair.state(node).holder.as_ref().map(|holder| holder.claim);
        assert_eq!(holder, Some(claim), "the holder on node {node}");
        assert!(pair.state(node).lost_claims.is_empty());
    }
    assert!(pair.replicas[0].unmet_here(pair.replicas[0].task(&task).unwrap()).len() == 1, "the edit applies now");
    pair.at(0, |replica, speaker| replica.renew(speaker, &task, T0 + 20)).unwrap();
    pair.at(0, |replica, speaker| replica.done(speaker, &task, "done on the old terms", T0 + 30)).unwrap();
    pair.merge(0, 1, T0 + 31);
    assert_eq!(pair.state(1).status, TaskStatus::Done);
}

/// A claim made after its node saw an edit names the edited requirements: a machine that
/// lacks one is refused by its own gate, and the claim of a node that skips its gate is
/// refused by every node. A machine that meets them claims, naming them.
#[test]
fn a_claim_made_after_an_edit_is_judged_by_the_edited_requirements() {
    let mut pair = pair();
    let task = pair.task.clone();
    pair.requires_gpu(1, T0 + 10);
    pair.merge(1, 0, T0 + 11);
    let refused = pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 12)).unwrap_err();
    assert_eq!(refused.to_error_body().code, ErrorCode::GateRefused);

    let claim = pair.at(1, |replica, speaker| replica.claim(speaker, &task, T0 + 13)).unwrap().record.unwrap();
    let entry = &pair.state(1).claims[&claim];
    assert_eq!(entry.claim.requires, [gpu()]);
    assert_eq!(entry.claim.max_attempts, 3);
    assert_eq!(pair.state(1).holder.as_ref().map(|holder| holder.claim), Some(claim));
}

/// `task edit` of a finished task: what it needed in order to run (requirements,
/// preferences, lease, attempts, dependencies) is refused with `INVALID_TRANSITION`, saying
/// why; title, description and priority may change. Neither changes its state.
#[test]
fn editing_a_finished_tasks_requirements_is_refused() {
    let mut pair = pair();
    let speaker = Speaker { key: &pair.keys[0], agent: &pair.agent };
    let replica = &mut pair.replicas[0];
    let add = |replica: &mut Replica, id: &str, max_attempts: Option<u32>| {
        let request = AddTask { id: Some(id.into()), title: id.into(), max_attempts, ..AddTask::default() };
        replica.add_task(speaker, &request, T0 + 10, 1).unwrap().task
    };
    let done = add(replica, "DONE", None);
    replica.claim(speaker, &done, T0 + 11).unwrap();
    replica.done(speaker, &done, "ok", T0 + 12).unwrap();
    let cancelled = add(replica, "CANCELLED", None);
    replica.cancel(speaker, &cancelled, "not needed", T0 + 13).unwrap();
    let failed = add(replica, "FAILED", Some(1));
    replica.claim(speaker, &failed, T0 + 14).unwrap();
    replica.fail(speaker, &failed, "broke", T0 + 15).unwrap();
    let settled = [
        EditTask { requires: Some(vec!["gpu".into()]), ..EditTask::default() },
        EditTask { prefers: Some(vec!["gpu".into()]), ..EditTask::default() },
        EditTask { lease_ms: Some(LEASE_MS), ..EditTask::default() },
        EditTask { max_attempts: Some(5), ..EditTask::default() },
        EditTask { after: vec!["X".into()], ..EditTask::default() },
    ];
    for (task, status) in
        [(&done, TaskStatus::Done), (&cancelled, TaskStatus::Cancelled), (&failed, TaskStatus::Failed)]
    {
        assert_eq!(replica.status_of(task), Some(status));
        for edit in &settled {
            let refused = replica.edit_task(speaker, task, edit, T0 + 20).unwrap_err();
            let body = refused.to_error_body();
            assert_eq!(body.code, ErrorCode::InvalidTransition, "{task}: {edit:?}");
            assert!(
                body.message.contains(status.as_str()) && body.message.contains("once it finished"),
                "{}",
                body.message
            );
            assert!(matches!(refused, OpError::Refused(_)), "nothing was written");
        }
        let plain = EditTask {
            title: Some("renamed".into()),
            description: Some("notes".into()),
            priority: Some(7),
            ..EditTask::default()
        };
        replica.edit_task(speaker, task, &plain, T0 + 21).unwrap();
        let entry = replica.task(task).unwrap();
        assert_eq!((entry.fields.title.as_str(), entry.fields.priority), ("renamed", 7));
        assert_eq!(entry.state.status, status, "{task} after a plain edit");
    }
}

/// Resolver-level worlds: three members, one task, and each member's probe (key 1 has a GPU).
struct World {
    keys: Vec<NodeKey>,
    mesh: MeshId,
    members: MemberSet,
    probes: ProbeBook,
    probe_ids: Vec<meshwork_protocol::RecordId>,
    fields: meshwork_crdt::task::TaskFields,
}

fn world() -> World {
    let ThreeMembers { keys, mesh, members, fields } = three_members("WRK-4", LEASE_MS);
    let probe_records: Vec<SignedRecord> = (0..3)
        .map(|node| {
            let body = RecordBody::Probe(machine(node == 1));
            signed(&keys[node], mesh, Stamp { wall_ms: 2_500, logical: 0 }, None, body)
        })
        .collect();
    let probes = ProbeBook::derive(&probe_records, &members);
    let probe_ids = probe_records.iter().map(SignedRecord::id).collect();
    World { keys, mesh, members, probes, probe_ids, fields }
}

impl World {
    /// A claim by `node` naming `requires` and `max_attempts` (0 with a version-1 record).
    fn claim(
        &self,
        node: usize,
        generation: u32,
        wall_ms: u64,
        requires: &[Requirement],
        max_attempts: u32,
    ) -> SignedRecord {
        let body = RecordBody::Claim(Claim {
            task: self.fields.id.clone(),
            generation,
            lamport: u64::from(generation) + 1,
            lease_ms: LEASE_MS,
            probe: Some(self.probe_ids[node]),
            quorum: false,
            requires: Claim::canonical_requirements(requires),
            max_attempts,
        });
        signed(&self.keys[node], self.mesh, Stamp { wall_ms, logical: 0 }, Some("agent"), body)
    }

    fn resolve(&self, records: &[&SignedRecord]) -> TaskState {
        let stored: Vec<StoredRecord> = records.iter().map(|record| StoredRecord::Valid((*record).clone())).collect();
        resolve(&self.fields, &stored, ResolveContext { members: &self.members, probes: &self.probes })
    }
}

/// A claim is judged against the requirements it names, with the probe it names, whatever
/// the task's field says now: naming one its machine lacks loses at the gate on a task that
/// requires nothing, and naming none counts on a task that now requires a GPU.
#[test]
fn a_claim_is_judged_by_the_requirements_it_names() {
    let mut world = world();
    let names_gpu = world.claim(0, 0, 10_000, &[gpu()], 3);
    let state = world.resolve(&[&names_gpu]);
    assert_eq!(state.status, TaskStatus::Open);
    assert!(matches!(&state.lost_claims[0].reason, LossReason::Gate { unmet } if unmet[0].starts_with("gpu")));

    let names_none = world.claim(0, 0, 10_000, &[], 3);
    world.fields.requires = vec![gpu()];
    let state = world.resolve(&[&names_none]);
    assert_eq!(state.status, TaskStatus::Claimed);
    assert!(state.lost_claims.is_empty());
    // The GPU box meets what it names.
    let gpu_box = world.claim(1, 0, 10_000, &[gpu()], 3);
    assert_eq!(world.resolve(&[&gpu_box]).status, TaskStatus::Claimed);
}

/// The attempt limit is a term of the claim too: an edit lowering `max_attempts` below the
/// failures so far leaves the holder in place; it applies to claims made after it (which name
/// the lower limit and lose), and to whether a task with no holder has failed for good.
#[test]
fn an_edit_of_max_attempts_never_ejects_the_current_holder() {
    let mut world = world();
    let first = world.claim(0, 0, 10_000, &[], 3);
    let fail = signed(
        &world.keys[0],
        world.mesh,
        Stamp { wall_ms: 11_000, logical: 0 },
        Some("agent"),
        RecordBody::Fail { task: world.fields.id.clone(), claim: first.id(), reason: "broke".into() },
    );
    let second = world.claim(2, 1, 12_000, &[], 3);
    world.fields.max_attempts = 1;
    let state = world.resolve(&[&first, &fail, &second]);
    assert_eq!((state.status, state.failures), (TaskStatus::Claimed, 1));
    assert_eq!(state.holder.as_ref().map(|holder| holder.claim), Some(second.id()));

    // A claim naming the lowered limit is out of attempts; with no holder the task failed.
    let on_new_terms = world.claim(2, 1, 12_000, &[], 1);
    let state = world.resolve(&[&first, &fail, &on_new_terms]);
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.lost_claims.iter().map(|lost| &lost.reason).collect::<Vec<_>>(), [&LossReason::TaskClosed]);
}

/// A claim of record version 1 names no terms: it is judged, as it always was, by the task's
/// fields as they are now (documents written before claims named their terms keep their
/// outcomes).
#[test]
fn a_version_1_claim_is_judged_by_the_tasks_fields() {
    let mut world = world();
    let body = RecordBody::Claim(Claim {
        task: world.fields.id.clone(),
        generation: 0,
        lamport: 1,
        lease_ms: LEASE_MS,
        probe: Some(world.probe_ids[0]),
        quorum: false,
        requires: Vec::new(),
        max_attempts: 0,
    });
    let record = meshwork_protocol::Record {
        version: RECORD_VERSION_LEGACY,
        mesh: world.mesh,
        signer: world.keys[0].node_id(),
        agent: Some(AgentName::new("agent").unwrap()),
        stamp: Stamp { wall_ms: 10_000, logical: 0 },
        body,
    };
    let legacy = SignedRecord::sign(record, &world.keys[0]).unwrap();
    assert_eq!(world.resolve(&[&legacy]).status, TaskStatus::Claimed);
    world.fields.requires = vec![gpu()];
    let state = world.resolve(&[&legacy]);
    assert_eq!(state.status, TaskStatus::Open);
    assert!(matches!(state.lost_claims[0].reason, LossReason::Gate { .. }));
}
