//! Deterministic resolution: a task's state as a pure function of its fields and records.
//!
//! `resolve` never depends on the order records arrived in, on which node computes it, or on
//! that node's clock (invariant 1, convergence). Read [`resolve`] top to bottom: validity,
//! then generations one by one, then the finishing records.

use std::collections::BTreeMap;

use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::limits::RECORDS_PER_TASK_MAX;
use meshwork_protocol::record::{Claim, Handoff, RecordBody};
use meshwork_protocol::{AgentName, NodeId, RecordId, SignedRecord, Stamp, TaskId};
use sha2::{Digest, Sha256};

use crate::gate;
use crate::membership::MemberSet;
use crate::probes::ProbeBook;
use crate::task::TaskFields;

/// The derived state of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Every valid claim ever made on the task, won or lost, by id.
    pub claims: BTreeMap<RecordId, ClaimEntry>,
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

/// The accepted holder of the current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub claim: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub claimed_at: Stamp,
    /// When the lease ends unless renewed, in ms since the epoch, as the records say.
    pub lease_until_ms: u64,
    pub quorum: bool,
}

/// A claim that did not win, and why; its records are kept all the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostClaim {
    pub claim: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub generation: u32,
    pub claimed_at: Stamp,
    pub reason: LossReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A quorum claim without acknowledgements of a majority of members.
    QuorumMissing,
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
            LossReason::QuorumMissing => f.write_str("quorum claim without a majority of acknowledgements"),
            LossReason::TaskClosed => f.write_str("the task was already finished"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEntry {
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub stamp: Stamp,
    pub claim: Claim,
}

/// Something a node said about a task, with who and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted<T> {
    pub record: RecordId,
    pub node: NodeId,
    pub agent: Option<AgentName>,
    pub at: Stamp,
    pub value: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
        claims: BTreeMap::new(),
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
    run_generations(fields, &records, &mut state);
    apply_finishing_records(&records, &mut state);
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

/// Gathers the claims; those that can never count (gate, approval, quorum) are lost now.
fn collect_claims(
    fields: &TaskFields,
    records: &[SignedRecord],
    context: ResolveContext<'_>,
    first_approval: Option<Stamp>,
    state: &mut TaskState,
) {
    let member_count = context.members.current().count();
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
        } else if claim.quorum && !quorum_reached(member_count) {
            Some(LossReason::QuorumMissing)
        } else {
            None
        };
        if let Some(reason) = refusal {
            state.lost_claims.push(lost(signed.id(), &entry, reason));
        }
        state.claims.insert(signed.id(), entry);
    }
}

/// A quorum claim counts once a majority of members acknowledged it. The claimer's own claim
/// is its acknowledgement; acknowledgement records from other members arrive with the mesh.
fn quorum_reached(member_count: usize) -> bool {
    let acknowledgements = 1;
    acknowledgements * 2 > member_count
}

fn gate_unmet(fields: &TaskFields, claim: &Claim, signer: &NodeId, context: ResolveContext<'_>) -> Vec<String> {
    if fields.requires.is_empty() {
        return Vec::new();
    }
    // The claim names the probe it was made under, so every node judges it alike.
    let probe = claim.probe.and_then(|id| context.probes.get(&id)).filter(|entry| entry.node == *signer);
    gate::unmet(&fields.requires, probe.map(|entry| &entry.probe))
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
fn winner_key(task: &TaskId, id: RecordId, entry: &ClaimEntry) -> (u64, u64, NodeId, RecordId) {
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
    /// Ended at this wall time; `failed` counts toward `max_attempts`.
    Ended { at_ms: u64, failed: bool, failure: Option<Noted<String>> },
}

/// Walks the generations: the winner of each, and whether its tenure ended.
fn run_generations(fields: &TaskFields, records: &[SignedRecord], state: &mut TaskState) {
    let refused: Vec<RecordId> = state.lost_claims.iter().map(|lost| lost.claim).collect();
    let eligible: Vec<(RecordId, ClaimEntry)> =
        state.claims.iter().filter(|(id, _)| !refused.contains(id)).map(|(id, entry)| (*id, entry.clone())).collect();
    let mut previous_end_ms: Option<u64> = None;
    let mut placed: Vec<RecordId> = Vec::new();
    loop {
        let generation = state.generation;
        let (candidates, early): (Vec<_>, Vec<_>) = eligible
            .iter()
            .filter(|(_, entry)| entry.claim.generation == generation)
            .partition(|(_, entry)| previous_end_ms.is_none_or(|end| entry.stamp.wall_ms > end));
        for (id, entry) in &early {
            state.lost_claims.push(lost(*id, entry, LossReason::EarlyTakeover));
            placed.push(*id);
        }
        let Some((winner_id, winner)) = candidates
            .iter()
            .min_by_key(|(id, entry)| winner_key(&fields.id, *id, entry))
            .map(|(id, entry)| (*id, entry.clone()))
        else {
            break;
        };
        if state.failures >= fields.max_attempts {
            // Out of attempts: nobody may hold the task again.
            for (id, entry) in &candidates {
                state.lost_claims.push(lost(*id, entry, LossReason::TaskClosed));
                placed.push(*id);
            }
            break;
        }
        for (id, entry) in candidates.iter().filter(|(id, _)| *id != winner_id) {
            let reason = LossReason::LostTo { winner: winner.node, winner_agent: winner.agent.clone() };
            state.lost_claims.push(lost(*id, entry, reason));
            placed.push(*id);
        }
        placed.push(winner_id);
        state.attempts += 1;
        let lease_until = lease_until_ms(winner_id, &winner, records);
        // An expired lease ends the generation only through a takeover stamped after it.
        let taken_over = eligible
            .iter()
            .any(|(_, entry)| entry.claim.generation == generation + 1 && entry.stamp.wall_ms > lease_until);
        match tenure_end(winner_id, &winner, records, lease_until, taken_over) {
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
            TenureEnd::Ended { at_ms, failed, failure } => {
                if failed {
                    state.failures += 1;
                }
                if failure.is_some() {
                    state.failure = failure;
                }
                previous_end_ms = Some(at_ms);
                state.generation += 1;
            }
        }
    }
    if state.holder.is_none() && state.failures >= fields.max_attempts {
        state.status = TaskStatus::Failed;
    }
    for (id, entry) in &eligible {
        if !placed.contains(id) {
            let early_takeover = entry.claim.generation == state.generation + 1
                && state.holder.as_ref().is_some_and(|holder| entry.stamp.wall_ms <= holder.lease_until_ms);
            let reason = if state.status == TaskStatus::Failed {
                LossReason::TaskClosed
            } else if early_takeover {
                LossReason::EarlyTakeover
            } else {
                LossReason::WrongGeneration { open: state.generation }
            };
            state.lost_claims.push(lost(*id, entry, reason));
        }
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
/// expiry of its lease when a next-generation claim stamped after that expiry takes over.
fn tenure_end(
    claim_id: RecordId,
    claim: &ClaimEntry,
    records: &[SignedRecord],
    lease_until: u64,
    taken_over: bool,
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
        .min_by_key(|(stamp, signed, _)| (*stamp, signed.id()));
    match closing {
        Some((stamp, signed, reason)) => TenureEnd::Ended {
            at_ms: stamp.wall_ms,
            failed: reason.is_some(),
            failure: reason.map(|reason| noted(signed, reason.clone())),
        },
        None if taken_over => TenureEnd::Ended { at_ms: lease_until, failed: true, failure: None },
        None => TenureEnd::Held,
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
            lost.claim == *claim
                && matches!(lost.reason, LossReason::Gate { .. } | LossReason::NotApproved | LossReason::QuorumMissing)
        });
        if refused {
            continue;
        }
        let won = !state.lost_claims.iter().any(|lost| lost.claim == *claim);
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
    let accepted = accepted.map(|(_, result)| result).or_else(|| (!results.is_empty()).then(|| results.remove(0)));
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
