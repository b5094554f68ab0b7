//! Agents' inboxes in the document, and the notice every agent gets when its claim lost
//! (invariant 5, losers are told).
//!
//! A message sits under `inbox["<agent@node>/<message_id>"]` as one JSON text scalar,
//! written whole in one change; marks are their own keys (`.../read`, `.../acked`), so no
//! nested object is ever created and two writers can never hide each other's messages.
//!
//! A lost-claim notice has the id `lost-<claim record id>`: only the node that made the
//! claim writes it, and only when that key is absent, so each lost claim is told exactly
//! once however many merges reveal it, across restarts too. The same holds for `taken-<claim>`
//! (a claim's lease ran out and another claim took the task over), `won-<claim>` (a claim
//! whose agent was told one of those holds the task after all) and `expired-<claim>` (the
//! claim still holds the task, but its lease ran out: the task is stale and anyone may take
//! it over).

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::{AgentId, RecordId, TaskId};
use serde::{Deserialize, Serialize};

use crate::document::DocError;
use crate::ready;
use crate::replica::Replica;
use crate::resolve::{Holder, LossReason};

/// Who sends the notices the node writes itself.
pub const NODE_SENDER: &str = "meshwork";
/// Key suffix of a message's read mark.
const READ_MARK: &str = "read";
/// Key suffix of a message's ack mark.
const ACK_MARK: &str = "acked";

/// A message as the document holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub subject: String,
    pub body: String,
    pub priority: String,
    /// Milliseconds since the epoch when it was written.
    pub at_ms: u64,
    /// The task it is about, if any.
    pub task: Option<String>,
}

/// A message with its marks, as an agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub id: String,
    pub to: AgentId,
    pub message: Message,
    pub read: bool,
    pub acked: bool,
}

/// A notice this node owes one of its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub to: AgentId,
    pub id: String,
    pub message: Message,
}

fn message_key(to: &AgentId, id: &str) -> String {
    format!("{to}/{id}")
}

fn mark_key(to: &AgentId, id: &str, mark: &str) -> String {
    format!("{to}/{id}/{mark}")
}

/// The id of the notice for a lost claim.
pub fn lost_notice_id(claim: &RecordId) -> String {
    format!("lost-{claim}")
}

/// The id of the notice that a claim its agent was told had lost holds the task after all
/// (the claim it lost to stopped counting: its signer's removal arrived, say).
pub fn reinstated_notice_id(claim: &RecordId) -> String {
    format!("won-{claim}")
}

/// The id of the notice that a claim's lease ran out and another claim took the task over.
pub fn taken_over_notice_id(claim: &RecordId) -> String {
    format!("taken-{claim}")
}

/// The id of the notice that a claim that holds its task let its lease run out: the task is
/// stale, and any agent may take it over.
pub fn expired_notice_id(claim: &RecordId) -> String {
    format!("expired-{claim}")
}

impl Replica {
    /// The messages of one agent, oldest first, then by id.
    pub fn inbox(&self, to: &AgentId) -> Vec<InboxEntry> {
        let doc = self.doc();
        let map = &doc.maps().inbox;
        let prefix = format!("{to}/");
        let mut entries: Vec<InboxEntry> = doc
            .automerge()
            .map_range(map, prefix.clone()..)
            .take_while(|item| item.key.starts_with(&prefix))
            .filter_map(|item| {
                let id = item.key.strip_prefix(&prefix)?;
                // Marks are `<id>/<mark>`; a message id holds no '/'.
                if id.contains('/') {
                    return None;
                }
                let automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(text)) = item.value else {
                    return None;
                };
                let message: Message = serde_json::from_str(&text).ok()?;
                Some(InboxEntry {
                    id: id.to_owned(),
                    to: to.clone(),
                    message,
                    read: self.has_key(&mark_key(to, id, READ_MARK)),
                    acked: self.has_key(&mark_key(to, id, ACK_MARK)),
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.message.at_ms, &a.id).cmp(&(b.message.at_ms, &b.id)));
        entries
    }

    fn has_key(&self, key: &str) -> bool {
        let doc = self.doc();
        matches!(doc.automerge().get(&doc.maps().inbox, key), Ok(Some(_)))
    }

    /// The notices this node owes its agents for these tasks, unless written before: one per
    /// lost claim this node made for a named agent, one per lease of theirs another claim took
    /// over (unless the agent finished the task itself), one when a claim they were told of so
    /// holds the task after all, and one when a claim of theirs that holds its task let its
    /// lease run out before `now_ms` (the task is stale: [`Replica::stale_holder`]).
    pub fn notices_due<'a>(&self, tasks: impl IntoIterator<Item = &'a TaskId>, now_ms: u64) -> Vec<Notice> {
        let node = self.node();
        let mut due = Vec::new();
        for id in tasks {
            let Some(entry) = self.task(id) else { continue };
            for lost in entry.state.lost_claims.iter().filter(|lost| lost.node == node) {
                let Some(agent) = &lost.agent else { continue };
                let to = AgentId { agent: agent.clone(), node };
                let notice_id = lost_notice_id(&lost.claim);
                if self.has_key(&message_key(&to, &notice_id)) || due.iter().any(|n: &Notice| n.id == notice_id) {
                    continue;
                }
                let (subject, body) = self.lost_text(id, &lost.reason, lost.generation);
                let message = Message {
                    from: NODE_SENDER.to_owned(),
                    subject,
                    body,
                    priority: "urgent".to_owned(),
                    at_ms: now_ms,
                    task: Some(id.to_string()),
                };
                due.push(Notice { to, id: notice_id, message });
            }
            for ended in entry.state.taken_over.iter().filter(|ended| ended.node == node) {
                let Some(agent) = &ended.agent else { continue };
                // An agent that finished the task itself needs no telling.
                let finished_it = entry.state.status == TaskStatus::Done
                    && entry
                        .state
                        .result
                        .as_ref()
                        .is_some_and(|done| done.node == node && done.agent.as_ref() == Some(agent));
                let to = AgentId { agent: agent.clone(), node };
                let notice_id = taken_over_notice_id(&ended.claim);
                if finished_it
                    || self.has_key(&message_key(&to, &notice_id))
                    || due.iter().any(|n: &Notice| n.id == notice_id && n.to == to)
                {
                    continue;
                }
                let message = Message {
                    from: NODE_SENDER.to_owned(),
                    subject: format!("lease on {id} ran out and was taken over"),
                    body: format!(
                        "Your lease on {id} (generation {}) ran out at {} and another claim took the task over. \
                         Stop working on it; what you wrote stays in the task's history.",
                        ended.generation,
                        meshwork_protocol::time::format_rfc3339_ms(ended.lease_until_ms)
                    ),
                    priority: "urgent".to_owned(),
                    at_ms: now_ms,
                    task: Some(id.to_string()),
                };
                due.push(Notice { to, id: notice_id, message });
            }
            // A holder that was told it lost, or that its lease was taken over, is told, once,
            // that it holds the task after all.
            let Some(holder) = entry.state.holder.as_ref().filter(|holder| holder.node == node) else { continue };
            let Some(agent) = &holder.agent else { continue };
            let to = AgentId { agent: agent.clone(), node };
            if let Some(notice) = self.expired_notice(id, holder, &to, now_ms) {
                due.push(notice);
            }
            let told_lost = self.has_key(&message_key(&to, &lost_notice_id(&holder.claim)))
                || self.has_key(&message_key(&to, &taken_over_notice_id(&holder.claim)));
            let notice_id = reinstated_notice_id(&holder.claim);
            if told_lost && !self.has_key(&message_key(&to, &notice_id)) {
                let message = Message {
                    from: NODE_SENDER.to_owned(),
                    subject: format!("claim on {id} counts after all"),
                    body: format!(
                        "Your claim of {id} holds the task after all: the claim that displaced it no longer counts. \
                         You hold {id} until {}; resume the work or release it.",
                        meshwork_protocol::time::format_rfc3339_ms(holder.lease_until_ms)
                    ),
                    priority: "urgent".to_owned(),
                    at_ms: now_ms,
                    task: Some(id.to_string()),
                };
                due.push(Notice { to, id: notice_id, message });
            }
        }
        due
    }

    /// The notice that this node's holder let its lease run out, if it did before `now_ms` by
    /// the records and was not told yet. Only a current holder is told: a task finished,
    /// released or taken over meanwhile has none (a takeover has its own notice), so each
    /// claim is told at most once, and never about a task that moved on.
    fn expired_notice(&self, id: &TaskId, holder: &Holder, to: &AgentId, now_ms: u64) -> Option<Notice> {
        let notice_id = expired_notice_id(&holder.claim);
        if !ready::is_stale(holder.lease_until_ms, now_ms) || self.has_key(&message_key(to, &notice_id)) {
            return None;
        }
        let until = meshwork_protocol::time::format_rfc3339_ms(holder.lease_until_ms);
        let message = Message {
            from: NODE_SENDER.to_owned(),
            subject: format!("lease on {id} ran out"),
            body: format!(
                "Your lease on {id} ran out at {until} and was not renewed in time: the task is stale, and any agent \
                 may take it over (`ready` offers it, `claim --next` takes it). If you are still at work, finish or \
                 release it now: `renew` is refused once a lease ran out."
            ),
            priority: "urgent".to_owned(),
            at_ms: now_ms,
            task: Some(id.to_string()),
        };
        Some(Notice { to: to.clone(), id: notice_id, message })
    }

    /// Tasks one of this node's agents holds whose lease ran out before `now_ms` and whose
    /// holder was not told yet: what [`Replica::fulfil_expiry_duties`] works on.
    pub fn expired_holdings(&self, now_ms: u64) -> Vec<TaskId> {
        self.own_untold_holders()
            .filter(|(_, holder)| ready::is_stale(holder.lease_until_ms, now_ms))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// When the next lease of this node's agents runs out whose holder was not told yet: the
    /// node sets a timer for just after it (the lease holds through this millisecond) and then
    /// calls [`Replica::fulfil_expiry_duties`]. `None` when no such lease is held. A renewal
    /// moves it later, a new claim can move it earlier: ask again after every change.
    pub fn next_lease_expiry_ms(&self) -> Option<u64> {
        self.own_untold_holders().map(|(_, holder)| holder.lease_until_ms).min()
    }

    /// The holders among this node's agents that have no `expired-` notice, by task.
    fn own_untold_holders(&self) -> impl Iterator<Item = (&TaskId, &Holder)> {
        let node = self.node();
        self.tasks().iter().filter_map(move |(id, entry)| {
            let holder = entry.state.holder.as_ref().filter(|holder| holder.node == node)?;
            let agent = holder.agent.as_ref()?;
            let to = AgentId { agent: agent.clone(), node };
            (!self.has_key(&message_key(&to, &expired_notice_id(&holder.claim)))).then_some((id, holder))
        })
    }

    fn lost_text(&self, task: &TaskId, reason: &LossReason, generation: u32) -> (String, String) {
        let subject = format!("lost claim on {task}");
        let body = match reason {
            LossReason::LostTo { winner, winner_agent } => {
                let winner = match winner_agent {
                    Some(agent) => format!("{agent}@{winner}"),
                    None => winner.to_string(),
                };
                format!(
                    "Your claim of {task} (generation {generation}) lost to {winner}. Stop working on it; \
                     what you wrote stays in the task's history."
                )
            }
            other => format!("Your claim of {task} (generation {generation}) does not count: {other}."),
        };
        (subject, body)
    }

    /// Writes notices in one change; `None` when there are none.
    pub fn write_notices(&mut self, notices: &[Notice], now_ms: u64) -> Result<Option<Vec<u8>>, DocError> {
        if notices.is_empty() {
            return Ok(None);
        }
        let changes = self.doc_mut().change(now_ms, "inbox notices", |tx, maps| {
            for notice in notices {
                let text = serde_json::to_string(&notice.message).unwrap_or_default();
                tx.put(&maps.inbox, message_key(&notice.to, &notice.id), text)?;
            }
            Ok(())
        })?;
        Ok(Some(changes))
    }

    /// Marks messages read (and acked, when `ack`); `None` when every mark was there.
    pub fn mark_messages(
        &mut self,
        to: &AgentId,
        ids: &[String],
        ack: bool,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, DocError> {
        let mut keys: Vec<String> = Vec::new();
        for id in ids {
            keys.push(mark_key(to, id, READ_MARK));
            if ack {
                keys.push(mark_key(to, id, ACK_MARK));
            }
        }
        keys.retain(|key| !self.has_key(key));
        if keys.is_empty() {
            return Ok(None);
        }
        let changes = self.doc_mut().change(now_ms, "inbox marks", |tx, maps| {
            for key in &keys {
                tx.put(&maps.inbox, key.as_str(), true)?;
            }
            Ok(())
        })?;
        Ok(Some(changes))
    }
}
