//! The events a change makes: what the node's event stream says after the replica took in a
//! local operation or a merge, derived by comparing a small digest of the state before with
//! the state after. Pure: the node owns the digest and the clock and publishes what this
//! returns; the same replica states give the same events on every node.
//!
//! The digest keeps, per task, only what events are about (status, readiness, holder, lost
//! and taken-over claims, the lease), per member its probe, and the inbox messages of this
//! node's agents already seen. Readiness can change for a task nobody touched (a dependency
//! finished), so the digest also keeps who depends on whom.

use std::collections::{BTreeMap, BTreeSet};

use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::event::Event;
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::{NodeId, RecordId, TaskId};

use crate::document::Touched;
use crate::inbox::Message;
use crate::replica::Replica;
use crate::resolve::TaskEntry;

/// How long before a lease ends its holder is warned (`lease_expiring`): a tenth of the
/// lease, at least this long, so a default 30-minute lease warns 3 minutes ahead.
pub const LEASE_WARNING_MS_MIN: u64 = 60_000;

/// What the events of one task are about.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// One is kept per task, so it is kept small: a node of 100,000 tasks holds 100,000 of them
/// (docs/BENCHMARKS.md, "Cold start"). Most tasks have no holder and empty lists, which cost
/// a pointer each here.
struct TaskDigest {
    status: TaskStatus,
    ready: bool,
    holder: Option<Box<HolderDigest>>,
    /// Sorted, for `binary_search`.
    lost: Box<[RecordId]>,
    /// Sorted, for `binary_search`.
    taken_over: Box<[RecordId]>,
    depends_on: Box<[TaskId]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HolderDigest {
    claim: RecordId,
    node: NodeId,
    agent: Option<String>,
    lease_until_ms: u64,
    lease_ms: u64,
    /// A majority voted for the claim ([`crate::resolve::TaskState::is_confirmed`]).
    confirmed: bool,
}

/// What the holder of one claim was told of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseTold {
    lease_until_ms: u64,
    expired: bool,
}

/// The state the last events were derived from. Built once from a replica
/// ([`EventDigest::of`]) and kept up to date by [`EventDigest::advance`].
#[derive(Debug, Clone, Default)]
pub struct EventDigest {
    tasks: BTreeMap<TaskId, TaskDigest>,
    /// Who waits for each task: readiness of these may change when it finishes.
    dependents: BTreeMap<TaskId, BTreeSet<TaskId>>,
    members: BTreeSet<NodeId>,
    probes: BTreeMap<NodeId, RecordId>,
    /// Lease events already told, by claim, for the lease end they were told for.
    leases_told: BTreeMap<RecordId, LeaseTold>,
    /// Held tasks by the time their holder is to be warned; a task leaves once its expiry
    /// was told, so the lease events cost the leases that are due, not the queue.
    lease_due: BTreeSet<(u64, TaskId)>,
}

impl EventDigest {
    /// The digest of a replica as it is now: no events for what is already there.
    pub fn of(replica: &Replica) -> EventDigest {
        let mut digest = EventDigest::default();
        for entry in replica.tasks().values() {
            digest.put_task(entry.fields.id.clone(), digest_of(replica, entry));
        }
        digest.members = replica.members().current().map(|member| member.node).collect();
        digest.probes = probes_of(replica);
        digest
    }

    /// The events `touched` made, in a fixed order (tasks by id, then members, probes and
    /// messages), and the digest moved to the replica's state.
    pub fn advance(&mut self, replica: &Replica, touched: &Touched) -> Vec<Event> {
        let mut events = Vec::new();
        let everything = touched.members || touched.meta || touched.probes;
        let tasks: BTreeSet<TaskId> =
            if everything { replica.tasks().keys().cloned().collect() } else { touched.tasks.clone() };
        let mut readiness_may_change: BTreeSet<TaskId> = BTreeSet::new();
        for id in &tasks {
            let before = self.tasks.get(id).cloned();
            let after = replica.task(id).map(|entry| digest_of(replica, entry));
            if before.as_ref().map(|digest| digest.status) != after.as_ref().map(|digest| digest.status) {
                readiness_may_change.extend(self.dependents.get(id).into_iter().flatten().cloned());
            }
            let told = task_events(replica, id, before.as_ref(), after.as_ref(), &mut events);
            // A field edit (title, priority), a renewal, progress: nothing more specific to say.
            if let Some(after) =
                after.as_ref().filter(|after| !told && (touched.tasks.contains(id) || before.as_ref() != Some(*after)))
            {
                events.push(Event::TaskChanged { task: id.to_string(), status: after.status });
            }
            let old_claim = self.remove_task(id).and_then(|old| old.holder).map(|holder| holder.claim);
            let new_claim = after.as_ref().and_then(|after| after.holder.as_ref()).map(|holder| holder.claim);
            if let Some(old_claim) = old_claim.filter(|old| Some(*old) != new_claim) {
                self.leases_told.remove(&old_claim);
            }
            if let Some(after) = after {
                self.put_task(id.clone(), after);
            }
        }
        for id in readiness_may_change.difference(&tasks) {
            let Some(entry) = replica.task(id) else { continue };
            let ready = replica.is_ready(entry);
            if let Some(digest) = self.tasks.get_mut(id)
                && digest.ready != ready
            {
                digest.ready = ready;
                if ready {
                    events.push(Event::TaskReady { task: id.to_string() });
                }
            }
        }
        if touched.members || touched.meta {
            self.member_events(replica, &mut events);
        }
        if touched.probes || touched.members || touched.meta {
            let probes = probes_of(replica);
            for (node, probe) in &probes {
                if self.probes.get(node) != Some(probe) {
                    events.push(Event::ProbeChanged { node_id: node.to_string() });
                }
            }
            self.probes = probes;
        }
        for key in &touched.messages {
            message_event(replica, key, &mut events);
        }
        events
    }

    /// The lease events due at `now_ms`: a warning once a lease is within its warning time,
    /// an expiry once it ended; each told once per lease end, so a renewal (a later end)
    /// is warned again when its own warning time comes.
    pub fn lease_events(&mut self, now_ms: u64) -> Vec<Event> {
        let due: Vec<TaskId> =
            self.lease_due.iter().take_while(|(warn, _)| *warn <= now_ms).map(|(_, id)| id.clone()).collect();
        let mut events = Vec::new();
        for id in due {
            let Some(holder) = self.tasks.get(&id).and_then(|digest| digest.holder.clone()) else { continue };
            let told = self.leases_told.get(&holder.claim).filter(|told| told.lease_until_ms == holder.lease_until_ms);
            let (agent, node_id) = (holder.agent.clone(), holder.node.to_string());
            let expired = now_ms > holder.lease_until_ms;
            if expired {
                let since = format_rfc3339_ms(holder.lease_until_ms);
                events.push(Event::LeaseExpired { task: id.to_string(), agent, node_id, since });
                self.lease_due.remove(&(warn_at(&holder), id));
            } else if told.is_none() {
                let lease_until = format_rfc3339_ms(holder.lease_until_ms);
                events.push(Event::LeaseExpiring { task: id.to_string(), agent, node_id, lease_until });
            } else {
                continue;
            }
            self.leases_told.insert(holder.claim, LeaseTold { lease_until_ms: holder.lease_until_ms, expired });
        }
        events
    }

    /// When [`EventDigest::lease_events`] next has something to say, if ever.
    pub fn next_lease_event_ms(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        for (warn, id) in &self.lease_due {
            if next.is_some_and(|next| *warn >= next) {
                break;
            }
            let Some(holder) = self.tasks.get(id).and_then(|digest| digest.holder.as_ref()) else { continue };
            let warned =
                self.leases_told.get(&holder.claim).is_some_and(|told| told.lease_until_ms == holder.lease_until_ms);
            let due = if warned { holder.lease_until_ms.saturating_add(1) } else { *warn };
            next = Some(next.map_or(due, |next| next.min(due)));
        }
        next
    }

    fn member_events(&mut self, replica: &Replica, events: &mut Vec<Event>) {
        let members: BTreeSet<NodeId> = replica.members().current().map(|member| member.node).collect();
        for added in members.difference(&self.members) {
            events.push(Event::MemberAdded { node_id: added.to_string(), name: replica.node_name(added) });
        }
        for removed in self.members.difference(&members) {
            events.push(Event::MemberRemoved { node_id: removed.to_string() });
        }
        self.members = members;
    }

    fn put_task(&mut self, id: TaskId, digest: TaskDigest) {
        for dependency in &digest.depends_on {
            self.dependents.entry(dependency.clone()).or_default().insert(id.clone());
        }
        if let Some(holder) = digest.holder.as_ref().filter(|_| digest.status == TaskStatus::Claimed) {
            let told = self.leases_told.get(&holder.claim);
            if !told.is_some_and(|told| told.expired && told.lease_until_ms == holder.lease_until_ms) {
                self.lease_due.insert((warn_at(holder), id.clone()));
            }
        }
        self.tasks.insert(id, digest);
    }

    /// Takes a task's digest out, with everything indexed by it.
    fn remove_task(&mut self, id: &TaskId) -> Option<TaskDigest> {
        let old = self.tasks.remove(id)?;
        for dependency in &old.depends_on {
            if let Some(waiting) = self.dependents.get_mut(dependency) {
                waiting.remove(id);
                if waiting.is_empty() {
                    self.dependents.remove(dependency);
                }
            }
        }
        if let Some(holder) = &old.holder {
            self.lease_due.remove(&(warn_at(holder), id.clone()));
        }
        Some(old)
    }
}

/// When a holder is warned that its lease ends soon.
fn warn_at(holder: &HolderDigest) -> u64 {
    holder.lease_until_ms.saturating_sub(lease_warning_ms(holder.lease_ms))
}

/// A holder's warning time before its lease ends.
fn lease_warning_ms(lease_ms: u64) -> u64 {
    (lease_ms / 10).max(LEASE_WARNING_MS_MIN).min(lease_ms / 2)
}

fn digest_of(replica: &Replica, entry: &TaskEntry) -> TaskDigest {
    let state = &entry.state;
    TaskDigest {
        status: state.status,
        ready: replica.is_ready(entry),
        holder: state.holder.as_ref().map(|holder| {
            Box::new(HolderDigest {
                claim: holder.claim,
                node: holder.node,
                agent: holder.agent.as_ref().map(ToString::to_string),
                lease_until_ms: holder.lease_until_ms,
                lease_ms: state.claims.get(&holder.claim).map_or(entry.fields.lease_ms, |claim| claim.claim.lease_ms),
                confirmed: holder.quorum || state.is_confirmed(&holder.claim),
            })
        }),
        lost: sorted(state.lost_claims.iter().map(|lost| lost.claim)),
        taken_over: sorted(state.taken_over.iter().map(|taken| taken.claim)),
        depends_on: entry.fields.depends_on.iter().cloned().collect(),
    }
}

fn sorted(ids: impl Iterator<Item = RecordId>) -> Box<[RecordId]> {
    let mut ids: Vec<RecordId> = ids.collect();
    ids.sort_unstable();
    ids.into_boxed_slice()
}

fn probes_of(replica: &Replica) -> BTreeMap<NodeId, RecordId> {
    let members: Vec<NodeId> = replica.members().current().map(|member| member.node).collect();
    members.into_iter().filter_map(|node| replica.probes().latest(&node).map(|(id, _)| (node, id))).collect()
}

/// The events of one task between two digests; true when any was told.
fn task_events(
    replica: &Replica,
    id: &TaskId,
    before: Option<&TaskDigest>,
    after: Option<&TaskDigest>,
    events: &mut Vec<Event>,
) -> bool {
    let (Some(after), Some(entry)) = (after, replica.task(id)) else { return false };
    let told = events.len();
    let task = id.to_string();
    if before.is_none() {
        events.push(Event::TaskCreated { task: task.clone(), title: entry.fields.title.clone() });
    }
    let state = &entry.state;
    for lost in state
        .lost_claims
        .iter()
        .filter(|lost| before.is_none_or(|before| before.lost.binary_search(&lost.claim).is_err()))
    {
        events.push(Event::ClaimLost {
            task: task.clone(),
            agent: lost.agent.as_ref().map(ToString::to_string),
            node_id: lost.node.to_string(),
            claim_id: lost.claim.to_string(),
            reason: lost.reason.to_string(),
        });
    }
    for taken in state
        .taken_over
        .iter()
        .filter(|taken| before.is_none_or(|before| before.taken_over.binary_search(&taken.claim).is_err()))
    {
        events.push(Event::ClaimTakenOver {
            task: task.clone(),
            agent: taken.agent.as_ref().map(ToString::to_string),
            node_id: taken.node.to_string(),
            claim_id: taken.claim.to_string(),
        });
    }
    let holder_before = before.and_then(|before| before.holder.as_ref().map(|holder| holder.claim));
    if let Some(holder) = state.holder.as_ref().filter(|holder| Some(holder.claim) != holder_before) {
        let (agent, node_id, claim_id) =
            (holder.agent.as_ref().map(ToString::to_string), holder.node.to_string(), holder.claim.to_string());
        // A claim that had lost and holds after all (a late renewal, a removal undone).
        if before.is_some_and(|before| before.lost.binary_search(&holder.claim).is_ok()) {
            let claim_id = claim_id.clone();
            events.push(Event::ClaimWon {
                task: task.clone(),
                agent: agent.clone(),
                node_id: node_id.clone(),
                claim_id,
            });
        }
        events.push(Event::TaskClaimed { task: task.clone(), agent, node_id, claim_id });
    }
    // The holder's claim confirmed by this change: a new holder confirmed at once, or the
    // same one whose votes came.
    let confirmed_before = before.and_then(|before| before.holder.as_ref()).is_some_and(|held| held.confirmed);
    if let Some(holder) = after.holder.as_ref().filter(|holder| holder.confirmed)
        && (!confirmed_before || Some(holder.claim) != holder_before)
    {
        events.push(Event::ClaimConfirmed {
            task: task.clone(),
            agent: holder.agent.clone(),
            node_id: holder.node.to_string(),
            claim_id: holder.claim.to_string(),
        });
    }
    let finished_before = before.is_some_and(|before| before.status.is_finished());
    if after.status.is_finished() && !finished_before {
        events.push(Event::TaskFinished { task: task.clone(), status: after.status });
    }
    if after.ready && !before.is_some_and(|before| before.ready) {
        events.push(Event::TaskReady { task });
    }
    events.len() > told
}

/// A message that arrived for an agent of this node.
fn message_event(replica: &Replica, key: &str, events: &mut Vec<Event>) {
    let Some((to, message_id)) = key.split_once('/') else { return };
    let Some((agent, node)) = to.rsplit_once('@') else { return };
    if node != replica.node().to_string() {
        return;
    }
    let doc = replica.doc();
    let Ok(Some((automerge::Value::Scalar(scalar), _))) =
        automerge::ReadDoc::get(doc.automerge(), &doc.maps().inbox, key)
    else {
        return;
    };
    let automerge::ScalarValue::Str(text) = scalar.as_ref() else { return };
    let Ok(message) = serde_json::from_str::<Message>(text) else { return };
    events.push(Event::MessageArrived {
        agent: agent.to_owned(),
        message_id: message_id.to_owned(),
        from: message.from,
        subject: message.subject,
        priority: message.priority,
    });
}
