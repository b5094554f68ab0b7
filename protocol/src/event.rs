//! The node's events (version 1): what `GET /v1/events` serves as server-sent events and
//! `meshwork watch` prints, one JSON object each.
//!
//! Every event has a per-node `id` that only grows (across restarts too), the time it was
//! published, and a `kind` with the fields of that kind. A client that resumes with
//! `Last-Event-ID` gets every event after that id still in the node's replay window; when
//! some were already gone it gets one [`Event::Gap`] first.

use serde::{Deserialize, Serialize};

use crate::api::TaskStatus;

/// One event as the stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Grows with every event of this node; `Last-Event-ID` names one.
    pub id: u64,
    /// When the node published it (RFC 3339).
    pub at: String,
    #[serde(flatten)]
    pub event: Event,
}

/// What happened. `agent` and `node_id` name who holds or held the claim (or to whom a
/// message went), where the event is about one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A task appeared (made here or merged from a peer).
    TaskCreated { task: String, title: String },
    /// A task's fields or records changed without another event naming the change.
    TaskChanged { task: String, status: TaskStatus },
    /// A task became ready to claim (open, dependencies done, approved if it must be).
    TaskReady { task: String },
    /// A task gained a holder.
    TaskClaimed { task: String, agent: Option<String>, node_id: String, claim_id: String },
    /// A task became done, failed for good, or cancelled.
    TaskFinished { task: String, status: TaskStatus },
    /// A claim of an agent of this node that had been told it lost holds the task after all.
    ClaimWon { task: String, agent: Option<String>, node_id: String, claim_id: String },
    /// The claim holding a task was confirmed: a majority of the members voted for it, so it
    /// never loses (docs/PROTOCOL.md, "Confirmation and receipts"). A claim answered `settled`
    /// or `offline` hears it here when the votes come later.
    ClaimConfirmed { task: String, agent: Option<String>, node_id: String, claim_id: String },
    /// A claim lost: to another claim, a gate, a quorum, a finished task.
    ClaimLost { task: String, agent: Option<String>, node_id: String, claim_id: String, reason: String },
    /// A holder's lease ran out and another claim took the task over.
    ClaimTakenOver { task: String, agent: Option<String>, node_id: String, claim_id: String },
    /// A holder's lease ends soon; renew it (`meshwork renew`) to keep the task.
    LeaseExpiring { task: String, agent: Option<String>, node_id: String, lease_until: String },
    /// A holder's lease ended: the task is stale, and `ready` offers it for takeover.
    LeaseExpired { task: String, agent: Option<String>, node_id: String, since: String },
    /// A message reached an agent of this node.
    MessageArrived { agent: String, message_id: String, from: String, subject: String, priority: String },
    /// A connection to a member came up.
    PeerConnected { node_id: String },
    /// The last connection to a member went down.
    PeerDisconnected { node_id: String },
    /// A node became a member.
    MemberAdded { node_id: String, name: String },
    /// A member was removed.
    MemberRemoved { node_id: String },
    /// A member published a new probe of its machine.
    ProbeChanged { node_id: String },
    /// The client fell behind or resumed from an id older than the replay window: events
    /// after `after` up to `before` (exclusive) are gone; read the state afresh.
    Gap { after: u64, before: u64 },
}

impl Event {
    /// Every kind, as `--kind` and `?kind=` name them.
    pub const KINDS: [&'static str; 18] = [
        "task_created",
        "task_changed",
        "task_ready",
        "task_claimed",
        "task_finished",
        "claim_won",
        "claim_confirmed",
        "claim_lost",
        "claim_taken_over",
        "lease_expiring",
        "lease_expired",
        "message_arrived",
        "peer_connected",
        "peer_disconnected",
        "member_added",
        "member_removed",
        "probe_changed",
        "gap",
    ];

    /// This event's kind, one of [`Event::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TaskCreated { .. } => "task_created",
            Event::TaskChanged { .. } => "task_changed",
            Event::TaskReady { .. } => "task_ready",
            Event::TaskClaimed { .. } => "task_claimed",
            Event::TaskFinished { .. } => "task_finished",
            Event::ClaimWon { .. } => "claim_won",
            Event::ClaimConfirmed { .. } => "claim_confirmed",
            Event::ClaimLost { .. } => "claim_lost",
            Event::ClaimTakenOver { .. } => "claim_taken_over",
            Event::LeaseExpiring { .. } => "lease_expiring",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::MessageArrived { .. } => "message_arrived",
            Event::PeerConnected { .. } => "peer_connected",
            Event::PeerDisconnected { .. } => "peer_disconnected",
            Event::MemberAdded { .. } => "member_added",
            Event::MemberRemoved { .. } => "member_removed",
            Event::ProbeChanged { .. } => "probe_changed",
            Event::Gap { .. } => "gap",
        }
    }

    /// The agent and node the event is addressed to, if it concerns one agent's claim or
    /// message.
    pub fn addressee(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Event::ClaimWon { agent, node_id, .. }
            | Event::ClaimConfirmed { agent, node_id, .. }
            | Event::ClaimLost { agent, node_id, .. }
            | Event::ClaimTakenOver { agent, node_id, .. }
            | Event::LeaseExpiring { agent, node_id, .. }
            | Event::LeaseExpired { agent, node_id, .. }
            | Event::TaskClaimed { agent, node_id, .. } => {
                agent.as_deref().map(|agent| (agent, Some(node_id.as_str())))
            }
            Event::MessageArrived { agent, .. } => Some((agent.as_str(), None)),
            _ => None,
        }
    }
}

/// `GET /v1/events`'s query: which events a client wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    /// Only events addressed to this agent of this node (its claims and messages); a gap is
    /// always sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Comma-separated kinds (`claim_lost,message_arrived`); every kind when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Resume after this id, as the `Last-Event-ID` header does (the header wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// The header a client resumes with (the SSE standard's).
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// The path of the event stream. Not a [`crate::route::Route`]: its answer is a stream.
pub const EVENTS_PATH: &str = "/v1/events";

/// A client's choice of events, checked once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    agent: Option<String>,
    /// Empty: every kind.
    kinds: Vec<&'static str>,
    /// This node's id: an agent's events are those of its claims made here.
    node_id: String,
}

impl EventFilter {
    /// Reads a query; an unknown kind is refused with the list of kinds.
    pub fn new(query: &EventsQuery, node_id: String) -> Result<EventFilter, String> {
        let mut kinds = Vec::new();
        for word in query.kind.as_deref().unwrap_or_default().split(',').filter(|word| !word.is_empty()) {
            let kind = Event::KINDS
                .into_iter()
                .find(|kind| *kind == word)
                .ok_or_else(|| format!("no event kind {word:?} (kinds: {})", Event::KINDS.join(", ")))?;
            kinds.push(kind);
        }
        Ok(EventFilter { agent: query.agent.clone().filter(|agent| !agent.is_empty()), kinds, node_id })
    }

    /// Whether the client wants this event. A gap passes every filter: the client must
    /// learn that it missed something.
    pub fn wants(&self, event: &Event) -> bool {
        if matches!(event, Event::Gap { .. }) {
            return true;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind()) {
            return false;
        }
        let Some(agent) = &self.agent else { return true };
        match event.addressee() {
            Some((to, node)) => to == agent && node.is_none_or(|node| node == self.node_id),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(agent: &str, node: &str) -> Event {
        Event::ClaimLost {
            task: "W-1".to_owned(),
            agent: Some(agent.to_owned()),
            node_id: node.to_owned(),
            claim_id: "c".to_owned(),
            reason: "lost the race".to_owned(),
        }
    }

    #[test]
    fn an_event_is_one_flat_json_object_with_its_kind() {
        // Goal: `watch --json` lines are flat objects a script can filter on `kind`.
        let envelope = EventEnvelope { id: 7, at: "2026-12-07T10:00:00.000Z".to_owned(), event: lost("ann", "N1") };
        let text = serde_json::to_string(&envelope).map_err(|error| error.to_string());
        expect_test::expect![[r#"
            Ok(
                "{\"id\":7,\"at\":\"2026-12-07T10:00:00.000Z\",\"kind\":\"claim_lost\",\"task\":\"W-1\",\"agent\":\"ann\",\"node_id\":\"N1\",\"claim_id\":\"c\",\"reason\":\"lost the race\"}",
            )
        "#]]
        .assert_debug_eq(&text);
        let back: Result<EventEnvelope, String> =
            serde_json::from_str(&text.unwrap_or_default()).map_err(|error| error.to_string());
        assert_eq!(back.map(|back| back.event.kind()), Ok("claim_lost"));
    }

    #[test]
    fn an_agent_filter_keeps_that_agents_events_on_this_node_and_gaps() {
        // Goal: `watch --agent ann` shows ann's claims made here, never another node's ann.
        let query = EventsQuery { agent: Some("ann".to_owned()), ..EventsQuery::default() };
        let Ok(filter) = EventFilter::new(&query, "N1".to_owned()) else { panic!("a valid filter") };
        assert!(filter.wants(&lost("ann", "N1")));
        assert!(!filter.wants(&lost("ann", "N2")));
        assert!(!filter.wants(&lost("bob", "N1")));
        assert!(!filter.wants(&Event::PeerConnected { node_id: "N2".to_owned() }));
        assert!(filter.wants(&Event::Gap { after: 1, before: 9 }));
    }

    #[test]
    fn a_kind_filter_refuses_unknown_kinds_and_keeps_the_named_ones() {
        // Goal: a typo in --kind is an error that lists the kinds, not an empty stream.
        let query = |kind: &str| EventsQuery { kind: Some(kind.to_owned()), ..EventsQuery::default() };
        assert!(EventFilter::new(&query("claim_lots"), String::new()).is_err_and(|error| error.contains("claim_lost")));
        let Ok(filter) = EventFilter::new(&query("claim_lost,peer_connected"), String::new()) else {
            panic!("a valid filter")
        };
        assert!(filter.wants(&lost("ann", "N1")));
        assert!(filter.wants(&Event::PeerConnected { node_id: "N2".to_owned() }));
        assert!(!filter.wants(&Event::TaskReady { task: "W-2".to_owned() }));
    }

    #[test]
    fn every_kind_is_listed() {
        // Goal: KINDS, kind() and the serde tag agree.
        let event = Event::Gap { after: 0, before: 1 };
        let json = serde_json::to_value(&event).ok();
        assert_eq!(json.and_then(|json| json["kind"].as_str().map(str::to_owned)), Some(event.kind().to_owned()));
        assert!(Event::KINDS.contains(&event.kind()));
    }
}
