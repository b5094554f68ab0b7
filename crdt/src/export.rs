//! The resolved state as the contract's JSON: task views and the canonical export.
//!
//! The export is a pure function of the records (invariant 1): it shows nothing that
//! depends on the reading node's clock or identity, so equal records give equal bytes. What
//! the clock makes of a task (whether it is stale) is in the live views the node answers
//! with ([`Replica::live_task_view`]), beside the task view and never inside it.

use meshwork_protocol::api::{
    CheckView, FailureView, HandoffView, HolderView, LiveTaskView, LostClaimView, ProgressView, ResultView, StaleView,
    TaskView,
};
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::{AgentName, NodeId};
use serde::Serialize;

use crate::replica::{Replica, TaskEntry};
use crate::resolve::Noted;

fn agent_text(agent: &Option<AgentName>) -> String {
    agent.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn by(agent: &Option<AgentName>, node: &NodeId) -> String {
    match agent {
        Some(agent) => format!("{agent}@{node}"),
        None => node.to_string(),
    }
}

fn result_view(noted: &Noted<String>) -> ResultView {
    ResultView {
        summary: noted.value.clone(),
        by: by(&noted.agent, &noted.node),
        at: format_rfc3339_ms(noted.at.wall_ms),
    }
}

fn failure_view(noted: &Noted<String>) -> FailureView {
    FailureView {
        reason: noted.value.clone(),
        by: by(&noted.agent, &noted.node),
        at: format_rfc3339_ms(noted.at.wall_ms),
    }
}

impl Replica {
    /// The contract's task object for one task.
    pub fn task_view(&self, entry: &TaskEntry) -> TaskView {
        let (fields, state) = (&entry.fields, &entry.state);
        let holder = state.holder.as_ref().map(|holder| HolderView {
            agent: agent_text(&holder.agent),
            node_id: holder.node.to_string(),
            node_name: self.node_name(&holder.node),
            claim_id: holder.claim.to_string(),
            claimed_at: format_rfc3339_ms(holder.claimed_at.wall_ms),
            lease_until: format_rfc3339_ms(holder.lease_until_ms),
            quorum: holder.quorum,
        });
        TaskView {
            id: fields.id.clone(),
            title: fields.title.clone(),
            description: fields.description.clone(),
            status: state.status,
            ready: self.is_ready(entry),
            blocked_by: self.blocked_by(entry),
            priority: fields.priority,
            depends_on: fields.depends_on.iter().cloned().collect(),
            requires: fields.requires.iter().map(ToString::to_string).collect(),
            prefers: fields.prefers.iter().map(ToString::to_string).collect(),
            labels: fields.labels.clone(),
            files: fields.files.clone(),
            lease_ms: fields.lease_ms,
            max_attempts: fields.max_attempts,
            needs_approval: fields.needs_approval,
            approved: state.approved,
            generation: state.generation,
            attempts: state.attempts,
            holder,
            progress: state
                .progress
                .iter()
                .map(|note| ProgressView {
                    at: format_rfc3339_ms(note.at.wall_ms),
                    agent: agent_text(&note.agent),
                    node_id: note.node.to_string(),
                    message: note.value.message.clone(),
                    percent: note.value.percent,
                })
                .collect(),
            lost_claims: state
                .lost_claims
                .iter()
                .map(|lost| LostClaimView {
                    agent: agent_text(&lost.agent),
                    node_id: lost.node.to_string(),
                    claim_id: lost.claim.to_string(),
                    generation: lost.generation,
                    claimed_at: format_rfc3339_ms(lost.claimed_at.wall_ms),
                    reason: lost.reason.to_string(),
                })
                .collect(),
            handoffs: state
                .handoffs
                .iter()
                .map(|note| HandoffView {
                    at: format_rfc3339_ms(note.at.wall_ms),
                    agent: agent_text(&note.agent),
                    node_id: note.node.to_string(),
                    commits: note.value.commits.clone(),
                    files: note.value.files.clone(),
                    tests: note.value.tests.clone(),
                    risks: note.value.risks.clone(),
                    next: note.value.next.clone(),
                })
                .collect(),
            checks: fields.checks.iter().map(|command| CheckView { command: command.clone() }).collect(),
            result: state.result.as_ref().map(result_view),
            other_results: state.other_results.iter().map(result_view).collect(),
            failure: state.failure.as_ref().map(failure_view),
            cancelled: state.cancelled.as_ref().map(failure_view),
            id_conflicts: fields.id_conflicts.iter().map(ToString::to_string).collect(),
            rejected_records: state.rejected,
            created_by: fields.created_by.to_string(),
            created_at: format_rfc3339_ms(fields.created_at.wall_ms),
            updated_at: format_rfc3339_ms(state.updated_at.wall_ms),
        }
    }

    /// The task object a node answers with (`task show`, `task list`, `ready`, `claim`): the
    /// task view, and whether the task is stale at `now_ms` (its holder's lease ended before
    /// it: [`Replica::stale_holder`]). Two nodes with the same records give the same view and
    /// may disagree on `stale` only as far as their clocks do.
    pub fn live_task_view(&self, entry: &TaskEntry, now_ms: u64) -> LiveTaskView {
        let stale = self.stale_holder(entry, now_ms).map(|holder| StaleView {
            agent: agent_text(&holder.agent),
            node_id: holder.node.to_string(),
            node_name: self.node_name(&holder.node),
            claim_id: holder.claim.to_string(),
            since: format_rfc3339_ms(holder.lease_until_ms),
        });
        LiveTaskView { task: self.task_view(entry), stale }
    }

    /// Every task's view, in id order.
    pub fn task_views(&self) -> Vec<TaskView> {
        self.tasks().values().map(|entry| self.task_view(entry)).collect()
    }

    /// The canonical JSON export of the whole resolved state.
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
