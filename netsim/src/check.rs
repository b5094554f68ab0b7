//! The checkers, named after the invariants of the design (docs/TESTING.md lists them).
//! Step checks run on every node an event changed; quiescence checks run once the healed
//! mesh has settled; the liveness check once agents have had time to finish everything.

use std::collections::{BTreeMap, BTreeSet};

use meshwork_crdt::Replica;
use meshwork_crdt::gate;
use meshwork_crdt::inbox::{Notice, expired_notice_id, lost_notice_id, reinstated_notice_id, taken_over_notice_id};
use meshwork_crdt::resolve::claim_terms;
use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::{AgentId, NodeId, RecordId, Stamp, TaskId};
use sha2::{Digest, Sha256};

use crate::node::{SimNode, in_mesh};

/// The invariants, by the names docs/TESTING.md and the design use.
pub mod invariant {
    pub const CONVERGENCE: &str = "convergence";
    pub const ONE_HOLDER: &str = "one holder";
    pub const NOTHING_LOST: &str = "nothing lost";
    pub const FINISHED_STAYS_FINISHED: &str = "finished stays finished";
    pub const LOSERS_TOLD: &str = "losers told exactly once";
    pub const GATES_HOLD: &str = "gates hold";
    pub const QUORUM_EXCLUSIVE: &str = "confirmed claims are exclusive";
    pub const CONFIRMED_NEVER_LOSES: &str = "a confirmed claim never loses";
    pub const LIVENESS: &str = "liveness";
    pub const STALE_TAKEN_OVER: &str = "stale tasks are taken over";
    pub const HOLDERS_TOLD: &str = "a holder whose lease ran out is told once";
    pub const NO_AUTOMERGE_ERRORS: &str = "no Automerge errors";
    pub const DOCUMENT_SIZE: &str = "document size within budget";
    pub const NO_PANIC: &str = "no panic";
}

/// A document may take this many bytes per change it holds, saved (measured: 150 to 250).
pub const DOCUMENT_BYTES_PER_CHANGE_MAX: usize = 600;
/// Plus this much for the genesis, the meta and the members.
pub const DOCUMENT_BYTES_BASE: usize = 16 * 1024;

/// Violations kept per run; a broken run reports its first few, not thousands.
const VIOLATIONS_KEPT: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub at_us: u64,
    pub detail: String,
}

/// What a node acknowledged to an agent: kept, so it must reach everyone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Acknowledged {
    Task(TaskId),
    Record(TaskId, RecordId),
}

/// A finish a node saw: the status, whose record made it (signer, stamp), and how many of the
/// task's records were not counting then.
#[derive(Debug, Clone, Copy)]
struct Finish {
    status: TaskStatus,
    by: Option<(NodeId, Stamp)>,
    rejected: u32,
}

#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    /// By node index.
    acknowledged: BTreeMap<usize, BTreeSet<Acknowledged>>,
    /// Tasks each node has seen finished: how, and by whose record (signer, stamp).
    finished: BTreeMap<usize, BTreeMap<TaskId, Finish>>,
    /// Every claim seen confirmed in each (task, generation), anywhere, and the node that saw it
    /// first.
    quorum_counted: BTreeMap<(TaskId, u32), BTreeMap<RecordId, usize>>,
    /// Every claim any node saw confirmed (a `quorum` receipt), and the node that saw it first.
    confirmed: BTreeMap<(TaskId, RecordId), usize>,
    /// The export each node showed at its current heads.
    exports: BTreeMap<usize, (Vec<u8>, [u8; 32])>,
    /// Every requirement list each task was given, at creation or by an edit, as sorted texts:
    /// the terms an honest claim can name.
    requirements_given: BTreeMap<TaskId, BTreeSet<Vec<String>>>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A digest of everything a replica derived from its document.
fn state_digest(replica: &Replica) -> [u8; 32] {
    let state = (replica.members(), replica.probes(), replica.tasks());
    // Plain data of maps, vectors and strings: serializing it cannot fail.
    digest(&postcard::to_allocvec(&state).unwrap_or_default())
}

fn heads_key(replica: &Replica) -> Vec<u8> {
    let mut heads = replica.doc().heads();
    heads.sort();
    heads.iter().flat_map(|head| head.0).collect()
}

impl Checker {
    pub fn violate(&mut self, invariant: &'static str, at_us: u64, detail: String) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(Violation { invariant, at_us, detail });
        }
    }

    pub fn acknowledge(&mut self, node: usize, what: Acknowledged) {
        self.acknowledged.entry(node).or_default().insert(what);
    }

    /// A task was given these requirements, at creation or by an edit some node accepted.
    pub fn requirements_given(&mut self, task: &TaskId, requires: &[meshwork_protocol::Requirement]) {
        let mut texts: Vec<String> = requires.iter().map(ToString::to_string).collect();
        texts.sort();
        self.requirements_given.entry(task.clone()).or_default().insert(texts);
    }

    /// After a restart the node knows only what its disk held: what it saw before is forgotten.
    pub fn restarted(&mut self, node: usize) {
        self.finished.remove(&node);
        self.exports.remove(&node);
    }

    /// The checks after an event changed `node`'s replica.
    pub fn step(&mut self, at_us: u64, nodes: &[SimNode], node: usize) {
        let Some(live) = &nodes[node].live else { return };
        let replica = &live.replica;
        self.finished_stays_finished(at_us, node, replica);
        self.gates_hold(at_us, node, replica);
        self.quorum_exclusive(at_us, node, replica);
        self.confirmed_never_loses(at_us, node, replica);
        self.equal_heads_equal_exports(at_us, nodes, node);
    }

    /// Invariant 4, for `done` and `cancelled`. A finish may be undone only by a removal:
    /// records a node signs after its removal never count, so a node that saw such a record
    /// (the `done` itself, or an approval or a claim the `done` rests on) before the removal
    /// reached it saw a finish that never was. The task's `rejected` count shows it: records
    /// are never deleted, so one that stops counting was signed after a removal.
    ///
    /// `failed` is not final by the design (only `done` is): a renewal signed in time that
    /// arrives late, or a takeover stamped before the last `fail`, redraws the tenures and can
    /// reopen a task that had run out of attempts (docs/PROTOCOL.md, "Open points").
    fn finished_stays_finished(&mut self, at_us: u64, node: usize, replica: &Replica) {
        let seen = self.finished.entry(node).or_default();
        let mut broken = Vec::new();
        for (task, before) in seen.iter() {
            let entry = replica.task(task);
            let now = entry.map(|entry| entry.state.status);
            let kept = match before.status {
                TaskStatus::Done => now == Some(TaskStatus::Done),
                _ => now.is_some_and(TaskStatus::is_finished),
            };
            let never_counted =
                before.by.is_some_and(|(signer, stamp)| !replica.members().is_member_at(&signer, stamp))
                    || entry.is_some_and(|entry| entry.state.rejected > before.rejected);
            if !kept && !never_counted {
                broken.push(format!("node n{node}: task {task} was {} and is now {:?}", before.status.as_str(), now));
            }
        }
        let final_statuses = [TaskStatus::Done, TaskStatus::Cancelled];
        for entry in replica.tasks().values().filter(|entry| final_statuses.contains(&entry.state.status)) {
            let state = &entry.state;
            let by = [&state.result, &state.cancelled].into_iter().flatten().map(|noted| (noted.node, noted.at)).next();
            seen.insert(entry.fields.id.clone(), Finish { status: state.status, by, rejected: state.rejected });
        }
        for detail in broken {
            self.violate(invariant::FINISHED_STAYS_FINISHED, at_us, detail);
        }
    }

    /// A holder's claim was made under a probe that meets the hard requirements it names, by
    /// a member at the claim's stamp; and the requirements it names are ones the task was
    /// given (an honest node names what it saw, and edits never judge a claim made before).
    fn gates_hold(&mut self, at_us: u64, node: usize, replica: &Replica) {
        let mut broken = Vec::new();
        for entry in replica.tasks().values() {
            let Some(holder) = &entry.state.holder else { continue };
            let Some(claim) = entry.state.claims.get(&holder.claim) else {
                broken.push(format!("node n{node}: the holder of {} has no claim", entry.fields.id));
                continue;
            };
            if !replica.members().is_member_at(&claim.node, claim.stamp) {
                broken.push(format!("node n{node}: {} is held by a non-member", entry.fields.id));
            }
            let requires = claim_terms(&entry.fields, &claim.claim).requires;
            if !requires.is_empty() {
                let probe = claim.claim.probe.and_then(|id| replica.probes().get(&id)).map(|entry| &entry.probe);
                let unmet = gate::unmet(requires, probe);
                if !unmet.is_empty() {
                    broken.push(format!(
                        "node n{node}: {} is held by a machine that lacks {}",
                        entry.fields.id,
                        unmet.join("; ")
                    ));
                }
            }
            let mut named: Vec<String> = requires.iter().map(ToString::to_string).collect();
            named.sort();
            let given = self.requirements_given.get(&entry.fields.id);
            if !given.is_some_and(|given| given.contains(&named)) {
                broken.push(format!(
                    "node n{node}: the holder of {} names requirements {named:?} the task was never given ({given:?})",
                    entry.fields.id
                ));
            }
            if entry.state.lost_claims.iter().any(|lost| lost.claim == holder.claim) {
                self.violate(
                    invariant::ONE_HOLDER,
                    at_us,
                    format!("node n{node}: the holder's claim of {} is also a lost claim", entry.fields.id),
                );
            }
        }
        for detail in broken {
            self.violate(invariant::GATES_HOLD, at_us, detail);
        }
    }

    /// Invariant 7 across nodes: no two claims of one generation are ever confirmed, on any
    /// nodes at any times, unless they were made under different electorates (the members
    /// changed between their stamps: docs/PROTOCOL.md, "Confirmation and receipts", says why
    /// that is the limit), or one of them stopped counting because its signer's removal was
    /// stamped before it. A node that has not heard of such a removal yet sees that claim
    /// confirmed, so the claims seen confirmed are gathered here and judged at quiescence
    /// ([`Checker::confirmed_claims_stay_exclusive`]), by the records every node has then.
    fn quorum_exclusive(&mut self, _at_us: u64, node: usize, replica: &Replica) {
        for entry in replica.tasks().values() {
            for (claim, tally) in entry.state.tallies.iter().filter(|(_, tally)| tally.reached()) {
                let seen = self.quorum_counted.entry((entry.fields.id.clone(), tally.generation)).or_default();
                seen.entry(*claim).or_insert(node);
            }
        }
    }

    /// At quiescence: of the claims ever seen confirmed in one (task, generation), no two still
    /// count under one electorate.
    fn confirmed_claims_stay_exclusive(&mut self, at_us: u64, replica: &Replica) {
        let mut broken = Vec::new();
        for ((task, generation), seen) in &self.quorum_counted {
            let Some(entry) = replica.task(task) else { continue };
            let counting: Vec<(&RecordId, &usize)> =
                seen.iter().filter(|(claim, _)| entry.state.claims.contains_key(*claim)).collect();
            for (index, (first, by)) in counting.iter().enumerate() {
                for (other, other_by) in &counting[index + 1..] {
                    if same_electorate(replica, &entry.state, first, other) {
                        broken.push(format!(
                            "task {task} generation {generation}: claim {first} confirmed on n{by}, claim {other} \
                             on n{other_by}"
                        ));
                    }
                }
            }
        }
        for detail in broken {
            self.violate(invariant::QUORUM_EXCLUSIVE, at_us, detail);
        }
    }

    /// Invariant 7 for receipts: a claim a node saw confirmed (its agent was told `quorum`)
    /// never loses, in any state of any node that has its votes, and so never at quiescence.
    /// The exceptions are those of [`Checker::quorum_exclusive`]: a claim that stopped
    /// counting because its signer's removal was stamped before it, and two claims confirmed
    /// under different electorates.
    fn confirmed_never_loses(&mut self, at_us: u64, node: usize, replica: &Replica) {
        for entry in replica.tasks().values() {
            let state = &entry.state;
            for (claim, _) in state.tallies.iter().filter(|(_, tally)| tally.reached()) {
                self.confirmed.entry((entry.fields.id.clone(), *claim)).or_insert(node);
            }
            for lost in &state.lost_claims {
                let Some(by) = self.confirmed.get(&(entry.fields.id.clone(), lost.claim)).copied() else { continue };
                let has_its_votes = state.is_confirmed(&lost.claim);
                let rival = state.tallies.iter().any(|(other, tally)| {
                    *other != lost.claim
                        && tally.reached()
                        && tally.generation == lost.generation
                        && !same_electorate(replica, state, other, &lost.claim)
                });
                if has_its_votes && state.claims.contains_key(&lost.claim) && !rival {
                    self.violate(
                        invariant::CONFIRMED_NEVER_LOSES,
                        at_us,
                        format!(
                            "task {}: claim {} confirmed on n{by} lost on n{node}: {}",
                            entry.fields.id, lost.claim, lost.reason
                        ),
                    );
                }
            }
        }
    }

    /// Invariant 1: two nodes with the same heads derive the same state. After each event the
    /// derived state (members, probes, every task's fields and state: what the export is a
    /// pure function of) is compared, when another running node has the same heads; the
    /// exports' bytes themselves are compared at quiescence.
    fn equal_heads_equal_exports(&mut self, at_us: u64, nodes: &[SimNode], node: usize) {
        let Some(live) = &nodes[node].live else { return };
        let heads = heads_key(&live.replica);
        let twins: Vec<usize> = nodes
            .iter()
            .filter(|other| other.index != node)
            .filter(|other| other.live.as_ref().is_some_and(|l| heads_key(&l.replica) == heads))
            .map(|other| other.index)
            .collect();
        if twins.is_empty() {
            return;
        }
        let export = self.export_at(nodes, node, &heads);
        for twin in twins {
            if self.export_at(nodes, twin, &heads) != export {
                self.violate(
                    invariant::CONVERGENCE,
                    at_us,
                    format!("n{node} and n{twin} have the same heads and different exports"),
                );
            }
        }
    }

    /// The digest of a node's derived state at `heads` (its current heads), once per heads.
    fn export_at(&mut self, nodes: &[SimNode], node: usize, heads: &[u8]) -> [u8; 32] {
        if let Some((known, export)) = self.exports.get(&node)
            && known == heads
        {
            return *export;
        }
        let export = nodes[node].live.as_ref().map_or([0; 32], |live| state_digest(&live.replica));
        self.exports.insert(node, (heads.to_vec(), export));
        export
    }

    /// The checks once the healed mesh settled: every participant has the same heads,
    /// names the same holder everywhere, kept everything acknowledged, and told its losers.
    pub fn quiescent(&mut self, at_us: u64, nodes: &[SimNode]) {
        let participants: Vec<&SimNode> = nodes.iter().filter(|node| in_mesh(nodes, node.index)).collect();
        let Some(first) = participants.first().and_then(|node| node.live.as_ref()) else { return };
        let first_heads = heads_key(&first.replica);
        let first_export = first.replica.export_json();
        self.confirmed_claims_stay_exclusive(at_us, &first.replica);
        for node in &participants {
            let Some(live) = &node.live else {
                self.violate(invariant::CONVERGENCE, at_us, format!("{} is down at quiescence", node.name));
                continue;
            };
            if live.replica.export_json() != first_export {
                self.violate(
                    invariant::CONVERGENCE,
                    at_us,
                    format!("{} and {} export different states at quiescence", participants[0].name, node.name),
                );
            }
            if heads_key(&live.replica) != first_heads {
                self.violate(
                    invariant::CONVERGENCE,
                    at_us,
                    format!("{} and {} differ at quiescence", participants[0].name, node.name),
                );
            }
            for (task, entry) in live.replica.tasks() {
                let holder = entry.state.holder.as_ref().map(|holder| holder.claim);
                let first_holder = first.replica.task(task).and_then(|e| e.state.holder.as_ref()).map(|h| h.claim);
                if holder != first_holder {
                    self.violate(
                        invariant::ONE_HOLDER,
                        at_us,
                        format!(
                            "{task}: {} names {holder:?}, {} names {first_holder:?}",
                            node.name, participants[0].name
                        ),
                    );
                }
            }
            self.losers_told(at_us, node, &live.replica);
        }
        self.nothing_lost(at_us, nodes, &participants);
    }

    /// Every record acknowledged by a participant is on every participant.
    fn nothing_lost(&mut self, at_us: u64, nodes: &[SimNode], participants: &[&SimNode]) {
        let mut wanted: BTreeMap<TaskId, BTreeSet<Option<RecordId>>> = BTreeMap::new();
        for (node, acknowledged) in &self.acknowledged {
            if !in_mesh(nodes, *node) {
                continue;
            }
            for what in acknowledged {
                match what {
                    Acknowledged::Task(task) => wanted.entry(task.clone()).or_default().insert(None),
                    Acknowledged::Record(task, record) => wanted.entry(task.clone()).or_default().insert(Some(*record)),
                };
            }
        }
        let mut missing = Vec::new();
        for node in participants {
            let Some(live) = &node.live else { continue };
            for (task, records) in &wanted {
                if live.replica.task(task).is_none() {
                    missing.push(format!("{}: task {task} is missing", node.name));
                    continue;
                }
                let doc = live.replica.doc();
                let present = |record: &RecordId| doc.has_task_record(task, *record);
                for record in records.iter().flatten().filter(|record| !present(record)) {
                    missing.push(format!("{}: record {record} of {task} is missing", node.name));
                }
            }
        }
        for detail in missing {
            self.violate(invariant::NOTHING_LOST, at_us, detail);
        }
    }

    /// Each lost claim of this node's agents has exactly one notice, and a holder that was
    /// told it lost was told again that it holds the task. (Records that arrive later can
    /// contradict a notice: a removal stops the winning claim from counting, or a quorum
    /// claim's votes arrive after the task was cancelled.)
    fn losers_told(&mut self, at_us: u64, node: &SimNode, replica: &Replica) {
        // The lost- and taken- notice ids of each holder's claim, and the notice that corrects
        // either.
        let holders: BTreeMap<String, String> = replica
            .tasks()
            .values()
            .filter_map(|entry| entry.state.holder.as_ref())
            .flat_map(|holder| {
                let reinstated = reinstated_notice_id(&holder.claim);
                [(lost_notice_id(&holder.claim), reinstated.clone()), (taken_over_notice_id(&holder.claim), reinstated)]
            })
            .collect();
        // Every notice this node owes: a lost claim of one of its agents, or a lease of one of
        // its agents taken over (unless that agent finished the task itself).
        let mut lost: BTreeMap<String, TaskId> = BTreeMap::new();
        for entry in replica.tasks().values() {
            for claim in entry.state.lost_claims.iter().filter(|lost| lost.node == node.id && lost.agent.is_some()) {
                lost.insert(lost_notice_id(&claim.claim), entry.fields.id.clone());
            }
            let finished_by = |agent| {
                entry.state.status == TaskStatus::Done
                    && entry
                        .state
                        .result
                        .as_ref()
                        .is_some_and(|done| done.node == node.id && done.agent.as_ref() == Some(agent))
            };
            for ended in entry.state.taken_over.iter().filter(|ended| ended.node == node.id) {
                if ended.agent.as_ref().is_some_and(|agent| !finished_by(agent)) {
                    lost.insert(taken_over_notice_id(&ended.claim), entry.fields.id.clone());
                }
            }
        }
        for agent in &node.agents {
            let inbox = replica.inbox(&AgentId { agent: agent.clone(), node: node.id });
            let mut told: BTreeMap<&str, usize> = BTreeMap::new();
            for entry in inbox.iter().filter(|entry| entry.id.starts_with("lost-") || entry.id.starts_with("taken-")) {
                *told.entry(entry.id.as_str()).or_default() += 1;
            }
            for (id, count) in &told {
                if *count > 1 {
                    self.violate(invariant::LOSERS_TOLD, at_us, format!("{agent}@{}: {count} notices {id}", node.name));
                }
                if let Some(reinstated) = holders.get(*id)
                    && !inbox.iter().any(|entry| entry.id == *reinstated)
                {
                    self.violate(
                        invariant::LOSERS_TOLD,
                        at_us,
                        format!("{agent}@{}: told {id} lost, holds its task, and was never told so", node.name),
                    );
                }
            }
        }
        let agents_told: BTreeSet<String> = node
            .agents
            .iter()
            .flat_map(|agent| replica.inbox(&AgentId { agent: agent.clone(), node: node.id }))
            .map(|entry| entry.id)
            .collect();
        for (id, task) in &lost {
            if !agents_told.contains(id) {
                self.violate(
                    invariant::LOSERS_TOLD,
                    at_us,
                    format!("{}: notice {id} on {task} was never written", node.name),
                );
            }
        }
    }

    /// Notices the node just wrote that a holder's lease ran out: each names the task's current
    /// holder, of this node, whose lease ended before `wall_ms` by this node's view. A notice
    /// about a task finished, released or taken over meanwhile would be a false alarm.
    pub fn expiry_notices_written(&mut self, at_us: u64, node: &SimNode, notices: &[Notice], wall_ms: u64) {
        let Some(live) = &node.live else { return };
        for notice in notices.iter().filter(|notice| notice.id.starts_with("expired-")) {
            let task = notice.message.task.as_deref().and_then(|task| TaskId::new(task).ok());
            let holder =
                task.as_ref().and_then(|task| live.replica.task(task)).and_then(|entry| entry.state.holder.as_ref());
            let fits = holder.is_some_and(|holder| {
                holder.node == node.id
                    && holder.lease_until_ms < wall_ms
                    && expired_notice_id(&holder.claim) == notice.id
                    && holder.agent.as_ref() == Some(&notice.to.agent)
            });
            if !fits {
                let detail =
                    format!("{}: notice {} on {task:?} names no holder whose lease ran out", node.name, notice.id);
                self.violate(invariant::HOLDERS_TOLD, at_us, detail);
            }
        }
    }

    /// Each agent of a participant that holds a task whose lease ran out long enough ago for
    /// the node's lease timer to have fired (more than `timer_ms` before its clock) was told.
    pub fn stale_holders_told(&mut self, at_us: u64, nodes: &[SimNode], timer_ms: u64) {
        let mut untold = Vec::new();
        for node in nodes.iter().filter(|node| in_mesh(nodes, node.index)) {
            let Some(live) = &node.live else { continue };
            let wall = node.wall_ms(at_us);
            for (task, entry) in live.replica.tasks() {
                let Some(holder) = entry.state.holder.as_ref().filter(|holder| holder.node == node.id) else {
                    continue;
                };
                let Some(agent) = &holder.agent else { continue };
                if holder.lease_until_ms.saturating_add(timer_ms) >= wall {
                    continue;
                }
                let to = AgentId { agent: agent.clone(), node: node.id };
                let id = expired_notice_id(&holder.claim);
                if !live.replica.inbox(&to).iter().any(|entry| entry.id == id) {
                    untold
                        .push(format!("{}: {agent} holds {task}, whose lease ran out, and was never told", node.name));
                }
            }
        }
        for detail in untold {
            self.violate(invariant::HOLDERS_TOLD, at_us, detail);
        }
    }

    /// Once the agents had time to finish, no task that a participant could run is still
    /// stale (claimed, its lease ended by every participant's clock): its holder crashed,
    /// vanished or was removed, and someone took it over (`ready` offers it, `claim --next`
    /// takes it) or it was finished.
    pub fn stale_taken_over(&mut self, at_us: u64, nodes: &[SimNode]) {
        let participants: Vec<&SimNode> = nodes.iter().filter(|node| in_mesh(nodes, node.index)).collect();
        let Some(live) = participants.iter().find_map(|node| node.live.as_ref()) else { return };
        let Some(slowest) = participants.iter().map(|node| node.wall_ms(at_us)).min() else { return };
        let replica = &live.replica;
        let runnable = |entry: &meshwork_crdt::TaskEntry| {
            participants.iter().any(|node| {
                let probe = replica.probes().latest(&node.id).map(|(_, entry)| &entry.probe);
                gate::unmet(&entry.fields.requires, probe).is_empty()
            })
        };
        let mut stuck = Vec::new();
        for entry in replica.stale_tasks(slowest) {
            if !runnable(entry) || !replica.blocked_by(entry).is_empty() {
                continue;
            }
            let holder = entry.state.holder.as_ref().map(|holder| (holder.node, holder.lease_until_ms));
            stuck.push(format!(
                "{} is stale (holder, lease until: {holder:?}) and nobody took it over",
                entry.fields.id
            ));
        }
        for detail in stuck {
            self.violate(invariant::STALE_TAKEN_OVER, at_us, detail);
        }
    }

    /// Every task is finished, or cannot be: it waits on a task that failed or was
    /// cancelled, or no participant's machine meets its requirements.
    pub fn liveness(&mut self, at_us: u64, nodes: &[SimNode]) {
        let Some(live) = nodes.iter().filter(|node| in_mesh(nodes, node.index)).find_map(|node| node.live.as_ref())
        else {
            return;
        };
        let replica = &live.replica;
        let runnable = |entry: &meshwork_crdt::TaskEntry| {
            nodes.iter().filter(|node| in_mesh(nodes, node.index)).any(|node| {
                let probe = replica.probes().latest(&node.id).map(|(_, entry)| &entry.probe);
                gate::unmet(&entry.fields.requires, probe).is_empty()
            })
        };
        let mut stuck = Vec::new();
        for entry in replica.tasks().values().filter(|entry| !entry.state.status.is_finished()) {
            if dead_end(replica, &entry.fields.id, &runnable, &mut BTreeSet::new()) {
                continue;
            }
            let waits_on: Vec<String> = entry
                .fields
                .depends_on
                .iter()
                .map(|dependency| format!("{dependency}: {:?}", replica.status_of(dependency)))
                .collect();
            let holder = entry.state.holder.as_ref().map(|holder| (holder.node, holder.lease_until_ms));
            stuck.push(format!(
                "{} is {}: holder {holder:?}, waits on {waits_on:?}, requires {:?}, approval needed {} given {}",
                entry.fields.id,
                entry.state.status.as_str(),
                entry.fields.requires,
                entry.fields.needs_approval,
                entry.state.approved
            ));
        }
        for detail in stuck {
            self.violate(invariant::LIVENESS, at_us, detail);
        }
    }
}

/// Whether a task can never be finished: no machine can run it, or it waits, directly or
/// not, on a task that failed, was cancelled, is unknown, or can never be finished.
fn dead_end(
    replica: &Replica,
    task: &TaskId,
    runnable: &dyn Fn(&meshwork_crdt::TaskEntry) -> bool,
    seen: &mut BTreeSet<TaskId>,
) -> bool {
    if !seen.insert(task.clone()) {
        return false;
    }
    let Some(entry) = replica.task(task) else { return true };
    if matches!(entry.state.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        return true;
    }
    if entry.state.status == TaskStatus::Done {
        return false;
    }
    !runnable(entry) || entry.fields.depends_on.iter().any(|dependency| dead_end(replica, dependency, runnable, seen))
}

/// Whether two claims of a task were made under the same electorate (the members at their
/// stamps), as `replica` knows the members.
fn same_electorate(replica: &Replica, state: &meshwork_crdt::resolve::TaskState, a: &RecordId, b: &RecordId) -> bool {
    let electorate =
        |claim: &RecordId| state.claims.get(claim).map(|entry| replica.members().at(entry.stamp).collect::<Vec<_>>());
    electorate(a) == electorate(b)
}
