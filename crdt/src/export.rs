//! The resolved state as the contract's JSON: task views and the canonical export.
//!
//! The export is a pure function of the records (invariant 1): it shows nothing that
//! depends on the reading node's clock or identity, so equal records give equal bytes. What
//! the clock makes of a task (whether it is stale) is in the live views the node answers
//! with ([`Replica::live_task_view`]), beside the task view and never inside it.

use std::collections::BTreeMap;

use meshwork_protocol::api::{
    CheckView, Confirmation, FailureView, HandoffView, HolderView, LiveTaskView, LostClaimView, ProgressView, Receipt,
    ResultView, StaleView, TaskView,
};
use meshwork_protocol::time::{format_rfc3339_ms, write_rfc3339_ms};
use meshwork_protocol::{AgentName, NodeId, RecordId};
use serde::Serialize;

use crate::replica::Replica;
use crate::resolve::Noted;
use crate::resolve::{TaskEntry, majority};

fn agent_text(agent: &Option<AgentName>) -> String {
    agent.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// Node ids as text, each written once per batch of views. A node id's text is the base58 of
/// its PeerId, about a microsecond each, and a listing of 20,000 tasks names the same few
/// nodes again and again (docs/BENCHMARKS.md, "CLI calls").
#[derive(Debug, Default)]
struct NodeTexts(BTreeMap<NodeId, String>);

impl NodeTexts {
    fn of(&mut self, node: &NodeId) -> &String {
        self.0.entry(*node).or_insert_with(|| node.to_string())
    }

    fn by(&mut self, agent: &Option<AgentName>, node: &NodeId) -> String {
        match agent {
            Some(agent) => format!("{agent}@{}", self.of(node)),
            None => self.of(node).clone(),
        }
    }

    fn result_view(&mut self, noted: &Noted<String>) -> ResultView {
        ResultView {
            summary: noted.value.clone(),
            by: self.by(&noted.agent, &noted.node),
            at: format_rfc3339_ms(noted.at.wall_ms),
        }
    }

    fn failure_view(&mut self, noted: &Noted<String>) -> FailureView {
        FailureView {
            reason: noted.value.clone(),
            by: self.by(&noted.agent, &noted.node),
            at: format_rfc3339_ms(noted.at.wall_ms),
        }
    }
}

/// Replaces what `list` holds with `items`, keeping its memory (most lists are empty, and
/// collecting an empty list anew cost more than writing it).
fn refill<T>(list: &mut Vec<T>, items: impl IntoIterator<Item = T>) {
    list.clear();
    list.extend(items);
}

impl Replica {
    /// The contract's task object for one task.
    pub fn task_view(&self, entry: &TaskEntry) -> TaskView {
        self.task_view_with(entry, &mut NodeTexts::default())
    }

    /// The task objects of `entries`, in their order: [`Replica::task_view`] of each, with
    /// every node id written as text once for the whole list.
    pub fn task_views_of<'a>(&self, entries: impl IntoIterator<Item = &'a TaskEntry>) -> Vec<TaskView> {
        let mut texts = NodeTexts::default();
        entries.into_iter().map(|entry| self.task_view_with(entry, &mut texts)).collect()
    }

    /// The live task objects of `entries` at `now_ms`, in their order:
    /// [`Replica::live_task_view`] of each, with every node id written as text once.
    pub fn live_task_views_of<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a TaskEntry>,
        now_ms: u64,
    ) -> Vec<LiveTaskView> {
        let mut texts = NodeTexts::default();
        entries
            .into_iter()
            .map(|entry| LiveTaskView {
                task: self.task_view_with(entry, &mut texts),
                stale: self.stale_view(entry, now_ms, &mut texts),
                receipt: None,
            })
            .collect()
    }

    /// The JSON array of the live task objects of `entries` at `now_ms`, in their order: the
    /// bytes of `serde_json::to_vec(&self.live_task_views_of(entries, now_ms))`, each task
    /// written ([`LiveTaskView::write_json`]) as soon as its object is built, so a listing of
    /// 20,000 tasks never holds 20,000 task objects at once. A task's JSON but for its
    /// readiness and `stale` is kept for the next listing in its entry (`task_json_cache.rs`) and
    /// copied from there until the entry changes.
    pub fn live_task_views_json(&self, entries: &[&TaskEntry], now_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len().saturating_mul(TASK_JSON_BYTES_TYPICAL) + 2);
        out.push(b'[');
        if let Some(first) = entries.first() {
            let mut texts = NodeTexts::default();
            let mut view = TaskView::blank(first.fields.id.clone());
            for (index, entry) in entries.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let (ready, blocked_by) = (self.is_ready(entry), self.blocked_by(entry));
                if let Some((head, tail)) = entry.json.get() {
                    out.extend_from_slice(head);
                    TaskView::write_json_readiness(ready, &blocked_by, &mut out);
                    out.extend_from_slice(tail);
                } else {
                    self.fill_task_view(entry, &mut texts, &mut view);
                    let head_start = out.len();
                    view.write_json_head(&mut out);
                    let head_end = out.len();
                    TaskView::write_json_readiness(ready, &blocked_by, &mut out);
                    let tail_start = out.len();
                    view.write_json_tail(&mut out);
                    entry.json.keep(&out[head_start..head_end], &out[tail_start..]);
                }
                let stale = self.stale_view(entry, now_ms, &mut texts);
                LiveTaskView::write_json_end(stale.as_ref(), &mut out);
            }
        }
        out.push(b']');
        out
    }

    fn task_view_with(&self, entry: &TaskEntry, texts: &mut NodeTexts) -> TaskView {
        let mut view = TaskView::blank(entry.fields.id.clone());
        self.fill_task_view(entry, texts, &mut view);
        view
    }

    /// Writes the task object of `entry` over `view`, reusing the memory of its strings and
    /// lists: a listing fills one view per task rather than allocating and freeing a dozen
    /// strings for each (docs/BENCHMARKS.md, "CLI calls").
    fn fill_task_view(&self, entry: &TaskEntry, texts: &mut NodeTexts, view: &mut TaskView) {
        let (fields, state) = (&entry.fields, &entry.state);
        // Every field is named: one added to TaskView and not written here fails to compile
        // rather than keeping the previous task's value.
        let TaskView {
            id,
            title,
            description,
            status,
            ready,
            blocked_by,
            priority,
            depends_on,
            requires,
            prefers,
            labels,
            files,
            lease_ms,
            max_attempts,
            needs_approval,
            approved,
            generation,
            attempts,
            holder,
            progress,
            lost_claims,
            handoffs,
            checks,
            result,
            other_results,
            failure,
            cancelled,
            id_conflicts,
            rejected_records,
            created_by,
            created_at,
            updated_at,
        } = view;
        id.clone_from(&fields.id);
        title.clone_from(&fields.title);
        description.clone_from(&fields.description);
        *status = state.status;
        *ready = self.is_ready(entry);
        refill(blocked_by, self.blocked_by(entry));
        *priority = fields.priority;
        refill(depends_on, fields.depends_on.iter().cloned());
        refill(requires, fields.requires.iter().map(ToString::to_string));
        refill(prefers, fields.prefers.iter().map(ToString::to_string));
        labels.clone_from(&fields.labels);
        files.clone_from(&fields.files);
        *lease_ms = fields.lease_ms;
        *max_attempts = fields.max_attempts;
        *needs_approval = fields.needs_approval;
        *approved = state.approved;
        *generation = state.generation;
        *attempts = state.attempts;
        *holder = state.holder.as_ref().map(|holder| HolderView {
            agent: agent_text(&holder.agent),
            node_id: texts.of(&holder.node).to_owned(),
            node_name: self.node_name(&holder.node),
            claim_id: holder.claim.to_string(),
            claimed_at: format_rfc3339_ms(holder.claimed_at.wall_ms),
            lease_until: format_rfc3339_ms(holder.lease_until_ms),
            quorum: holder.quorum,
            confirmed: holder.quorum || state.is_confirmed(&holder.claim),
        });
        refill(
            progress,
            state.progress.iter().map(|note| ProgressView {
                at: format_rfc3339_ms(note.at.wall_ms),
                agent: agent_text(&note.agent),
                node_id: texts.of(&note.node).to_owned(),
                message: note.value.message.clone(),
                percent: note.value.percent,
            }),
        );
        refill(
            lost_claims,
            state.lost_claims.iter().map(|lost| LostClaimView {
                agent: agent_text(&lost.agent),
                node_id: texts.of(&lost.node).to_owned(),
                claim_id: lost.claim.to_string(),
                generation: lost.generation,
                claimed_at: format_rfc3339_ms(lost.claimed_at.wall_ms),
                reason: lost.reason.to_string(),
            }),
        );
        refill(
            handoffs,
            state.handoffs.iter().map(|note| HandoffView {
                at: format_rfc3339_ms(note.at.wall_ms),
                agent: agent_text(&note.agent),
                node_id: texts.of(&note.node).to_owned(),
                commits: note.value.commits.clone(),
                files: note.value.files.clone(),
                tests: note.value.tests.clone(),
                risks: note.value.risks.clone(),
                next: note.value.next.clone(),
            }),
        );
        refill(checks, fields.checks.iter().map(|command| CheckView { command: command.clone() }));
        *result = state.result.as_ref().map(|noted| texts.result_view(noted));
        refill(other_results, state.other_results.iter().map(|noted| texts.result_view(noted)));
        *failure = state.failure.as_ref().map(|noted| texts.failure_view(noted));
        *cancelled = state.cancelled.as_ref().map(|noted| texts.failure_view(noted));
        refill(id_conflicts, fields.id_conflicts.iter().map(|node| texts.of(node).to_owned()));
        *rejected_records = state.rejected;
        created_by.clone_from(texts.of(&fields.created_by));
        write_rfc3339_ms(created_at, fields.created_at.wall_ms);
        write_rfc3339_ms(updated_at, state.updated_at.wall_ms);
    }

    /// The task object a node answers with (`task show`, `task list`, `ready`, `claim`): the
    /// task view, and whether the task is stale at `now_ms` (its holder's lease ended before
    /// it: [`Replica::stale_holder`]). Two nodes with the same records give the same view and
    /// may disagree on `stale` only as far as their clocks do.
    pub fn live_task_view(&self, entry: &TaskEntry, now_ms: u64) -> LiveTaskView {
        let mut texts = NodeTexts::default();
        LiveTaskView {
            task: self.task_view_with(entry, &mut texts),
            stale: self.stale_view(entry, now_ms, &mut texts),
            receipt: None,
        }
    }

    /// The receipt of claim `claim` of `entry`'s task as the records stand: `quorum` once
    /// confirmed, else `offline` when this node reached no peer (`reached_peers`), else
    /// `settled` (docs/PROTOCOL.md, "Confirmation and receipts"). `None` when the task has no
    /// such claim.
    pub fn receipt(&self, entry: &TaskEntry, claim: &RecordId, reached_peers: bool) -> Option<Receipt> {
        let state = &entry.state;
        let made = state.claims.get(claim)?;
        let tally = state.tallies.get(claim);
        let confirmed = state.is_confirmed(claim);
        let confirmation = match (confirmed, reached_peers) {
            (true, _) => Confirmation::Quorum,
            (false, true) => Confirmation::Settled,
            (false, false) => Confirmation::Offline,
        };
        let needed = tally.map_or_else(|| majority(self.members().count_at(made.stamp)), |tally| tally.needed);
        let acknowledged_by =
            tally.map_or_else(Vec::new, |tally| tally.voters.iter().map(ToString::to_string).collect());
        Some(Receipt { confirmation, generation: made.claim.generation, acknowledged_by, needed })
    }

    fn stale_view(&self, entry: &TaskEntry, now_ms: u64, texts: &mut NodeTexts) -> Option<StaleView> {
        self.stale_holder(entry, now_ms).map(|holder| StaleView {
            agent: agent_text(&holder.agent),
            node_id: texts.of(&holder.node).to_owned(),
            node_name: self.node_name(&holder.node),
            claim_id: holder.claim.to_string(),
            since: format_rfc3339_ms(holder.lease_until_ms),
        })
    }

    /// Every task's view, in id order.
    pub fn task_views(&self) -> Vec<TaskView> {
        self.task_views_of(self.tasks().values())
    }

    /// The current members as `mesh members` and the export show them, by node id.
    pub fn member_views(&self) -> Vec<MemberView> {
        self.members()
            .current()
            .map(|member| MemberView {
                node_id: member.node.to_string(),
                name: member.name.clone(),
                added_by: member.added_by.to_string(),
                added_at: format_rfc3339_ms(member.added_at.wall_ms),
            })
            .collect()
    }

    /// The canonical JSON export of the whole resolved state.
    pub fn export_json(&self) -> String {
        let export = Export {
            schema: EXPORT_SCHEMA,
            mesh_id: self.mesh().map(|mesh| mesh.to_string()).unwrap_or_default(),
            members: self.member_views(),
            tasks: self.task_views(),
        };
        // Serializing plain structs of strings, numbers and vectors cannot fail.
        serde_json::to_string_pretty(&export).unwrap_or_default()
    }

    /// One JSON object per line: the export's tasks, for streaming tools.
    pub fn export_jsonl(&self) -> String {
        let mut out = String::new();
        for view in self.task_views() {
            out.push_str(&serde_json::to_string(&view).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

/// About the JSON size of an open task without records, to size a listing's buffer at once
/// instead of growing it by copies (a claimed or finished task is longer).
const TASK_JSON_BYTES_TYPICAL: usize = 700;

/// Version of the export's JSON shape.
pub const EXPORT_SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
struct Export {
    schema: u32,
    mesh_id: String,
    members: Vec<MemberView>,
    tasks: Vec<TaskView>,
}

pub use meshwork_protocol::api::MemberView;
