//! Local operations: what an agent asks its node to do, checked against the derived state,
//! written as one change each. Every refusal carries a contract error code.

use std::collections::BTreeSet;

use meshwork_protocol::api::{AddTask, EditTask, HandoffRequest, TaskStatus};
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::limits::*;
use meshwork_protocol::record::{Claim, Handoff};
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::{
    AgentName, ErrorCode, NodeId, NodeKey, Probe, RecordBody, RecordId, Requirement, SignedRecord, TaskId,
};

use crate::document::{DocError, Touched, node_record_key, put_task_record};
use crate::fields::{FieldEdit, write_edit, write_new_task};
use crate::gate;
use crate::membership::Member;
use crate::ready::cycle_through;
use crate::replica::{Replica, SignError};
use crate::resolve::{ClaimEntry, TaskEntry, winner_key};
use crate::task::TaskFields;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error("{0}")]
    Refused(ErrorBody),
    #[error("the document has no mesh id; run `meshwork init`")]
    NoMesh,
    #[error("could not sign a record: {0}")]
    Record(String),
    /// Boxed: Automerge's errors are large and refusals are the common case.
    #[error(transparent)]
    Doc(Box<DocError>),
    /// The operation wrote its record, and the record does not count: a claim that lost as
    /// soon as it was derived. The answer is the refusal, and the change must still be stored
    /// and pushed like any other (later changes depend on it).
    #[error("{refusal}")]
    Written { applied: Box<Applied>, refusal: ErrorBody },
}

impl From<SignError> for OpError {
    fn from(error: SignError) -> OpError {
        match error {
            SignError::NoMesh => OpError::NoMesh,
            SignError::Record(reason) => OpError::Record(reason),
        }
    }
}

impl From<DocError> for OpError {
    fn from(error: DocError) -> OpError {
        OpError::Doc(Box::new(error))
    }
}

impl OpError {
    fn refused(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError::Refused(ErrorBody::new(code, message))
    }

    /// The change a refused operation wrote all the same ([`OpError::Written`]).
    pub fn written(&self) -> Option<&Applied> {
        match self {
            OpError::Written { applied, .. } => Some(applied),
            _ => None,
        }
    }

    /// The contract error this failure shows as.
    pub fn to_error_body(&self) -> ErrorBody {
        match self {
            OpError::Refused(body) | OpError::Written { refusal: body, .. } => body.clone(),
            other => ErrorBody::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

impl From<ErrorBody> for OpError {
    fn from(body: ErrorBody) -> OpError {
        OpError::Refused(body)
    }
}

/// Who asks: the node's key (it signs) and the local agent it vouches for.
#[derive(Debug, Clone, Copy)]
pub struct Speaker<'a> {
    pub key: &'a NodeKey,
    pub agent: &'a AgentName,
}

/// A successful operation: the change to persist (empty if nothing changed) and its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub changes: Vec<u8>,
    pub task: TaskId,
    /// The record the operation is about: the one it signed, or for a claim that changed
    /// nothing the speaker's claim already there. `None` for operations that sign nothing.
    pub record: Option<RecordId>,
}

/// How to claim ([`Replica::claim_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    /// A quorum claim (`claim --quorum`): it counts only once a majority of the current
    /// members voted for it (invariant 7), and until then it is pending, not held.
    pub quorum: bool,
}

/// An acknowledgement this node owes: its vote for a pending quorum claim or for another
/// node's claim that holds a task ([`Replica::acks_due`], [`Replica::acknowledge`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AckDue {
    pub task: TaskId,
    pub claim: RecordId,
    pub generation: u32,
}

/// Where a claim of the speaker's would go.
enum ClaimTarget {
    /// The speaker holds the task already, by this claim.
    Held(RecordId),
    /// A new claim names this generation.
    Generation(u32),
}

fn check_text(what: &str, text: &str, limit_name: &str, limit: usize) -> Result<(), ErrorBody> {
    if text.len() > limit { Err(ErrorBody::over_limit(what, limit_name, limit)) } else { Ok(()) }
}

fn check_list(what: &str, items: &[String]) -> Result<(), ErrorBody> {
    if items.len() > LIST_ITEMS_MAX {
        return Err(ErrorBody::over_limit(&format!("the number of {what}"), "LIST_ITEMS_MAX", LIST_ITEMS_MAX));
    }
    for item in items {
        check_text(&format!("one of {what}"), item, "FIELD_BYTES_MAX", FIELD_BYTES_MAX)?;
        if item.is_empty() {
            return Err(ErrorBody::invalid_input(format!("one of {what} is empty")));
        }
    }
    Ok(())
}

fn parse_requirements(what: &str, texts: &[String]) -> Result<Vec<Requirement>, ErrorBody> {
    check_list(what, texts)?;
    let mut requirements: Vec<Requirement> = texts
        .iter()
        .map(|text| {
            text.parse().map_err(|error: meshwork_protocol::requirement::RequirementError| {
                ErrorBody::invalid_input(error.to_string())
            })
        })
        .collect::<Result<_, _>>()?;
    requirements.sort();
    requirements.dedup();
    Ok(requirements)
}

fn parse_task_ids(texts: &[String]) -> Result<BTreeSet<TaskId>, ErrorBody> {
    if texts.len() > DEPENDENCIES_MAX {
        return Err(ErrorBody::over_limit("the number of dependencies", "DEPENDENCIES_MAX", DEPENDENCIES_MAX));
    }
    texts.iter().map(|text| TaskId::new(text).map_err(|error| ErrorBody::invalid_input(error.to_string()))).collect()
}

fn check_priority(priority: i64) -> Result<(), ErrorBody> {
    if (PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        Ok(())
    } else {
        Err(ErrorBody::invalid_input(format!(
            "priority {priority} is outside PRIORITY_MIN..=PRIORITY_MAX ({PRIORITY_MIN}..={PRIORITY_MAX})"
        )))
    }
}

fn check_lease(lease_ms: u64) -> Result<(), ErrorBody> {
    if (LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        Ok(())
    } else {
        Err(ErrorBody::invalid_input(format!(
            "lease of {lease_ms} ms is outside LEASE_MS_MIN..=LEASE_MS_MAX ({LEASE_MS_MIN}..={LEASE_MS_MAX} ms)"
        )))
    }
}

fn check_attempts(attempts: u32) -> Result<(), ErrorBody> {
    if (1..=ATTEMPTS_MAX).contains(&attempts) {
        Ok(())
    } else {
        Err(ErrorBody::invalid_input(format!(
            "max attempts {attempts} is outside 1..=ATTEMPTS_MAX (1..={ATTEMPTS_MAX})"
        )))
    }
}

impl Replica {
    fn entry_or_not_found(&self, id: &TaskId) -> Result<&TaskEntry, OpError> {
        self.task(id).ok_or_else(|| {
            OpError::refused(ErrorCode::NotFound, format!("no task {id}; list tasks with `meshwork task list`"))
        })
    }

    fn refuse_cycle(&self, task: &TaskId, dependencies: &BTreeSet<TaskId>) -> Result<(), OpError> {
        if let Some(cycle) = cycle_through(task, dependencies, |id| self.task(id).map(|entry| &entry.fields.depends_on))
        {
            let path: Vec<&str> = cycle.iter().map(TaskId::as_str).collect();
            return Err(OpError::refused(ErrorCode::InvalidInput, format!("dependency cycle: {}", path.join(" -> "))));
        }
        Ok(())
    }

    fn refuse_unknown(&self, dependencies: &BTreeSet<TaskId>) -> Result<(), OpError> {
        match dependencies.iter().find(|id| self.task(id).is_none()) {
            Some(missing) => Err(OpError::refused(ErrorCode::NotFound, format!("no task {missing} to depend on"))),
            None => Ok(()),
        }
    }

    /// `task add`: validates every field against the limits and creates the task.
    pub fn add_task(
        &mut self,
        speaker: Speaker<'_>,
        request: &AddTask,
        now_ms: u64,
        random: u64,
    ) -> Result<Applied, OpError> {
        check_text("the title", &request.title, "TITLE_BYTES_MAX", TITLE_BYTES_MAX)?;
        if request.title.trim().is_empty() {
            return Err(OpError::refused(ErrorCode::InvalidInput, "the title is empty"));
        }
        check_text("the description", &request.description, "DESCRIPTION_BYTES_MAX", DESCRIPTION_BYTES_MAX)?;
        check_list("labels", &request.labels)?;
        check_list("checks", &request.checks)?;
        check_list("files", &request.files)?;
        check_priority(request.priority)?;
        let requires = parse_requirements("requirements", &request.requires)?;
        let prefers = parse_requirements("preferences", &request.prefers)?;
        let lease_ms = request.lease_ms.unwrap_or(LEASE_MS_DEFAULT);
        check_lease(lease_ms)?;
        let max_attempts = request.max_attempts.unwrap_or(ATTEMPTS_DEFAULT);
        check_attempts(max_attempts)?;
        let depends_on = parse_task_ids(&request.after)?;
        self.refuse_unknown(&depends_on)?;
        let created_at = self.stamp(now_ms);
        let id = match &request.id {
            Some(text) => TaskId::new(text).map_err(|error| ErrorBody::invalid_input(error.to_string()))?,
            None => TaskId::generate(&self.node(), created_at, random),
        };
        if self.task(&id).is_some() {
            return Err(OpError::refused(ErrorCode::Conflict, format!("a task {id} exists already; pick another id")));
        }
        self.refuse_cycle(&id, &depends_on)?;
        let fields = TaskFields {
            id: id.clone(),
            title: request.title.clone(),
            description: request.description.clone(),
            priority: request.priority,
            labels: request.labels.clone(),
            depends_on,
            requires,
            prefers,
            checks: request.checks.clone(),
            files: request.files.clone(),
            lease_ms,
            max_attempts,
            needs_approval: request.needs_approval,
            created_by: self.node(),
            created_at,
            id_conflicts: Vec::new(),
        };
        let message = format!("add {id} by {}", speaker.agent);
        let changes = self.doc_mut().change(now_ms, &message, |tx, maps| write_new_task(tx, maps, &fields))?;
        self.insert_created(fields);
        Ok(Applied { changes, task: id, record: None })
    }

    /// `task edit`. An edit changes the task's plain fields only: it never changes which
    /// claim counts (claims name their own terms, invariant 4), and so never the state of a
    /// finished task. What a finished task needed in order to run (requirements, preferences,
    /// lease, attempts, dependencies) is settled and its edit refused (`INVALID_TRANSITION`);
    /// its title, description and priority may still change.
    pub fn edit_task(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        request: &EditTask,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        let entry = self.entry_or_not_found(id)?;
        refuse_terms_edit_of_finished(id, entry.state.status, request)?;
        let current = entry.fields.depends_on.clone();
        if let Some(title) = &request.title {
            check_text("the title", title, "TITLE_BYTES_MAX", TITLE_BYTES_MAX)?;
        }
        if let Some(description) = &request.description {
            check_text("the description", description, "DESCRIPTION_BYTES_MAX", DESCRIPTION_BYTES_MAX)?;
        }
        if let Some(priority) = request.priority {
            check_priority(priority)?;
        }
        if let Some(lease_ms) = request.lease_ms {
            check_lease(lease_ms)?;
        }
        if let Some(attempts) = request.max_attempts {
            check_attempts(attempts)?;
        }
        let add = parse_task_ids(&request.after)?;
        let remove = parse_task_ids(&request.not_after)?;
        self.refuse_unknown(&add)?;
        let after_edit: BTreeSet<TaskId> = current.union(&add).filter(|dep| !remove.contains(*dep)).cloned().collect();
        if after_edit.len() > DEPENDENCIES_MAX {
            return Err(
                ErrorBody::over_limit("the number of dependencies", "DEPENDENCIES_MAX", DEPENDENCIES_MAX).into()
            );
        }
        self.refuse_cycle(id, &add)?;
        let edit = FieldEdit {
            title: request.title.clone(),
            description: request.description.clone(),
            priority: request.priority,
            add_dependencies: add.into_iter().collect(),
            remove_dependencies: remove.into_iter().filter(|dep| current.contains(dep)).collect(),
            requires: request.requires.as_deref().map(|texts| parse_requirements("requirements", texts)).transpose()?,
            prefers: request.prefers.as_deref().map(|texts| parse_requirements("preferences", texts)).transpose()?,
            lease_ms: request.lease_ms,
            max_attempts: request.max_attempts,
        };
        let message = format!("edit {id} by {}", speaker.agent);
        let status_before = self.task(id).map(|entry| entry.state.status);
        let changes = self.doc_mut().change(now_ms, &message, |tx, maps| write_edit(tx, maps, id, &edit))?;
        self.refresh_after_local(id, now_ms);
        // Invariant 4: an edit signs nothing, and the state is a function of signed records
        // and of claims' own terms, so it cannot move a finished task.
        if status_before.is_some_and(TaskStatus::is_finished) {
            assert_eq!(self.status_of(id), status_before, "invariant 4: an edit changed a finished task's state");
        }
        Ok(Applied { changes, task: id.clone(), record: None })
    }

    /// Whether a task has as many records as it may hold; a node writes no more to it.
    fn at_record_cap(&self, id: &TaskId) -> bool {
        self.task(id)
            .is_some_and(|entry| entry.state.records as usize + entry.state.rejected as usize >= RECORDS_PER_TASK_MAX)
    }

    /// Writes one signed record under a task as one change.
    fn put_record(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        body: RecordBody,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        let signed = self.sign(speaker.key, Some(speaker.agent.clone()), body, now_ms)?;
        self.note_signed(&signed);
        if self.at_record_cap(id) {
            return Err(ErrorBody::over_limit(
                &format!("the number of records on {id}"),
                "RECORDS_PER_TASK_MAX",
                RECORDS_PER_TASK_MAX,
            )
            .into());
        }
        let message = format!("{} {id} by {}", signed.record().kind(), speaker.agent);
        let changes = self.doc_mut().change(now_ms, &message, |tx, maps| put_task_record(tx, maps, id, &signed))?;
        self.refresh_after_local(id, now_ms);
        Ok(Applied { changes, task: id.clone(), record: Some(signed.id()) })
    }

    fn refresh_after_local(&mut self, id: &TaskId, now_ms: u64) {
        let touched = crate::document::Touched { tasks: [id.clone()].into_iter().collect(), ..Default::default() };
        self.refresh(&touched, now_ms);
    }

    /// The hard requirements this node's newest probe lacks for a task.
    pub fn unmet_here(&self, entry: &TaskEntry) -> Vec<String> {
        if entry.fields.requires.is_empty() {
            return Vec::new();
        }
        let probe = self.probes().latest(&self.node()).map(|(_, entry)| &entry.probe);
        gate::unmet(&entry.fields.requires, probe)
    }

    /// `claim ID`: checks readiness and gates, then signs a claim of the open generation (or
    /// of the next one, taking over a lease that expired by this node's clock).
    pub fn claim(&mut self, speaker: Speaker<'_>, id: &TaskId, now_ms: u64) -> Result<Applied, OpError> {
        self.claim_with(speaker, id, ClaimOptions::default(), now_ms)
    }

    /// [`Replica::claim`] with options. A quorum claim is this node's vote for its generation,
    /// so it is refused (`CONFLICT`, retryable) once this node voted for another claim of that
    /// generation; asked again by the same agent it changes nothing. It succeeds while pending:
    /// read its votes in `state.tallies[applied.record]`.
    pub fn claim_with(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        options: ClaimOptions,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        let generation = match self.claim_target(speaker, id, now_ms)? {
            ClaimTarget::Held(claim) => {
                return Ok(Applied { changes: Vec::new(), task: id.clone(), record: Some(claim) });
            }
            ClaimTarget::Generation(generation) => generation,
        };
        if options.quorum
            && let Some(own) = self.own_quorum_vote(speaker, id, generation)?
        {
            return Ok(Applied { changes: Vec::new(), task: id.clone(), record: Some(own) });
        }
        let entry = self.entry_or_not_found(id)?;
        // The claim names the terms this node judged it by (its gate, just passed, read the
        // same requirements): every node judges the claim by them, whatever edits arrive.
        let claim = Claim {
            task: id.clone(),
            generation,
            lamport: entry.state.lamport_max + 1,
            lease_ms: entry.fields.lease_ms,
            probe: self.probes().latest(&self.node()).map(|(probe_id, _)| probe_id),
            quorum: options.quorum,
            requires: Claim::canonical_requirements(&entry.fields.requires),
            max_attempts: entry.fields.max_attempts,
        };
        let applied = self.put_record(speaker, id, RecordBody::Claim(claim), now_ms)?;
        let verdict =
            if options.quorum { self.confirm_not_lost(id, applied.record) } else { self.confirm_holder(speaker, id) };
        match verdict {
            Ok(()) => Ok(applied),
            Err(OpError::Refused(refusal)) => Err(OpError::Written { applied: Box::new(applied), refusal }),
            Err(other) => Err(other),
        }
    }

    /// Checks readiness, approval and gates; the generation a new claim names, or the
    /// speaker's own claim when it holds the task already.
    fn claim_target(&self, speaker: Speaker<'_>, id: &TaskId, now_ms: u64) -> Result<ClaimTarget, OpError> {
        let entry = self.entry_or_not_found(id)?;
        let state = &entry.state;
        if state.status.is_finished() {
            return Err(OpError::refused(
                ErrorCode::InvalidTransition,
                format!("task {id} is {}", state.status.as_str()),
            ));
        }
        let mut generation = state.generation;
        if let Some(holder) = &state.holder {
            if holder.node == self.node() && holder.agent.as_ref() == Some(speaker.agent) {
                return Ok(ClaimTarget::Held(holder.claim));
            }
            if now_ms <= holder.lease_until_ms {
                let who = holder.agent.as_ref().map_or_else(
                    || holder.node.to_string(),
                    |agent| format!("{agent}@{}", self.node_name(&holder.node)),
                );
                return Err(OpError::Refused(
                    ErrorBody::new(
                        ErrorCode::Conflict,
                        format!("task {id} is held by {who} until {}", format_rfc3339_ms(holder.lease_until_ms)),
                    )
                    .retryable(),
                ));
            }
            generation += 1; // takeover of an expired lease
        }
        let blocked = self.blocked_by(entry);
        if !blocked.is_empty() {
            let names: Vec<&str> = blocked.iter().map(TaskId::as_str).collect();
            return Err(OpError::refused(
                ErrorCode::InvalidTransition,
                format!("task {id} waits on {}", names.join(", ")),
            ));
        }
        if entry.fields.needs_approval && !state.approved {
            return Err(OpError::refused(
                ErrorCode::GateRefused,
                format!("task {id} needs approval first: `meshwork approve {id}`"),
            ));
        }
        let unmet = self.unmet_here(entry);
        if !unmet.is_empty() {
            return Err(OpError::refused(
                ErrorCode::GateRefused,
                format!("this machine cannot run {id}: {}", unmet.join("; ")),
            ));
        }
        Ok(ClaimTarget::Generation(generation))
    }

    /// This node's vote in `generation` of a task, before a quorum claim (invariant 7): none
    /// yet is fine; the speaker's own quorum claim that is still in play is returned (a
    /// retried claim); a vote for anything else refuses the claim.
    fn own_quorum_vote(&self, speaker: Speaker<'_>, id: &TaskId, generation: u32) -> Result<Option<RecordId>, OpError> {
        let state = &self.entry_or_not_found(id)?.state;
        let node = self.node();
        let Some((voted_for, _)) =
            state.tallies.iter().find(|(_, tally)| tally.generation == generation && tally.voters.contains(&node))
        else {
            return Ok(None);
        };
        let own = state
            .claims
            .get(voted_for)
            .is_some_and(|claim| claim.node == node && claim.agent.as_ref() == Some(speaker.agent));
        let in_play = !state.lost_claims.iter().any(|lost| lost.claim == *voted_for);
        if own && in_play {
            return Ok(Some(*voted_for));
        }
        Err(OpError::Refused(
            ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "this node already voted for claim {voted_for} of {id} (generation {generation}); \
                     retry once that claim counts or loses"
                ),
            )
            .retryable(),
        ))
    }

    /// After a quorum claim: it may wait for votes, but it must not have lost already.
    fn confirm_not_lost(&self, id: &TaskId, claim: Option<RecordId>) -> Result<(), OpError> {
        let lost =
            self.task(id).is_some_and(|entry| entry.state.lost_claims.iter().any(|lost| Some(lost.claim) == claim));
        if lost {
            return Err(OpError::refused(
                ErrorCode::Conflict,
                format!("the claim of {id} lost; see `meshwork task show {id}`"),
            ));
        }
        Ok(())
    }

    /// After a claim: the speaker must be the holder now, or the claim lost.
    fn confirm_holder(&self, speaker: Speaker<'_>, id: &TaskId) -> Result<(), OpError> {
        match self.task(id).and_then(|entry| entry.state.holder.as_ref()) {
            Some(holder) if holder.node == self.node() && holder.agent.as_ref() == Some(speaker.agent) => Ok(()),
            _ => Err(OpError::refused(
                ErrorCode::Conflict,
                format!("the claim of {id} lost; see `meshwork task show {id}`"),
            )),
        }
    }

    /// `claim --next`: the first task this machine can run in claim order
    /// ([`Replica::ready_tasks_at`]): an open ready task, or a stale one, which it takes over
    /// (a claim of the next generation). The speaker's own stale claims are not offered back
    /// to it: claiming them would change nothing.
    pub fn claim_next(&mut self, speaker: Speaker<'_>, now_ms: u64) -> Result<Applied, OpError> {
        let node = self.node();
        let held_by_speaker = |entry: &TaskEntry| {
            entry
                .state
                .holder
                .as_ref()
                .is_some_and(|holder| holder.node == node && holder.agent.as_ref() == Some(speaker.agent))
        };
        let first = self
            .ready_tasks_at(now_ms)
            .into_iter()
            .filter(|entry| !held_by_speaker(entry))
            .find(|entry| self.unmet_here(entry).is_empty())
            .map(|entry| entry.fields.id.clone())
            .ok_or_else(|| OpError::refused(ErrorCode::NotFound, "no task is ready for this machine"))?;
        self.claim(speaker, &first, now_ms)
    }

    /// The speaker's won claim on a task, or `NOT_OWNER`/`INVALID_TRANSITION`.
    fn held_claim(&self, speaker: Speaker<'_>, id: &TaskId) -> Result<(RecordId, u64), OpError> {
        let entry = self.entry_or_not_found(id)?;
        let Some(holder) = &entry.state.holder else {
            return Err(OpError::refused(
                ErrorCode::InvalidTransition,
                format!("task {id} is {}, not claimed", entry.state.status.as_str()),
            ));
        };
        if holder.node != self.node() || holder.agent.as_ref() != Some(speaker.agent) {
            let who = holder.agent.as_ref().map_or_else(String::new, |agent| format!("{agent}@"));
            return Err(OpError::refused(
                ErrorCode::NotOwner,
                format!("task {id} is held by {who}{}", self.node_name(&holder.node)),
            ));
        }
        Ok((holder.claim, holder.lease_until_ms))
    }

    /// `renew`: extends the speaker's lease; refused once it expired (claim again instead).
    pub fn renew(&mut self, speaker: Speaker<'_>, id: &TaskId, now_ms: u64) -> Result<Applied, OpError> {
        let (claim, lease_until_ms) = self.held_claim(speaker, id)?;
        if now_ms > lease_until_ms {
            return Err(OpError::refused(
                ErrorCode::Conflict,
                format!("the lease on {id} expired at {}; claim it again", format_rfc3339_ms(lease_until_ms)),
            ));
        }
        self.put_record(speaker, id, RecordBody::Renew { task: id.clone(), claim }, now_ms)
    }

    pub fn release(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        reason: &str,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        check_text("the reason", reason, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        let (claim, _) = self.held_claim(speaker, id)?;
        self.put_record(speaker, id, RecordBody::Release { task: id.clone(), claim, reason: reason.to_owned() }, now_ms)
    }

    pub fn progress(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        message: &str,
        percent: Option<u8>,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        check_text("the message", message, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        if percent.is_some_and(|percent| percent > 100) {
            return Err(OpError::refused(ErrorCode::InvalidInput, "percent must be 0 to 100"));
        }
        let (claim, _) = self.held_claim(speaker, id)?;
        let body = RecordBody::Progress { task: id.clone(), claim, message: message.to_owned(), percent };
        self.put_record(speaker, id, body, now_ms)
    }

    pub fn handoff(
        &mut self,
        speaker: Speaker<'_>,
        id: &TaskId,
        request: &HandoffRequest,
        now_ms: u64,
    ) -> Result<Applied, OpError> {
        for (what, items) in [
            ("commits", &request.commits),
            ("files", &request.files),
            ("tests", &request.tests),
            ("risks", &request.risks),
        ] {
            check_list(what, items)?;
        }
        check_text("the next step", &request.next, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        let (claim, _) = self.held_claim(speaker, id)?;
        let handoff = Handoff {
            task: id.clone(),
            claim,
            commits: request.commits.clone(),
            files: request.files.clone(),
            tests: request.tests.clone(),
            risks: request.risks.clone(),
            next: request.next.clone(),
        };
        self.put_record(speaker, id, RecordBody::Handoff(handoff), now_ms)
    }

    pub fn done(&mut self, speaker: Speaker<'_>, id: &TaskId, summary: &str, now_ms: u64) -> Result<Applied, OpError> {
        check_text("the summary", summary, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        let (claim, _) = self.held_claim(speaker, id)?;
        self.put_record(speaker, id, RecordBody::Done { task: id.clone(), claim, summary: summary.to_owned() }, now_ms)
    }

    pub fn fail(&mut self, speaker: Speaker<'_>, id: &TaskId, reason: &str, now_ms: u64) -> Result<Applied, OpError> {
        check_text("the reason", reason, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        if reason.trim().is_empty() {
            return Err(OpError::refused(ErrorCode::InvalidInput, "a failure needs a reason"));
        }
        let (claim, _) = self.held_claim(speaker, id)?;
        self.put_record(speaker, id, RecordBody::Fail { task: id.clone(), claim, reason: reason.to_owned() }, now_ms)
    }

    pub fn approve(&mut self, speaker: Speaker<'_>, id: &TaskId, now_ms: u64) -> Result<Applied, OpError> {
        let entry = self.entry_or_not_found(id)?;
        if entry.state.approved {
            return Ok(Applied { changes: Vec::new(), task: id.clone(), record: None });
        }
        self.put_record(speaker, id, RecordBody::Approve { task: id.clone() }, now_ms)
    }

    pub fn cancel(&mut self, speaker: Speaker<'_>, id: &TaskId, reason: &str, now_ms: u64) -> Result<Applied, OpError> {
        check_text("the reason", reason, "MESSAGE_BYTES_MAX", MESSAGE_BYTES_MAX)?;
        let entry = self.entry_or_not_found(id)?;
        match entry.state.status {
            TaskStatus::Cancelled => return Ok(Applied { changes: Vec::new(), task: id.clone(), record: None }),
            TaskStatus::Done | TaskStatus::Failed => {
                return Err(OpError::refused(
                    ErrorCode::InvalidTransition,
                    format!("task {id} is {} already", entry.state.status.as_str()),
                ));
            }
            TaskStatus::Open | TaskStatus::Claimed => {}
        }
        self.put_record(speaker, id, RecordBody::Cancel { task: id.clone(), reason: reason.to_owned() }, now_ms)
    }

    /// Publishes this machine's probe when it differs from the newest one it published.
    /// Returns the change, or `None` when the probe is unchanged.
    pub fn publish_probe(&mut self, key: &NodeKey, mut probe: Probe, now_ms: u64) -> Result<Option<Vec<u8>>, OpError> {
        probe.canonicalize();
        if self.probes().latest(&self.node()).is_some_and(|(_, entry)| entry.probe == probe) {
            return Ok(None);
        }
        let signed: SignedRecord = self.sign(key, None, RecordBody::Probe(probe), now_ms)?;
        let node = self.node();
        let changes = self.doc_mut().change(now_ms, "probe", |tx, maps| {
            use automerge::transaction::Transactable;
            tx.put(&maps.probes, node_record_key(&node, signed.id()), signed.bytes().to_vec())
        })?;
        let touched = crate::document::Touched { probes: true, ..Default::default() };
        self.refresh(&touched, now_ms);
        Ok(Some(changes))
    }
}

impl Replica {
    /// The acknowledgements this node owes for these tasks (invariant 7): per task, the first
    /// pending quorum claim in the winner order whose generation a vote can still decide (the
    /// open generation when nobody holds it, or the next one when the claim was stamped after
    /// the holder's lease ended), unless this node voted in that generation already. None
    /// when this node is not a current member. Pure: sign them with [`Replica::acknowledge`].
    pub fn acks_due<'a>(&self, tasks: impl IntoIterator<Item = &'a TaskId>) -> Vec<AckDue> {
        let node = self.node();
        if !self.members().get(&node).is_some_and(Member::is_current) {
            return Vec::new();
        }
        let tasks: BTreeSet<&TaskId> = tasks.into_iter().collect();
        tasks.into_iter().filter_map(|id| self.task(id)).filter_map(|entry| ack_due(&node, entry)).collect()
    }

    /// This node's vote for its own claim `claim` of task `id`, which asks the mesh to confirm
    /// it (invariant 7): signed when the claim still holds the task, is not confirmed already
    /// and this node has not voted in its generation. The node asks once the settle time passed, so that a claim made at
    /// the same moment elsewhere is likely seen first (and voted for instead, if it wins).
    /// Returns the change, or `None` when there is nothing to vote for.
    pub fn ask_confirmation(
        &mut self,
        key: &NodeKey,
        id: &TaskId,
        claim: RecordId,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, OpError> {
        let entry = self.entry_or_not_found(id)?;
        let state = &entry.state;
        let holds = state.holder.as_ref().is_some_and(|holder| holder.claim == claim && holder.node == self.node());
        let needless = state.is_confirmed(&claim) || state.has_voted(&self.node(), state.generation);
        if !holds || needless || self.at_record_cap(id) {
            return Ok(None);
        }
        let body = RecordBody::Ack { task: id.clone(), claim, generation: state.generation };
        let signed = self.sign(key, None, body, now_ms)?;
        self.note_signed(&signed);
        let changes = self
            .doc_mut()
            .change(now_ms, "ask to confirm a claim", |tx, maps| put_task_record(tx, maps, id, &signed))?;
        self.refresh_after_local(id, now_ms);
        Ok(Some(changes))
    }

    /// Signs and writes, as one change, the acknowledgements of `due` that are still due
    /// now (a stale list never makes this node vote twice) on tasks below
    /// `RECORDS_PER_TASK_MAX`. Returns the change, or `None` when none was due.
    pub fn acknowledge(&mut self, key: &NodeKey, due: &[AckDue], now_ms: u64) -> Result<Option<Vec<u8>>, OpError> {
        let asked: BTreeSet<&TaskId> = due.iter().map(|ack| &ack.task).collect();
        let still_due: Vec<AckDue> = self
            .acks_due(asked)
            .into_iter()
            .filter(|ack| due.contains(ack) && !self.at_record_cap(&ack.task))
            .collect();
        if still_due.is_empty() {
            return Ok(None);
        }
        let mut acks: Vec<SignedRecord> = Vec::with_capacity(still_due.len());
        for ack in &still_due {
            let body = RecordBody::Ack { task: ack.task.clone(), claim: ack.claim, generation: ack.generation };
            let signed = self.sign(key, None, body, now_ms)?;
            self.note_signed(&signed);
            acks.push(signed);
        }
        let changes = self.doc_mut().change(now_ms, "acknowledge quorum claims", |tx, maps| {
            for (ack, signed) in still_due.iter().zip(&acks) {
                put_task_record(tx, maps, &ack.task, signed)?;
            }
            Ok(())
        })?;
        let touched = Touched { tasks: still_due.into_iter().map(|ack| ack.task).collect(), ..Touched::default() };
        self.refresh(&touched, now_ms);
        Ok(Some(changes))
    }

    /// Adds or removes a member by a membership record this node signs. Only a current
    /// member may do so; the record counts on every node for the same reason.
    pub fn change_membership(
        &mut self,
        key: &NodeKey,
        membership: meshwork_protocol::record::Membership,
        now_ms: u64,
    ) -> Result<Vec<u8>, OpError> {
        if !self.members().get(&self.node()).is_some_and(|member| member.is_current()) {
            return Err(OpError::refused(ErrorCode::GateRefused, "this node is not a member of its mesh"));
        }
        let member = membership.member;
        let signed = self.sign(key, None, RecordBody::Membership(membership), now_ms)?;
        let changes = self.doc_mut().change(now_ms, "membership", |tx, maps| {
            use automerge::transaction::Transactable;
            tx.put(&maps.members, node_record_key(&member, signed.id()), signed.bytes().to_vec())
        })?;
        let touched = crate::document::Touched { members: true, ..Default::default() };
        self.refresh(&touched, now_ms);
        Ok(changes)
    }
}

/// Refuses an edit of what a finished task needed in order to run: no claim will ever be
/// judged by it, and a failed task it reopened would not be finished any more.
fn refuse_terms_edit_of_finished(id: &TaskId, status: TaskStatus, request: &EditTask) -> Result<(), OpError> {
    if !status.is_finished() {
        return Ok(());
    }
    let settled: Vec<&str> = [
        (request.requires.is_some(), "requirements"),
        (request.prefers.is_some(), "preferences"),
        (request.lease_ms.is_some(), "lease"),
        (request.max_attempts.is_some(), "max attempts"),
        (!request.after.is_empty() || !request.not_after.is_empty(), "dependencies"),
    ]
    .into_iter()
    .filter_map(|(asked, what)| asked.then_some(what))
    .collect();
    if settled.is_empty() {
        return Ok(());
    }
    Err(OpError::refused(
        ErrorCode::InvalidTransition,
        format!(
            "task {id} is {}: its {} no longer change once it finished; only its title, description and \
             priority may still be edited",
            status.as_str(),
            settled.join(", ")
        ),
    ))
}

/// The acknowledgement `node` owes on one task, if any: see [`Replica::acks_due`].
fn ack_due(node: &NodeId, entry: &TaskEntry) -> Option<AckDue> {
    let state = &entry.state;
    if state.status.is_finished() {
        return None;
    }
    // A vote can still decide the open generation, or a takeover of an expired lease.
    let decidable = |claim: &ClaimEntry| match &state.holder {
        None => claim.claim.generation == state.generation,
        Some(holder) => claim.claim.generation == state.generation + 1 && claim.stamp.wall_ms > holder.lease_until_ms,
    };
    let pending = state
        .pending_quorum()
        .filter_map(|(id, tally)| state.claims.get(id).map(|claim| (*id, tally.generation, claim)))
        .filter(|(_, generation, claim)| decidable(claim) && !state.has_voted(node, *generation))
        .min_by_key(|(id, _, claim)| winner_key(&entry.fields.id, *id, claim))
        .map(|(claim, generation, _)| AckDue { task: entry.fields.id.clone(), claim, generation });
    // Else the holder's claim, made on another node: a majority of votes confirms it, and a
    // confirmed claim never loses. A node votes for its own claims only when its agent asks
    // for confirmation ([`Replica::ask_confirmation`]), after the settle time.
    let holder = || {
        let holder = state.holder.as_ref().filter(|holder| holder.node != *node)?;
        let generation = state.generation;
        let unconfirmed = !holder.quorum && !state.is_confirmed(&holder.claim);
        (unconfirmed && !state.has_voted(node, generation)).then(|| AckDue {
            task: entry.fields.id.clone(),
            claim: holder.claim,
            generation,
        })
    };
    pending.or_else(holder)
}
