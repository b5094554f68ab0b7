//! Stale work: a claimed task whose holder's lease (as last renewed in the records) ended
//! before now is stale. `ready` offers it, `claim --next` takes it over, and the holder's
//! agent is told once. Staleness depends on the reading node's clock, so it is a function of
//! `now_ms` beside the task view and never part of the export (invariant 1).

use meshwork_crdt::inbox::{expired_notice_id, taken_over_notice_id};
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, TaskStatus};
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::{AgentId, AgentName, ErrorCode, NodeKey, TaskId};

const T0: u64 = 1_800_000_000_000;
const LEASE_MS: u64 = 60_000;

/// Two members; `replicas[0]` founded the mesh and added `replicas[1]`. Tasks are added by
/// the founder and merged into the other.
struct Pair {
    keys: [NodeKey; 2],
    replicas: Vec<Replica>,
    agent: AgentName,
}

fn pair() -> Pair {
    let keys = [node_key(1), node_key(2)];
    let agent = AgentName::new("agent").unwrap();
    let mut founder = Replica::found(&keys[0], 1, "one", "mesh", T0).unwrap().replica;
    let added =
        Membership { action: MembershipAction::Add, member: keys[1].node_id(), name: "two".into(), roles: vec![] };
    founder.change_membership(&keys[0], added, T0 + 1).unwrap();
    let other = Replica::open(keys[1].node_id(), 1, QueueDoc::load(Some(&founder.doc().save()), &[]).unwrap().0);
    Pair { keys, replicas: vec![founder, other], agent }
}

impl Pair {
    fn at<R>(&mut self, node: usize, operation: impl FnOnce(&mut Replica, Speaker<'_>) -> R) -> R {
        let speaker = Speaker { key: &self.keys[node], agent: &self.agent };
        operation(&mut self.replicas[node], speaker)
    }

    fn add(&mut self, id: &str, priority: i64, now_ms: u64) -> TaskId {
        let request =
            AddTask { id: Some(id.into()), title: id.into(), priority, lease_ms: Some(LEASE_MS), ..AddTask::default() };
        self.at(0, |replica, speaker| replica.add_task(speaker, &request, now_ms, 1)).unwrap().task
    }

    fn merge(&mut self, from: usize, into: usize, now_ms: u64) {
        let saved = self.replicas[from].doc().save();
        self.replicas[into].apply_changes(&saved, now_ms).unwrap();
    }

    fn offered(&self, node: usize, now_ms: u64) -> Vec<String> {
        self.replicas[node].ready_tasks_at(now_ms).iter().map(|entry| entry.fields.id.to_string()).collect()
    }

    fn inbox_ids(&self, node: usize) -> Vec<String> {
        let to = AgentId { agent: self.agent.clone(), node: self.keys[node].node_id() };
        self.replicas[node].inbox(&to).into_iter().map(|entry| entry.id).collect()
    }
}

/// While the lease holds, a claimed task is not offered; once it ended (by the reading
/// node's clock) `ready` offers it, marked stale with its holder and since when. The export
/// and the task view are the same at both times.
#[test]
fn ready_offers_a_task_whose_lease_expired_as_stale() {
    let mut pair = pair();
    let task = pair.add("X", 0, T0 + 10);
    pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 20)).unwrap();
    pair.merge(0, 1, T0 + 21);
    let holder = pair.replicas[1].task(&task).unwrap().state.holder.clone().unwrap();
    let (during, after) = (holder.lease_until_ms, holder.lease_until_ms + 1);

    assert!(pair.offered(1, during).is_empty(), "the lease holds through its last millisecond");
    assert_eq!(pair.offered(1, after), ["X"]);
    assert!(pair.replicas[1].ready_tasks().is_empty(), "by the records alone it is claimed");
    assert_eq!(pair.replicas[1].stale_tasks(after).len(), 1);
    assert!(pair.replicas[1].stale_tasks(during).is_empty());

    let entry = pair.replicas[1].task(&task).unwrap();
    assert_eq!(pair.replicas[1].live_task_view(entry, during).stale, None);
    let live = pair.replicas[1].live_task_view(entry, after);
    let stale = live.stale.expect("stale once the lease ended");
    assert_eq!(stale.node_id, pair.keys[0].node_id().to_string());
    assert_eq!((stale.agent.as_str(), stale.node_name.as_str()), ("agent", "one"));
    assert_eq!(stale.claim_id, holder.claim.to_string());
    assert_eq!(stale.since, format_rfc3339_ms(holder.lease_until_ms));
    assert_eq!(live.task, pair.replicas[1].task_view(entry), "the view by the records does not move");
    // The JSON answer carries `stale`; the export, a function of the records, never does.
    let answer = serde_json::to_value(&live.task).unwrap();
    assert!(answer.get("stale").is_none());
    let json = serde_json::to_value(pair.replicas[1].live_task_view(entry, after)).unwrap();
    assert_eq!(json["stale"]["since"], stale.since);
    assert_eq!(json["id"], "X");
    assert!(!pair.replicas[1].export_json().contains("\"stale\""));
}

/// `claim --next` takes a stale task over: a claim of the next generation, which counts
/// because it is stamped after the lease ended. The former holder's agent is told it was
/// taken over.
#[test]
fn claim_next_takes_over_a_stale_task() {
    let mut pair = pair();
    let task = pair.add("X", 0, T0 + 10);
    let first = pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 20)).unwrap().record.unwrap();
    pair.merge(0, 1, T0 + 21);
    let lease_until = pair.replicas[1].task(&task).unwrap().state.holder.as_ref().unwrap().lease_until_ms;

    let nothing = pair.at(1, |replica, speaker| replica.claim_next(speaker, lease_until)).unwrap_err();
    assert_eq!(nothing.to_error_body().code, ErrorCode::NotFound, "not stale yet");
    let applied = pair.at(1, |replica, speaker| replica.claim_next(speaker, lease_until + 1)).unwrap();
    let state = &pair.replicas[1].task(&task).unwrap().state;
    assert_eq!((state.status, state.generation), (TaskStatus::Claimed, 1));
    assert_eq!(state.holder.as_ref().map(|holder| holder.claim), applied.record);
    assert_eq!(state.taken_over.iter().map(|ended| ended.claim).collect::<Vec<_>>(), [first]);

    pair.merge(1, 0, lease_until + 2);
    let duties = pair.replicas[0].fulfil_duties(&pair.keys[0], std::slice::from_ref(&task), lease_until + 2);
    assert!(duties.errors.is_empty());
    assert_eq!(pair.inbox_ids(0), [taken_over_notice_id(&first)]);
}

/// A stale task is ordered like an open one: by priority, then age. Abandoned work of high
/// priority goes before fresh work of lower priority, and never starves behind it.
#[test]
fn claim_next_orders_stale_tasks_by_priority_like_open_ones() {
    let mut pair = pair();
    let urgent = pair.add("URGENT", 3, T0 + 10);
    pair.add("LATER", 1, T0 + 11);
    pair.add("OLDER-LOW", 0, T0 + 5);
    pair.at(0, |replica, speaker| replica.claim(speaker, &urgent, T0 + 20)).unwrap();
    pair.merge(0, 1, T0 + 21);
    let after = T0 + 20 + LEASE_MS + 1;
    assert_eq!(pair.offered(1, T0 + 22), ["LATER", "OLDER-LOW"]);
    assert_eq!(pair.offered(1, after), ["URGENT", "LATER", "OLDER-LOW"]);
    let applied = pair.at(1, |replica, speaker| replica.claim_next(speaker, after)).unwrap();
    assert_eq!(applied.task, urgent);
}

/// The speaker's own stale claim is not offered back to it by `claim --next` (claiming it
/// would change nothing); another agent of the same node may take it over.
#[test]
fn claim_next_skips_the_speakers_own_stale_claim() {
    let mut pair = pair();
    let task = pair.add("MINE", 0, T0 + 10);
    pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 20)).unwrap();
    let after = T0 + 20 + LEASE_MS + 1;
    let refused = pair.at(0, |replica, speaker| replica.claim_next(speaker, after)).unwrap_err();
    assert_eq!(refused.to_error_body().code, ErrorCode::NotFound);
    let colleague = AgentName::new("colleague").unwrap();
    let speaker = Speaker { key: &pair.keys[0], agent: &colleague };
    let applied = pair.replicas[0].claim_next(speaker, after).unwrap();
    assert_eq!(applied.task, task);
    let holder = pair.replicas[0].task(&task).unwrap().state.holder.clone().unwrap();
    assert_eq!(holder.agent, Some(colleague));
}

/// The holder's own node tells its agent once that its lease ran out, when its duties run
/// past the lease's end: not before, not twice, and not on any other node. The node learns
/// when to look from `next_lease_expiry_ms`.
#[test]
fn the_holder_is_told_once_when_its_lease_expires() {
    let mut pair = pair();
    let task = pair.add("X", 0, T0 + 10);
    let claim = pair.at(0, |replica, speaker| replica.claim(speaker, &task, T0 + 20)).unwrap().record.unwrap();
    pair.merge(0, 1, T0 + 21);
    let lease_until = pair.replicas[0].task(&task).unwrap().state.holder.as_ref().unwrap().lease_until_ms;
    assert_eq!(pair.replicas[0].next_lease_expiry_ms(), Some(lease_until));
    assert_eq!(pair.replicas[1].next_lease_expiry_ms(), None, "a lease of another node is not its to tell");

    let key = node_key(1);
    let early = pair.replicas[0].fulfil_expiry_duties(&key, lease_until);
    assert!(early.changes.is_empty() && early.notices.is_empty(), "the lease holds through its last millisecond");
    let due = pair.replicas[0].fulfil_expiry_duties(&key, lease_until + 1);
    assert_eq!(due.notices.len(), 1, "{:?}", due.errors);
    assert_eq!(pair.inbox_ids(0), [expired_notice_id(&claim)]);
    let to = AgentId { agent: pair.agent.clone(), node: key.node_id() };
    let notice = &pair.replicas[0].inbox(&to)[0].message;
    assert_eq!((notice.subject.as_str(), notice.priority.as_str()), ("lease on X ran out", "urgent"));
    assert_eq!(notice.task.as_deref(), Some("X"));

    assert!(pair.replicas[0].fulfil_expiry_duties(&key, lease_until + 2).changes.is_empty(), "told once");
    let merged = pair.replicas[0].fulfil_duties(&key, std::slice::from_ref(&task), lease_until + 3);
    assert!(merged.changes.is_empty(), "nor again after a merge");
    assert_eq!(pair.replicas[0].next_lease_expiry_ms(), None);
    let other_key = node_key(2);
    assert!(pair.replicas[1].fulfil_expiry_duties(&other_key, lease_until + 1).changes.is_empty());
    assert!(pair.inbox_ids(1).is_empty());
}

/// A renewal moves the time the node looks again; a task finished or released before its
/// lease ran out gets no notice.
#[test]
fn no_expiry_notice_for_a_task_renewed_finished_or_released_in_time() {
    let mut pair = pair();
    let key = node_key(1);
    let [renewed, done, released] = ["RENEWED", "DONE", "RELEASED"].map(|id| pair.add(id, 0, T0 + 10));
    for task in [&renewed, &done, &released] {
        pair.at(0, |replica, speaker| replica.claim(speaker, task, T0 + 20)).unwrap();
    }
    let lease_until = T0 + 20 + LEASE_MS;
    assert_eq!(pair.replicas[0].next_lease_expiry_ms(), Some(lease_until));
    pair.at(0, |replica, speaker| replica.renew(speaker, &renewed, T0 + 30_000)).unwrap();
    pair.at(0, |replica, speaker| replica.done(speaker, &done, "ok", T0 + 30_001)).unwrap();
    pair.at(0, |replica, speaker| replica.release(speaker, &released, "later", T0 + 30_002)).unwrap();
    let renewed_until = T0 + 30_000 + LEASE_MS;
    assert_eq!(pair.replicas[0].next_lease_expiry_ms(), Some(renewed_until));
    let duties = pair.replicas[0].fulfil_expiry_duties(&key, lease_until + 1);
    assert!(duties.notices.is_empty(), "{:?}", duties.notices);
    let duties = pair.replicas[0].fulfil_expiry_duties(&key, renewed_until + 1);
    assert_eq!(
        duties.notices.iter().map(|notice| notice.message.task.clone()).collect::<Vec<_>>(),
        [Some("RENEWED".to_owned())]
    );
    assert!(pair.replicas[0].fulfil_duties(&key, &[done, released], renewed_until + 2).changes.is_empty());
}
