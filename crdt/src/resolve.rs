//! Deterministic resolution: a task's state as a pure function of its fields and records.
//!
//! `resolve` never depends on the order records arrived in, on which node computes it, or on
//! that node's clock (invariant 1, convergence). Read [`resolve`] top to bottom: validity,
//! then the claims and the quorum votes, then generations one by one, then the finishing
//! records.

use std::collections::{BTreeMap, BTreeSet};

use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::limits::RECORDS_PER_TASK_MAX;
use meshwork_protocol::record::{Claim, Handoff, RecordBody};
use meshwork_protocol::{AgentName, NodeId, RecordId, Requirement, SignedRecord, Stamp, TaskId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gate;
use crate::membership::MemberSet;
use crate::probes::ProbeBook;
use crate::task::TaskFields;
use crate::task_json_cache::TaskJsonCell;

/// One task as a replica knows it: its fields, and the state [`resolve`] derived from them
/// and its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub fields: TaskFields,
    pub state: TaskState,
    /// The task object's JSON once a listing wrote it; empty in a new entry.
    #[serde(skip)]
    pub(crate) json: TaskJsonCell,
}

impl TaskEntry {
    pub fn new(fields: TaskFields, state: TaskState) -> TaskEntry {
        TaskEntry { fields, state, json: TaskJsonCell::default() }
    }
}

/// The derived state of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub status: TaskStatus,
    /// The generation open for claims, or held by `holder`.
    pub generation: u32,
    /// Generations that had an accepted holder.
    pub attempts: u32,
    /// Generations that ended by failure or by a lease that expired and was taken over.
    pub failures: u32,
    pub holder: Option<Holder>,
    pub lost_claims: Vec<LostClaim>,
    /// Won claims whose lease ran out and whose generation another claim took over, by
    /// generation: their agents may still be at work and must be told.
    pub taken_over: Vec<TakenOver>,
    /// Every valid claim ever made on the task, won or lost, by id.
    pub claims: BTreeMap<RecordId, ClaimEntry>,
    /// The votes of every quorum claim and of every other claim any member voted for, by
    /// claim id. A claim whose tally [`QuorumTally::reached`] its majority is **confirmed**: it
    /// wins its generation. A quorum claim is a candidate for its generation only once
    /// confirmed; one that is not yet and is not in `lost_claims` is pending
    /// ([`TaskState::pending_quorum`]).
    pub tallies: BTreeMap<RecordId, QuorumTally>,
    /// The members whose vote in a generation is cast (for any claim, counted or not), by
    /// generation: a member votes once per generation.
    pub voted: BTreeMap<u32, BTreeSet<NodeId>>,
    pub progress: Vec<Noted<ProgressNote>>,
    pub handoffs: Vec<Noted<Handoff>>,
    pub result: Option<Noted<String>>,
    pub other_results: Vec<Noted<String>>,
    pub failure: Option<Noted<String>>,
    pub cancelled: Option<Noted<String>>,
    pub approved: bool,
    /// 1 + this is the Lamport number of the next claim.
    pub lamport_max: u64,
    /// Records ignored: undecodable, forged, from a non-member or another mesh, about another
    /// task, over the cap.
    pub rejected: u32,
    /// Records that count, at most [`RECORDS_PER_TASK_MAX`].
    pub records: u32,
    pub updated_at: Stamp,
}

impl TaskState {
    /// Quorum claims waiting for votes: without a majority yet, and not lost (they may still
    /// count when acknowledgements arrive, so no loss is reported for them).
    pub fn pending_quorum(&self) -> impl Iterator<Item = (&RecordId, &QuorumTally)> {
        self.tallies.iter().filter(|(id, tally)| {
            let quorum_claim = self.claims.get(*id).is_some_and(|entry| entry.claim.quorum);
            quorum_claim && !tally.reached() && !self.lost_claims.iter().any(|lost| lost.claim == **id)
        })
    }

    /// Whether `node`'s vote in `generation` is already cast, for any claim of it.
    pub fn has_voted(&self, node: &NodeId, generation: u32) -> bool {
        self.voted.get(&generation).is_some_and(|voters| voters.contains(node))
    }

    /// Whether `claim` is confirmed: a majority of the members at its stamp voted for it first
    /// in its generation. A confirmed claim wins its generation and never loses (invariant 7).
    pub fn is_confirmed(&self, claim: &RecordId) -> bool {
        self.tallies.get(claim).is_some_and(QuorumTally::reached)
    }
}

/// The votes of one claim (invariant 7, confirmed claims are exclusive).
///
/// A member's votes for (task, generation) are its `ack` records naming a claim of that
/// generation and its own quorum claims of that generation; only the first, by
/// `(stamp, record id)`, counts. The electorate of a claim is the members at its stamp: so a
/// member counts toward at most one claim per generation, whatever it signs, and two claims
/// made under one electorate can never both have a majority.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumTally {
    /// The generation the claim claims.
    pub generation: u32,
    /// Members at the claim's stamp whose first vote of the generation is this claim, by node
    /// id.
    pub voters: Vec<NodeId>,
    /// `voters.len()`.
    pub votes: u32,
    /// Votes needed to count: a majority of the members at the claim's stamp, `members / 2 + 1`.
    pub needed: u32,
}

impl QuorumTally {
    /// Whether the claim has its majority, and so counts.
    pub fn reached(&self) -> bool {
        self.votes >= self.needed
    }
}

/// The accepted holder of the current generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub claim: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub claimed_at: Stamp,
    /// When the lease ends unless renewed, in ms since the epoch, as the records say.
    pub lease_until_ms: u64,
    pub quorum: bool,
}

/// A claim that won its generation and held it until its lease ran out, when a claim of the
/// next generation, stamped after the end of the lease, took the task over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenOver {
    pub claim: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub generation: u32,
    /// The end of the lease, as last renewed in the records.
    pub lease_until_ms: u64,
}

/// A claim that did not win, and why; its records are kept all the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostClaim {
    pub claim: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub generation: u32,
    pub claimed_at: Stamp,
    pub reason: LossReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossReason {
    /// Another claim of the same generation came first in the winner order.
    LostTo {
        winner: NodeId,
        winner_agent: Option<AgentName>,
    },
    /// Took over before the previous generation had ended, per the records.
    EarlyTakeover,
    /// Names a generation that never opened, or one that is past.
    WrongGeneration {
        open: u32,
    },
    /// The claiming machine lacks a hard requirement (invariant 6, gates hold).
    Gate {
        unmet: Vec<String>,
    },
    NotApproved,
    /// A quorum claim whose generation's votes split: no quorum claim of it can reach a
    /// majority any more, so the generation ended without a holder.
    QuorumSplit,
    /// The task was finished or cancelled, or out of attempts, before this claim counted.
    TaskClosed,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::LostTo { winner, winner_agent: Some(agent) } => write!(f, "lost to {agent}@{winner}"),
            LossReason::LostTo { winner, winner_agent: None } => write!(f, "lost to {winner}"),
            LossReason::EarlyTakeover => f.write_str("took over before the previous holder's lease ended"),
            LossReason::WrongGeneration { open } => write!(f, "stale generation (generation {open} is open)"),
            LossReason::Gate { unmet } => write!(f, "gate refused: {}", unmet.join("; ")),
            LossReason::NotApproved => f.write_str("claimed before the task was approved"),
            LossReason::QuorumSplit => {
                f.write_str("the votes of its generation split; no quorum claim could reach a majority")
            }
            LossReason::TaskClosed => f.write_str("the task was already finished"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimEntry {
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub stamp: Stamp,
    pub claim: Claim,
}

/// Something a node said about a task, with who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted<T> {
    pub record: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub at: Stamp,
    pub value: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressNote {
    pub message: String,
    pub percent: Option<u8>,
}

/// What the resolver consults besides the task itself.
#[derive(Debug, Clone, Copy)]
pub struct ResolveContext<'a> {
    pub members: &'a MemberSet,
    pub probes: &'a ProbeBook,
}

/// A record stored under a task, as read from the document: decoded or not.
// Nearly every stored record is valid; boxing them all would cost an allocation each to
// shrink the rare `Invalid`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StoredRecord {
    Valid(SignedRecord),
    /// Bytes that did not decode or verify; counted, never obeyed.
    Invalid,
}

/// Derives a task's state from its fields and the records stored under it.
pub fn resolve(fields: &TaskFields, stored: &[StoredRecord], context: ResolveContext<'_>) -> TaskState {
    let (records, rejected) = valid_records(&fields.id, stored, context.members);
    let mut state = TaskState {
        status: TaskStatus::Open,
        generation: 0,
        attempts: 0,
        failures: 0,
        holder: None,
        lost_claims: Vec::new(),
        taken_over: Vec::new(),
        claims: BTreeMap::new(),
        tallies: BTreeMap::new(),
        voted: BTreeMap::new(),
        progress: Vec::new(),
        handoffs: Vec::new(),
        result: None,
        other_results: Vec::new(),
        failure: None,
        cancelled: None,
        approved: false,
        lamport_max: 0,
        rejected,
        records: u32::try_from(records.len()).unwrap_or(u32::MAX),
        updated_at: records.iter().map(|r| r.record().stamp).max().unwrap_or(fields.created_at).max(fields.created_at),
    };
    let approvals: Vec<Stamp> = records
        .iter()
        .filter(|r| matches!(r.record().body, RecordBody::Approve { .. }))
        .map(|r| r.record().stamp)
        .collect();
    state.approved = !approvals.is_empty();
    let first_approval = approvals.iter().min().copied();
    collect_claims(fields, &records, context, first_approval, &mut state);
    (state.tallies, state.voted) = tally_votes(&records, &state.claims, context.members);
    let quorum = QuorumWalk::new(&state, context.members);
    run_generations(fields, &records, &quorum, &mut state);
    apply_finishing_records(&records, &mut state);
    close_pending_on_finished(&mut state);
    collect_notes(&records, &mut state);
    debug_assert!(state.holder.is_none() || state.status == TaskStatus::Claimed, "a holder implies claimed");
    state
}

/// Keeps the records that count: decoded and verified, about this task, signed by a node
/// that was a member at the record's stamp. Beyond [`RECORDS_PER_TASK_MAX`] (in record id
/// order, the same on every node) records are ignored.
fn valid_records(task: &TaskId, stored: &[StoredRecord], members: &MemberSet) -> (Vec<SignedRecord>, u32) {
    let mut rejected = 0u32;
    let mut valid: Vec<SignedRecord> = Vec::new();
    for entry in stored {
        match entry {
            StoredRecord::Valid(signed) if signed.record().task() == Some(task) && members.admits(signed.record()) => {
                valid.push(signed.clone());
            }
            _ => rejected += 1,
        }
    }
    valid.sort_by_key(SignedRecord::id);
    valid.dedup_by_key(|signed| signed.id());
    if valid.len() > RECORDS_PER_TASK_MAX {
        rejected += u32::try_from(valid.len() - RECORDS_PER_TASK_MAX).unwrap_or(u32::MAX);
        valid.truncate(RECORDS_PER_TASK_MAX);
    }
    (valid, rejected)
}

/// The terms a claim is judged by: the requirements and the attempt limit it names. Which
/// claim counts is decided by signed records only (invariant 4): the task's `requires` and
/// `max_attempts` are unsigned, editable fields, and judging a claim by them would let an
/// edit make a claim that counted stop counting (eject its holder, or void the `done` that
/// rests on it). An edit binds the claims of nodes that saw it; a claim made concurrently
/// with an edit is judged by what its claimer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTerms<'a> {
    pub requires: &'a [Requirement],
    pub max_attempts: u32,
}

/// The terms of `claim` on the task of `fields`. A claim of record version 1 names none; it
/// is judged, as it always was, by the task's fields as they are now.
pub fn claim_terms<'a>(fields: &'a TaskFields, claim: &'a Claim) -> ClaimTerms<'a> {
    let judged_by_fields = sabotage::is_broken(sabotage::BrokenRule::ClaimsJudgedByFields);
    if claim.names_terms() && !judged_by_fields {
        ClaimTerms { requires: &claim.requires, max_attempts: claim.max_attempts }
    } else {
        ClaimTerms { requires: &fields.requires, max_attempts: fields.max_attempts }
    }
}

/// Gathers the claims; those that can never count (gate, approval) are lost now.
fn collect_claims(
    fields: &TaskFields,
    records: &[SignedRecord],
    context: ResolveContext<'_>,
    first_approval: Option<Stamp>,
    state: &mut TaskState,
) {
    for signed in records {
        let record = signed.record();
        let RecordBody::Claim(claim) = &record.body else { continue };
        state.lamport_max = state.lamport_max.max(claim.lamport);
        let entry =
            ClaimEntry { node: record.signer, agent: record.agent.clone(), stamp: record.stamp, claim: claim.clone() };
        let unmet = gate_unmet(fields, claim, &record.signer, context);
        let refusal = if !unmet.is_empty() {
            Some(LossReason::Gate { unmet })
        } else if fields.needs_approval && first_approval.is_none_or(|approved| approved >= record.stamp) {
            Some(LossReason::NotApproved)
        } else {
            None
        };
        if let Some(reason) = refusal {
            state.lost_claims.push(lost(signed.id(), &entry, reason));
        }
        state.claims.insert(signed.id(), entry);
    }
}

/// Tallies the votes of every claim (invariant 7, confirmed claims are exclusive): each
/// signer's first vote per generation, by `(stamp, record id)`, counts for the claim it names
/// when the signer was a member at that claim's stamp. An `ack` that names no claim of this
/// task and of its own generation is no vote at all: it is kept and counted in `records`,
/// never obeyed. Returns the tallies (every quorum claim's, and every claim's with a vote) and
/// who voted in each generation.
fn tally_votes(
    records: &[SignedRecord],
    claims: &BTreeMap<RecordId, ClaimEntry>,
    members: &MemberSet,
) -> (BTreeMap<RecordId, QuorumTally>, BTreeMap<u32, BTreeSet<NodeId>>) {
    let is_claim_of =
        |claim: &RecordId, generation: u32| claims.get(claim).is_some_and(|entry| entry.claim.generation == generation);
    // (generation, signer) -> ((stamp, record id) of its first vote, the claim it names).
    let mut first_votes: BTreeMap<(u32, NodeId), ((Stamp, RecordId), RecordId)> = BTreeMap::new();
    for signed in records {
        let record = signed.record();
        let (generation, claim) = match &record.body {
            RecordBody::Claim(claim) if claim.quorum => (claim.generation, signed.id()),
            RecordBody::Ack { claim, generation, .. } if is_claim_of(claim, *generation) => (*generation, *claim),
            _ => continue,
        };
        let vote = ((record.stamp, signed.id()), claim);
        let first = first_votes.entry((generation, record.signer)).or_insert(vote);
        if vote.0 < first.0 {
            *first = vote;
        }
    }
    let tally_of = |entry: &ClaimEntry| {
        let needed = majority(members.count_at(entry.stamp));
        QuorumTally { generation: entry.claim.generation, voters: Vec::new(), votes: 0, needed }
    };
    let mut tallies: BTreeMap<RecordId, QuorumTally> =
        claims.iter().filter(|(_, entry)| entry.claim.quorum).map(|(id, entry)| (*id, tally_of(entry))).collect();
    let mut voted: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
    // In (generation, signer) order, so each tally's voters come sorted by node id.
    for ((generation, voter), (_, claim)) in &first_votes {
        voted.entry(*generation).or_default().insert(*voter);
        let Some(entry) = claims.get(claim) else { continue };
        if !members.is_member_at(voter, entry.stamp) {
            continue;
        }
        let tally = tallies.entry(*claim).or_insert_with(|| tally_of(entry));
        tally.voters.push(*voter);
        tally.votes += 1;
    }
    assert_exclusive(&tallies, claims, members);
    (tallies, voted)
}

/// The votes that confirm a claim made under an electorate of `members`: more than half.
pub fn majority(members: usize) -> u32 {
    u32::try_from(members / 2 + 1).unwrap_or(u32::MAX)
}

/// Invariant 7: each member counts once per generation, so two claims made under one
/// electorate cannot both have more than half of it. Claims under different electorates (the
/// members changed between their stamps) can: the walk takes the first in the winner order,
/// and docs/PROTOCOL.md says why that is the limit.
fn assert_exclusive(
    tallies: &BTreeMap<RecordId, QuorumTally>,
    claims: &BTreeMap<RecordId, ClaimEntry>,
    members: &MemberSet,
) {
    let mut confirmed: BTreeMap<u32, Vec<Vec<NodeId>>> = BTreeMap::new();
    for (id, tally) in tallies.iter().filter(|(_, tally)| tally.reached()) {
        let Some(entry) = claims.get(id) else { continue };
        let electorate: Vec<NodeId> = members.at(entry.stamp).collect();
        let of_generation = confirmed.entry(tally.generation).or_default();
        assert!(
            !of_generation.contains(&electorate),
            "invariant 7: two claims of one generation confirmed by majorities of one electorate"
        );
        of_generation.push(electorate);
    }
}

/// What the generation walk needs to know about quorum claims.
struct QuorumWalk {
    /// Quorum claims that lack a majority and were not refused, by generation. They are no
    /// candidates; they lose only once their generation is decided without them.
    pending: BTreeMap<u32, Vec<(RecordId, ClaimEntry)>>,
    /// The ids of the claims in `pending`.
    pending_ids: BTreeSet<RecordId>,
    /// Generations whose votes split: every member that voted is spent, and even if all the
    /// others of its electorate voted for it, no pending claim would reach its majority.
    split: BTreeSet<u32>,
}

impl QuorumWalk {
    fn new(state: &TaskState, members: &MemberSet) -> QuorumWalk {
        let refused: BTreeSet<RecordId> = state.lost_claims.iter().map(|lost| lost.claim).collect();
        let mut pending: BTreeMap<u32, Vec<(RecordId, ClaimEntry)>> = BTreeMap::new();
        for (id, tally) in &state.tallies {
            if tally.reached() || refused.contains(id) {
                continue;
            }
            if let Some(entry) = state.claims.get(id).filter(|entry| entry.claim.quorum) {
                pending.entry(tally.generation).or_default().push((*id, entry.clone()));
            }
        }
        // Split: no pending claim of the generation can reach its majority any more, even if
        // every member of its electorate that has not voted yet voted for it.
        let split = pending
            .iter()
            .filter(|(generation, claims)| {
                let voted = state.voted.get(generation);
                claims.iter().all(|(id, entry)| {
                    let votes = state.tallies.get(id).map_or(0, |tally| tally.votes as usize);
                    let electorate: Vec<NodeId> = members.at(entry.stamp).collect();
                    let unvoted = electorate.iter().filter(|node| voted.is_none_or(|voted| !voted.contains(node)));
                    votes + unvoted.count() < electorate.len() / 2 + 1
                })
            })
            .map(|(generation, _)| *generation)
            .collect();
        let pending_ids = pending.values().flatten().map(|(id, _)| *id).collect();
        QuorumWalk { pending, pending_ids, split }
    }

    fn pending_of(&self, generation: u32) -> &[(RecordId, ClaimEntry)] {
        self.pending.get(&generation).map_or(&[], Vec::as_slice)
    }

    /// A split vote on `generation` among claims stamped after `lease_until`: evidence, like
    /// a counting claim would be, that the previous holder's lease expired and was taken over.
    fn split_after(&self, generation: u32, lease_until: u64) -> bool {
        self.split.contains(&generation)
            && self.pending_of(generation).iter().any(|(_, entry)| entry.stamp.wall_ms > lease_until)
    }
}

/// The requirements a claim names that the probe it names lacks (invariant 6, gates hold).
/// Both are signed records, so the verdict never changes once the probe is known: no edit of
/// the task's fields can refuse a claim that counted.
fn gate_unmet(fields: &TaskFields, claim: &Claim, signer: &NodeId, context: ResolveContext<'_>) -> Vec<String> {
    let requires = claim_terms(fields, claim).requires;
    if requires.is_empty() {
        return Vec::new();
    }
    // The claim names the probe it was made under, so every node judges it alike.
    let probe = claim.probe.and_then(|id| context.probes.get(&id)).filter(|entry| entry.node == *signer);
    gate::unmet(requires, probe.map(|entry| &entry.probe))
}

fn lost(claim: RecordId, entry: &ClaimEntry, reason: LossReason) -> LostClaim {
    LostClaim {
        claim,
        node: entry.node,
        agent: entry.agent.clone(),
        generation: entry.claim.generation,
        claimed_at: entry.stamp,
        reason,
    }
}

/// The winner order: lowest Lamport, then rendezvous hash of (task, node key), then node id,
/// then record id. Never Automerge's own choice of a value (invariant 2, one holder).
pub(crate) fn winner_key(task: &TaskId, id: RecordId, entry: &ClaimEntry) -> (u64, u64, NodeId, RecordId) {
    (entry.claim.lamport, rendezvous(task, &entry.node), entry.node, id)
}

/// Rendezvous hash of a task and a node: spreads wins fairly across nodes.
pub fn rendezvous(task: &TaskId, node: &NodeId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"meshwork-rendezvous-v1\0");
    hasher.update(task.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(node.public_key_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

/// How one generation's tenure ended.
enum TenureEnd {
    /// Still held: no release, failure or takeover in the records.
    Held,
    /// Ended at this stamp; `failed` counts toward `max_attempts`. A claim of the next
    /// generation counts only if stamped after it (the whole hybrid stamp: a node whose clock
    /// is behind stamps its claim in the same millisecond with a higher logical count).
    Ended { at: Stamp, failed: bool, failure: Option<Noted<String>>, taken_over: bool },
}

/// Walks the generations: the winner of each, and whether its tenure ended.
fn run_generations(fields: &TaskFields, records: &[SignedRecord], quorum: &QuorumWalk, state: &mut TaskState) {
    let refused: BTreeSet<RecordId> = state.lost_claims.iter().map(|lost| lost.claim).collect();
    let eligible: Vec<(RecordId, ClaimEntry)> = state
        .claims
        .iter()
        .filter(|(id, _)| !refused.contains(*id) && !quorum.pending_ids.contains(*id))
        .map(|(id, entry)| (*id, entry.clone()))
        .collect();
    // Confirmed claims (a majority voted for them) by generation, best first: a confirmed
    // claim wins its generation and ends the tenure before it (invariant 7).
    let mut confirmed: BTreeMap<u32, (RecordId, ClaimEntry)> = BTreeMap::new();
    for (id, entry) in eligible.iter().filter(|(id, _)| state.is_confirmed(id)) {
        let best = confirmed.entry(entry.claim.generation).or_insert_with(|| (*id, entry.clone()));
        if winner_key(&fields.id, *id, entry) < winner_key(&fields.id, best.0, &best.1) {
            *best = (*id, entry.clone());
        }
    }
    let confirmed_ids: BTreeSet<RecordId> = confirmed.values().map(|(id, _)| *id).collect();
    let mut previous_end: Option<Stamp> = None;
    let mut placed: BTreeSet<RecordId> = BTreeSet::new();
    loop {
        let generation = state.generation;
        let after_previous = |(_, entry): &&(RecordId, ClaimEntry)| previous_end.is_none_or(|end| entry.stamp > end);
        let (candidates, early): (Vec<_>, Vec<_>) =
            eligible.iter().filter(|(_, entry)| entry.claim.generation == generation).partition(after_previous);
        let (waiting, early_waiting): (Vec<_>, Vec<_>) = quorum.pending_of(generation).iter().partition(after_previous);
        for (id, entry) in early.iter().chain(&early_waiting) {
            place_lost(state, &mut placed, *id, entry, LossReason::EarlyTakeover);
        }
        // A claim counts only while fewer generations failed than the limit it names: out of
        // attempts, nobody may hold the task again on those terms.
        let failures = state.failures;
        // A confirmed claim is exempt: a majority saw the task open to it.
        let within_attempts = |(id, entry): &&(RecordId, ClaimEntry)| {
            confirmed_ids.contains(id) || failures < claim_terms(fields, &entry.claim).max_attempts
        };
        let (candidates, closed): (Vec<_>, Vec<_>) = candidates.into_iter().partition(within_attempts);
        let (waiting, closed_waiting): (Vec<_>, Vec<_>) = waiting.into_iter().partition(within_attempts);
        for (id, entry) in closed.iter().chain(&closed_waiting) {
            place_lost(state, &mut placed, *id, entry, LossReason::TaskClosed);
        }
        let confirmed_here = candidates.iter().find(|(id, _)| confirmed_ids.contains(id));
        let Some((winner_id, winner)) = confirmed_here
            .or_else(|| candidates.iter().min_by_key(|(id, entry)| winner_key(&fields.id, *id, entry)))
            .map(|(id, entry)| (*id, entry.clone()))
        else {
            let split_within_attempts = quorum
                .pending_of(generation)
                .iter()
                .any(|(_, entry)| failures < claim_terms(fields, &entry.claim).max_attempts);
            let split = quorum.split.contains(&generation) && split_within_attempts;
            // A confirmed claim of a later generation: a majority saw this one end (its
            // winner's claim stopped counting since, say, by a removal signed before it).
            let confirmed_later = confirmed.range(generation + 1..).next().is_some();
            if split || confirmed_later {
                // Nobody can count in this generation: it ends with no holder and no lease
                // to protect, so the next one opens at once.
                let open = generation + 1;
                for (id, entry) in &waiting {
                    let reason = if split { LossReason::QuorumSplit } else { LossReason::WrongGeneration { open } };
                    place_lost(state, &mut placed, *id, entry, reason);
                }
                previous_end = None;
                state.generation += 1;
                continue;
            }
            break;
        };
        // A quorum claim still waiting for votes loses too: its generation is decided.
        for (id, entry) in candidates.iter().filter(|(id, _)| *id != winner_id).chain(&waiting) {
            let reason = LossReason::LostTo { winner: winner.node, winner_agent: winner.agent.clone() };
            place_lost(state, &mut placed, *id, entry, reason);
        }
        placed.insert(winner_id);
        state.attempts += 1;
        let lease_until = lease_until_ms(winner_id, &winner, records);
        // An expired lease ends the generation only through a takeover stamped after it: a
        // counting claim of the next generation, or a split vote on one.
        let taken_over = eligible
            .iter()
            .any(|(_, entry)| entry.claim.generation == generation + 1 && entry.stamp.wall_ms > lease_until)
            || quorum.split_after(generation + 1, lease_until);
        // The first confirmed claim of a later generation: a majority saw this tenure end.
        let confirmed_next = confirmed.range(generation + 1..).next().map(|(_, (_, entry))| entry.stamp);
        match tenure_end(winner_id, &winner, records, lease_until, taken_over, confirmed_next) {
            TenureEnd::Held => {
                state.status = TaskStatus::Claimed;
                state.holder = Some(Holder {
                    claim: winner_id,
                    node: winner.node,
                    agent: winner.agent.clone(),
                    claimed_at: winner.stamp,
                    lease_until_ms: lease_until,
                    quorum: winner.claim.quorum,
                });
                break;
            }
            TenureEnd::Ended { at, failed, failure, taken_over } => {
                if taken_over {
                    state.taken_over.push(TakenOver {
                        claim: winner_id,
                        node: winner.node,
                        agent: winner.agent.clone(),
                        generation,
                        lease_until_ms: lease_until,
                    });
                }
                if failed {
                    state.failures += 1;
                }
                if failure.is_some() {
                    state.failure = failure;
                }
                previous_end = Some(at);
                state.generation += 1;
            }
        }
    }
    if state.holder.is_none() && state.failures >= fields.max_attempts {
        state.status = TaskStatus::Failed;
    }
    place_the_rest(&eligible, quorum, &placed, state);
}

/// A claim the walk decided loses, for `reason`.
fn place_lost(
    state: &mut TaskState,
    placed: &mut BTreeSet<RecordId>,
    id: RecordId,
    entry: &ClaimEntry,
    reason: LossReason,
) {
    state.lost_claims.push(lost(id, entry, reason));
    placed.insert(id);
}

/// The claims the walk did not reach (their generation is above the open one) lose, except
/// quorum claims still waiting for votes on the open generation or on a takeover of an
/// expired lease: those stay pending, since a majority would make them count.
fn place_the_rest(
    eligible: &[(RecordId, ClaimEntry)],
    quorum: &QuorumWalk,
    placed: &BTreeSet<RecordId>,
    state: &mut TaskState,
) {
    let waiting = quorum.pending.values().flatten();
    for (id, entry) in eligible.iter().chain(waiting).filter(|(id, _)| !placed.contains(id)) {
        let generation = entry.claim.generation;
        let next_to_holder = generation == state.generation + 1 && state.holder.is_some();
        let early_takeover =
            next_to_holder && state.holder.as_ref().is_some_and(|holder| entry.stamp.wall_ms <= holder.lease_until_ms);
        let reason = if state.status == TaskStatus::Failed {
            LossReason::TaskClosed
        } else if early_takeover {
            LossReason::EarlyTakeover
        } else if quorum.pending_ids.contains(id)
            && (next_to_holder || (generation == state.generation && state.holder.is_none()))
        {
            continue;
        } else {
            LossReason::WrongGeneration { open: state.generation }
        };
        state.lost_claims.push(lost(*id, entry, reason));
    }
}

/// The lease of a won claim: its own lease from its stamp, extended by each renewal the
/// holder signed while the lease still held.
fn lease_until_ms(claim_id: RecordId, claim: &ClaimEntry, records: &[SignedRecord]) -> u64 {
    let mut renewals: Vec<Stamp> = records
        .iter()
        .filter(|signed| signed.record().signer == claim.node)
        .filter(|signed| matches!(&signed.record().body, RecordBody::Renew { claim, .. } if *claim == claim_id))
        .map(|signed| signed.record().stamp)
        .collect();
    renewals.sort();
    let mut until = claim.stamp.wall_ms.saturating_add(claim.claim.lease_ms);
    for renewal in renewals {
        if renewal.wall_ms <= until {
            until = until.max(renewal.wall_ms.saturating_add(claim.claim.lease_ms));
        }
    }
    until
}

/// Whether and when the holder's tenure ended: its earliest release or failure, or the
/// expiry of its lease when a next-generation claim stamped after that expiry takes over, or
/// just before a confirmed claim of a later generation (`confirmed_next`, its stamp): a
/// majority saw the tenure end, so a renewal or a closing record they did not see cannot undo
/// that.
fn tenure_end(
    claim_id: RecordId,
    claim: &ClaimEntry,
    records: &[SignedRecord],
    lease_until: u64,
    taken_over: bool,
    confirmed_next: Option<Stamp>,
) -> TenureEnd {
    let closing = records
        .iter()
        .filter(|signed| signed.record().signer == claim.node && signed.record().stamp.wall_ms <= lease_until)
        .filter_map(|signed| {
            let record = signed.record();
            match &record.body {
                RecordBody::Release { claim, .. } if *claim == claim_id => Some((record.stamp, signed, None)),
                RecordBody::Fail { claim, reason, .. } if *claim == claim_id => {
                    Some((record.stamp, signed, Some(reason)))
                }
                _ => None,
            }
        })
        .min_by_key(|(stamp, signed, _)| (*stamp, signed.id()))
        .filter(|(stamp, _, _)| confirmed_next.is_none_or(|next| *stamp < next));
    match closing {
        Some((stamp, signed, reason)) => TenureEnd::Ended {
            at: stamp,
            failed: reason.is_some(),
            failure: reason.map(|reason| noted(signed, reason.clone())),
            taken_over: false,
        },
        None if let Some(next) = confirmed_next => TenureEnd::Ended {
            at: just_before(next).min(Stamp { wall_ms: lease_until, logical: u32::MAX }),
            failed: true,
            failure: None,
            taken_over: true,
        },
        // Every stamp of the lease's last millisecond is inside it.
        None if taken_over => TenureEnd::Ended {
            at: Stamp { wall_ms: lease_until, logical: u32::MAX },
            failed: true,
            failure: None,
            taken_over: true,
        },
        None => TenureEnd::Held,
    }
}

/// The stamp right before `stamp`: a tenure taken over by a claim ends before that claim.
fn just_before(stamp: Stamp) -> Stamp {
    match stamp.logical.checked_sub(1) {
        Some(logical) => Stamp { logical, ..stamp },
        None => Stamp { wall_ms: stamp.wall_ms.saturating_sub(1), logical: u32::MAX },
    }
}

fn noted<T>(signed: &SignedRecord, value: T) -> Noted<T> {
    let record = signed.record();
    Noted { record: signed.id(), node: record.signer, agent: record.agent.clone(), at: record.stamp, value }
}

/// Done and cancel. Finished stays finished (invariant 4): once any valid `done` exists the
/// task is done, whatever else the records say.
fn apply_finishing_records(records: &[SignedRecord], state: &mut TaskState) {
    let mut results: Vec<Noted<String>> = Vec::new();
    let mut accepted: Option<(u32, Noted<String>)> = None;
    for signed in records {
        let record = signed.record();
        let RecordBody::Done { claim, summary, .. } = &record.body else { continue };
        // A done counts when it continues a claim its own node made (won or lost by order);
        // a claim refused by a gate or approval yields no result.
        let Some(entry) = state.claims.get(claim).filter(|entry| entry.node == record.signer) else { continue };
        let refused = state.lost_claims.iter().any(|lost| {
            lost.claim == *claim && matches!(lost.reason, LossReason::Gate { .. } | LossReason::NotApproved)
        });
        if refused {
            continue;
        }
        // A quorum claim without its majority never won, whatever the node that wrote the
        // `done` believed; its result is kept beside the others like a loser's.
        let counted = !entry.claim.quorum || state.is_confirmed(claim);
        let won = counted && !state.lost_claims.iter().any(|lost| lost.claim == *claim);
        let result = noted(signed, summary.clone());
        if won && accepted.as_ref().is_none_or(|(generation, _)| entry.claim.generation > *generation) {
            if let Some((_, previous)) = accepted.take() {
                results.push(previous);
            }
            accepted = Some((entry.claim.generation, result));
        } else {
            results.push(result);
        }
    }
    results.sort_by_key(|result| (result.at, result.node, result.record));
    let any_done_finishes = !sabotage::is_broken(sabotage::BrokenRule::DoneNeedsWinningClaim);
    let accepted = accepted
        .map(|(_, result)| result)
        .or_else(|| (any_done_finishes && !results.is_empty()).then(|| results.remove(0)));
    if let Some(result) = accepted {
        state.status = TaskStatus::Done;
        state.holder = None;
        state.result = Some(result);
        state.other_results = results;
        return;
    }
    let cancel = records
        .iter()
        .filter_map(|signed| match &signed.record().body {
            RecordBody::Cancel { reason, .. } => Some(noted(signed, reason.clone())),
            _ => None,
        })
        .min_by_key(|noted| (noted.at, noted.record));
    if let Some(cancel) = cancel {
        state.status = TaskStatus::Cancelled;
        state.holder = None;
        state.cancelled = Some(cancel);
    }
}

/// A quorum claim still pending when the task finished can never hold it: it loses now, so
/// its agent is told.
fn close_pending_on_finished(state: &mut TaskState) {
    if !state.status.is_finished() {
        return;
    }
    let closed: Vec<LostClaim> = state
        .pending_quorum()
        .filter_map(|(id, _)| state.claims.get(id).map(|entry| lost(*id, entry, LossReason::TaskClosed)))
        .collect();
    state.lost_claims.extend(closed);
}

/// Progress and handoffs, kept from every claimer, winners and losers alike.
fn collect_notes(records: &[SignedRecord], state: &mut TaskState) {
    for signed in records {
        let record = signed.record();
        let own_claim = |claim: &RecordId| state.claims.get(claim).is_some_and(|entry| entry.node == record.signer);
        match &record.body {
            RecordBody::Progress { claim, message, percent, .. } if own_claim(claim) => {
                state.progress.push(noted(signed, ProgressNote { message: message.clone(), percent: *percent }));
            }
            RecordBody::Handoff(handoff) if own_claim(&handoff.claim) => {
                state.handoffs.push(noted(signed, handoff.clone()))
            }
            _ => {}
        }
    }
    state.progress.sort_by_key(|note| (note.at, note.record));
    state.handoffs.sort_by_key(|note| (note.at, note.record));
    state.lost_claims.sort_by_key(|lost| (lost.generation, lost.claimed_at, lost.claim));
}

/// Deliberately broken resolver rules, switched on only by tests that prove netsim's
/// checkers catch a broken core (`netsim/tests/broken_rule.rs`). The switch is per thread,
/// off unless a test sets it, and it exists only with the `test-support` feature, which only
/// tests enable: a release build has no way to break a rule.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod sabotage {
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum BrokenRule {
        /// A `done` finishes the task only while its claim is the winner, so a winning claim
        /// that arrives late turns a done task back into a claimed one (breaks invariant 4).
        DoneNeedsWinningClaim,
        /// Every claim is judged by the task's current fields instead of the terms it names,
        /// so an edit of the requirements ejects a holder or voids a `done` (the defect of
        /// judging claims by editable fields; breaks invariant 4).
        ClaimsJudgedByFields,
        /// `ready_tasks_at` leaves stale tasks out, so a task whose holder vanished is never
        /// taken over by `claim --next`.
        StaleNotOffered,
    }

    thread_local! {
        static BROKEN: Cell<Option<BrokenRule>> = const { Cell::new(None) };
    }

    /// Breaks `rule` on this thread until the guard is dropped.
    pub fn break_rule(rule: BrokenRule) -> Guard {
        BROKEN.with(|broken| broken.set(Some(rule)));
        Guard(())
    }

    #[derive(Debug)]
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            BROKEN.with(|broken| broken.set(None));
        }
    }

    pub(crate) fn is_broken(rule: BrokenRule) -> bool {
        BROKEN.with(|broken| broken.get() == Some(rule))
    }
}

/// Without the `test-support` feature no rule can be broken: the check is a constant.
#[cfg(not(feature = "test-support"))]
pub(crate) mod sabotage {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum BrokenRule {
        DoneNeedsWinningClaim,
        ClaimsJudgedByFields,
        StaleNotOffered,
    }

    pub(crate) const fn is_broken(_rule: BrokenRule) -> bool {
        false
    }
}
