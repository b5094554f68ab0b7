//! The discrete-event loop: one seeded random stream, one queue of timed events, N nodes
//! running the real replica and sync engine, and the checkers after every event.
//!
//! A run has three phases. Work: agents operate while faults strike. Settle: every fault is
//! lifted, crashed nodes restart, and the mesh must reach equal heads within
//! [`SETTLE_BOUND_US`]; then the quiescence checks run. Finish: agents finish whatever can be
//! finished, taking over abandoned tasks; then the mesh settles again and liveness is checked.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use meshwork_crdt::document::{Touched, put_task_record};
use meshwork_crdt::ops::{ClaimOptions, OpError};
use meshwork_crdt::sync::{SyncInput, SyncOutput};
use meshwork_crdt::{Replica, Speaker};
use meshwork_protocol::api::{AddTask, EditTask, HandoffRequest};
use meshwork_protocol::record::{Claim, Membership, MembershipAction};
use meshwork_protocol::{NodeKey, RecordBody, RecordId, TaskId};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sha2::{Digest, Sha256};

use crate::check::{Acknowledged, Checker, DOCUMENT_BYTES_BASE, DOCUMENT_BYTES_PER_CHANGE_MAX, Violation, invariant};
use crate::net::{ConnId, Fate, Network};
use crate::node::{SimNode, in_mesh};
use crate::scenario::{Fault, SECOND_US, Scenario};
use crate::trace::Trace;
use crate::workload::{self, Op};

/// After the heal, the mesh must reach equal heads within this (the redial backoff is at
/// most 30 s, and a crashed node's peers notice within 10 s).
pub const SETTLE_BOUND_US: u64 = 60 * SECOND_US;
/// Time the agents get to finish everything once the mesh is healed: enough for a lease
/// signed by a node an hour fast to run out by the others' clocks.
pub const FINISH_US: u64 = 2 * 3600 * SECOND_US;
/// A run that handles more events than this is stuck in a loop.
const EVENTS_MAX: u64 = 2_000_000;
/// How long a node waits after a plain claim before it asks the mesh to confirm it: the node
/// binary's settle time, about two round trips (docs/PROTOCOL.md, "Receipts").
const SETTLE_US_MIN: u64 = 10_000;
/// How long a node gathers the duties of merges before it does them together, as the node
/// binary does (`DUTIES_BATCH_MS`).
const DUTIES_BATCH_US: u64 = 10_000;
const SETTLE_US_MAX: u64 = 200_000;
/// The longest a node's lease timer sleeps: it wakes at the next lease end of its own
/// agents ([`Replica::next_lease_expiry_ms`]) or after this, whichever comes first (a claim
/// made meanwhile may end sooner than the lease it slept for).
pub const LEASE_TIMER_US_MAX: u64 = 10 * SECOND_US;
/// A holder whose lease ran out longer ago than this (by its node's clock) must have been
/// told: the timer's longest sleep, and a second for drift and the write.
const LEASE_TIMER_TOLD_MS: u64 = LEASE_TIMER_US_MAX / 1000 + 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Work {
        node: usize,
    },
    Dial {
        from: usize,
        to: usize,
    },
    Open {
        conn: ConnId,
    },
    Deliver {
        conn: ConnId,
        to: usize,
        frame: Vec<u8>,
    },
    /// Both ends learn that a connection died.
    Broken {
        conn: ConnId,
    },
    Flush {
        node: usize,
        boot: u32,
    },
    Fault(Fault),
    Heal {
        fault: Fault,
    },
    FlapToggle {
        a: usize,
        b: usize,
        down: bool,
        until_us: u64,
        period_us: u64,
    },
    Restart {
        node: usize,
    },
    /// The node's lease timer: it tells its agents whose lease ran out
    /// (`Replica::fulfil_expiry_duties`), as the node binary does on a timer.
    LeaseTimer {
        node: usize,
        boot: u32,
    },
    /// The batch time of a node's duties ended: it does those gathered since.
    Duties {
        node: usize,
        boot: u32,
    },
    /// The settle time after a plain claim passed: the node asks the mesh to confirm it
    /// (`Replica::ask_confirmation`), as the node binary does before it answers.
    AskConfirmation {
        node: usize,
        boot: u32,
        task: TaskId,
        claim: RecordId,
    },
    EndWork,
    CheckSettled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Work,
    Settle,
    Finish,
}

/// What a run found and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub trace_hash: String,
    pub violations: Vec<Violation>,
    pub events: u64,
    pub operations: u64,
    pub refused_operations: u64,
    pub frames: u64,
    pub bytes: u64,
    pub crashes: u64,
    pub tasks: usize,
    /// Tenures that ended by a takeover after their lease ran out, on the final state.
    pub takeovers: u64,
    /// `expired-` notices: holders told their lease ran out, on the final state.
    pub expiry_notices: u64,
    /// From the heal to equal heads on every participant, per settle.
    pub settle_us: Vec<u64>,
    pub document_bytes: usize,
    pub simulated_us: u64,
    /// The readable trace, when asked for.
    #[serde(skip)]
    pub trace: Vec<String>,
}

#[derive(Debug)]
pub struct Sim {
    scenario: Scenario,
    rng: Pcg64Mcg,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_seq: u64,
    nodes: Vec<SimNode>,
    net: Network,
    trace: Trace,
    check: Checker,
    phase: Phase,
    inputs: VecDeque<(usize, SyncInput)>,
    dirty: BTreeSet<usize>,
    /// Pairs with a dial scheduled, so a pair never has two.
    dialling: BTreeSet<(usize, usize)>,
    settled: bool,
    /// Events handled, traced or not.
    handled: u64,
    operations: u64,
    refused: u64,
    crashes: u64,
}

impl Sim {
    pub fn new(scenario: Scenario, verbose: bool) -> Sim {
        // The run's one stream (the scenario drew its plan from another, `SCENARIO_STREAM`).
        let rng = Pcg64Mcg::seed_from_u64(scenario.seed);
        let nodes = (0..scenario.nodes)
            .map(|index| {
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&Sha256::digest(format!("netsim {} node {index}", scenario.seed)));
                SimNode::new(
                    index,
                    NodeKey::from_seed(seed),
                    scenario.clocks[index],
                    scenario.slow_us[index],
                    scenario.gpu[index],
                )
            })
            .collect();
        let net = Network::new(scenario.link, scenario.loss_ppm, scenario.duplicate_ppm, scenario.reorder_ppm);
        Sim {
            scenario,
            rng,
            now_us: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            nodes,
            net,
            trace: Trace::new(verbose),
            check: Checker::default(),
            phase: Phase::Work,
            inputs: VecDeque::new(),
            dirty: BTreeSet::new(),
            dialling: BTreeSet::new(),
            settled: false,
            handled: 0,
            operations: 0,
            refused: 0,
            crashes: 0,
        }
    }

    /// Runs the whole scenario and reports.
    pub fn run(mut self) -> RunReport {
        let summary = self.scenario.summary();
        self.note(summary.clone());
        self.found();
        for planned in self.scenario.faults.clone() {
            self.schedule_at(planned.at_us, Event::Fault(planned.fault));
        }
        for node in 0..self.nodes.len() {
            let gap = self.op_gap();
            self.schedule(gap, Event::Work { node });
        }
        self.schedule_at(self.scenario.workload_us, Event::EndWork);
        let mut settle_us = Vec::new();
        // Work, then settle.
        self.run_until(|sim| sim.phase == Phase::Settle);
        settle_us.push(self.settle());
        self.check.quiescent(self.now_us, &self.nodes);
        self.check.stale_holders_told(self.now_us, &self.nodes, LEASE_TIMER_TOLD_MS);
        // Finish, then settle again.
        self.phase = Phase::Finish;
        for node in 0..self.nodes.len() {
            self.schedule(0, Event::Work { node });
        }
        let finish_end = self.now_us + FINISH_US;
        self.run_until(|sim| sim.now_us >= finish_end || sim.all_finished());
        settle_us.push(self.settle());
        self.check.quiescent(self.now_us, &self.nodes);
        self.check.stale_holders_told(self.now_us, &self.nodes, LEASE_TIMER_TOLD_MS);
        self.check.stale_taken_over(self.now_us, &self.nodes);
        self.check.liveness(self.now_us, &self.nodes);
        let (takeovers, expiry_notices) = self.stale_counts();
        let document_bytes = self.document_budget();
        for node in 0..self.nodes.len() {
            self.digest_node(node);
        }
        RunReport {
            seed: self.scenario.seed,
            scenario: summary,
            trace_hash: self.trace.hash(),
            violations: self.check.violations.clone(),
            events: self.trace.events(),
            operations: self.operations,
            refused_operations: self.refused,
            frames: self.net.stats.frames,
            bytes: self.net.stats.bytes,
            crashes: self.crashes,
            tasks: self.any_replica().map_or(0, |replica| replica.tasks().len()),
            takeovers,
            expiry_notices,
            settle_us,
            document_bytes,
            simulated_us: self.now_us,
            trace: self.trace.lines().to_vec(),
        }
    }

    // ---- the event loop ----

    fn schedule(&mut self, after_us: u64, event: Event) {
        self.schedule_at(self.now_us + after_us, event);
    }

    fn schedule_at(&mut self, at_us: u64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at_us.max(self.now_us), seq)));
        self.events.insert(seq, event);
    }

    fn run_until(&mut self, done: impl Fn(&Sim) -> bool) {
        while !done(self) {
            let Some(Reverse((at_us, seq))) = self.queue.pop() else { break };
            let Some(event) = self.events.remove(&seq) else { continue };
            self.now_us = at_us;
            self.handled += 1;
            if self.handled > EVENTS_MAX {
                self.check.violate(invariant::LIVENESS, self.now_us, "the run never went quiet".to_owned());
                break;
            }
            self.handle(event);
            self.drain_inputs();
            let dirty = std::mem::take(&mut self.dirty);
            for node in dirty {
                self.check.step(self.now_us, &self.nodes, node);
            }
        }
    }

    /// Lifts every fault, restarts every crashed node, and runs until every participant
    /// has the same heads; returns how long that took.
    fn settle(&mut self) -> u64 {
        self.phase = Phase::Settle;
        let start = self.now_us;
        self.note("heal: every fault lifted".to_owned());
        self.net.unblock_all();
        self.net.calm();
        for node in 0..self.nodes.len() {
            if self.nodes[node].live.is_none() && self.nodes[node].joined {
                self.restart(node);
            }
        }
        // A join or a removal still waiting (its node was out of reach or down until now)
        // happens before the mesh can be called settled, or it would land after the checks
        // began (seeds 1430 and 4205).
        let pending: Vec<Fault> = self
            .scenario
            .faults
            .iter()
            .filter(|planned| match planned.fault {
                Fault::Join { node, .. } => !self.nodes[node].joined,
                Fault::Remove { node, .. } => !self.nodes[node].removed,
                _ => false,
            })
            .map(|planned| planned.fault.clone())
            .collect();
        for fault in pending {
            match fault {
                Fault::Join { node, via } => {
                    self.admit(node, via);
                }
                Fault::Remove { node, by } => self.remove(node, by),
                _ => {}
            }
        }
        self.settled = false;
        self.schedule(100_000, Event::CheckSettled);
        let bound = start + SETTLE_BOUND_US;
        self.run_until(|sim| sim.settled || sim.now_us > bound);
        if !self.settled {
            self.check.violate(
                invariant::CONVERGENCE,
                self.now_us,
                format!("heads still differ {} s after the heal", SETTLE_BOUND_US / SECOND_US),
            );
        }
        // Let writes in flight land (flushes, duties) before the checks. A lease timer may
        // write a notice meanwhile (a lease that ran out during the settle): then the heads
        // must become equal again, within the same bound, before the checks run.
        loop {
            let quiet = self.now_us + SECOND_US;
            self.run_until(|sim| sim.now_us >= quiet);
            if !self.settled || self.converged() || self.now_us > bound {
                break;
            }
            self.settled = false;
            self.schedule(100_000, Event::CheckSettled);
            self.run_until(|sim| sim.settled || sim.now_us > bound);
        }
        self.now_us - start
    }

    fn converged(&self) -> bool {
        let mut heads = self.nodes.iter().filter(|node| in_mesh(&self.nodes, node.index)).map(|node| {
            node.live.as_ref().map(|live| {
                let mut heads = live.replica.doc().heads();
                heads.sort();
                heads
            })
        });
        let Some(Some(first)) = heads.next() else { return false };
        heads.all(|other| other.as_ref() == Some(&first))
    }

    fn all_finished(&self) -> bool {
        self.nodes.iter().filter(|node| in_mesh(&self.nodes, node.index)).all(|node| {
            node.live
                .as_ref()
                .is_some_and(|live| live.replica.tasks().values().all(|entry| entry.state.status.is_finished()))
        })
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Work { node } => self.work(node),
            Event::Dial { from, to } => self.dial(from, to),
            Event::Open { conn } => self.open(conn),
            Event::Deliver { conn, to, frame } => self.deliver(conn, to, frame),
            Event::Broken { conn } => self.broken(conn),
            Event::Flush { node, boot } => {
                let node = &mut self.nodes[node];
                if node.live.is_some() && node.disk.boot == boot {
                    node.disk.flush();
                }
            }
            Event::Fault(fault) => self.fault(fault),
            Event::Heal { fault } => self.heal(fault),
            Event::FlapToggle { a, b, down, until_us, period_us } => self.flap(a, b, down, until_us, period_us),
            Event::Restart { node } => {
                if self.nodes[node].live.is_none() {
                    self.restart(node);
                }
            }
            Event::LeaseTimer { node, boot } => {
                if self.nodes[node].live.is_some() && self.nodes[node].disk.boot == boot {
                    self.lease_timer(node);
                }
            }
            Event::Duties { node, boot } => {
                if self.nodes[node].disk.boot == boot
                    && let Some(live) = &mut self.nodes[node].live
                {
                    let due = std::mem::take(&mut live.duties_due);
                    if due.is_empty() {
                        live.duties_at_us = None;
                    } else {
                        live.duties_at_us = Some(self.now_us + DUTIES_BATCH_US);
                        self.schedule(DUTIES_BATCH_US, Event::Duties { node, boot });
                        self.dirty.insert(node);
                        self.fulfil_duties(node, &due);
                    }
                }
            }
            Event::AskConfirmation { node, boot, task, claim } => {
                if self.nodes[node].live.is_some() && self.nodes[node].disk.boot == boot {
                    self.ask_confirmation(node, &task, claim);
                }
            }
            Event::EndWork => {
                self.note("the agents stop working".to_owned());
                self.phase = Phase::Settle;
            }
            Event::CheckSettled => {
                if self.converged() {
                    self.settled = true;
                    self.note("settled: every participant has the same heads".to_owned());
                } else {
                    self.schedule(100_000, Event::CheckSettled);
                }
            }
        }
    }

    fn note(&mut self, text: String) {
        self.trace.line(self.now_us, &text);
    }

    fn op_gap(&mut self) -> u64 {
        let (low, high) = self.scenario.op_gap_us;
        self.rng.random_range(low..=high)
    }

    fn any_replica(&self) -> Option<&Replica> {
        self.nodes
            .iter()
            .filter(|node| in_mesh(&self.nodes, node.index))
            .find_map(|node| node.live.as_ref())
            .map(|l| &l.replica)
    }

    // ---- setup and membership ----

    /// Node 0 founds the mesh and adds the other founding members, which adopt its document
    /// as a joining node does.
    fn found(&mut self) {
        let wall = self.nodes[0].wall_ms(0);
        let founder = &mut self.nodes[0];
        founder.disk.boot = 1;
        let founded = match Replica::found(&founder.key, 1, &founder.name, "netsim", wall) {
            Ok(founded) => founded,
            Err(error) => {
                self.check.violate(invariant::NO_AUTOMERGE_ERRORS, 0, format!("founding failed: {error}"));
                return;
            }
        };
        for changes in founded.changes {
            founder.disk.write_durable(changes);
        }
        founder.joined = true;
        founder.founding = true;
        founder.live = Some(crate::node::Live::new(founded.replica));
        self.schedule_lease_timer(0);
        self.publish_probe(0);
        for node in 1..self.scenario.founding_members {
            self.nodes[node].founding = true;
            self.admit(node, 0);
        }
        self.note(format!("founded by n0 with {} members", self.scenario.founding_members));
    }

    /// `via` signs a membership record for `node`, which adopts `via`'s document under a new
    /// boot (the join protocol, `node/src/daemon/mesh.rs`).
    fn admit(&mut self, node: usize, via: usize) -> bool {
        let wall = self.nodes[via].wall_ms(self.now_us);
        let membership = Membership {
            action: MembershipAction::Add,
            member: self.nodes[node].id,
            name: self.nodes[node].name.clone(),
            roles: Vec::new(),
        };
        let inviter = &mut self.nodes[via];
        let Some(live) = &mut inviter.live else { return false };
        let changes = match live.replica.change_membership(&inviter.key, membership, wall) {
            Ok(changes) => changes,
            Err(error) => {
                self.note(format!("n{via} cannot admit n{node}: {}", error.to_error_body().message));
                return false;
            }
        };
        inviter.disk.write_durable(changes);
        let document = live.replica.doc().save();
        self.inputs.push_back((via, SyncInput::LocalChange));
        self.dirty.insert(via);
        let joiner = &mut self.nodes[node];
        joiner.disk.log = vec![document];
        joiner.disk.unsynced.clear();
        joiner.disk.sync_states.clear();
        joiner.joined = true;
        if let Err(error) = joiner.start() {
            self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, format!("n{node} cannot adopt: {error}"));
            return false;
        }
        self.schedule_lease_timer(node);
        self.publish_probe(node);
        self.dial_everyone(node);
        true
    }

    fn publish_probe(&mut self, node: usize) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let probe = self.nodes[node].probe();
        let sim_node = &mut self.nodes[node];
        let Some(live) = &mut sim_node.live else { return };
        match live.replica.publish_probe(&sim_node.key, probe, wall) {
            Ok(Some(changes)) => {
                sim_node.disk.write_durable(changes);
                self.fulfil_duties(node, &Touched { probes: true, ..Touched::default() });
                self.inputs.push_back((node, SyncInput::LocalChange));
                self.dirty.insert(node);
            }
            Ok(None) => {}
            Err(error) => {
                let detail = format!("n{node} cannot publish its probe: {}", error.to_error_body().message);
                self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, detail);
            }
        }
    }

    // ---- faults ----

    fn fault(&mut self, fault: Fault) {
        self.note(format!("fault: {fault:?}"));
        match &fault {
            Fault::Partition { side, heal_at_us } => {
                for a in side {
                    for b in (0..self.nodes.len()).filter(|b| !side.contains(b)) {
                        self.net.block(*a, b);
                        self.net.block(b, *a);
                        self.watch_pair(*a, b);
                    }
                }
                self.schedule_at(*heal_at_us, Event::Heal { fault: fault.clone() });
            }
            Fault::OneWay { from, to, heal_at_us } => {
                self.net.block(*from, *to);
                self.watch_pair(*from, *to);
                self.schedule_at(*heal_at_us, Event::Heal { fault: fault.clone() });
            }
            Fault::Flap { a, b, period_us, until_us } => self.flap(*a, *b, true, *until_us, *period_us),
            Fault::Crash { node, restart_at_us } => {
                self.crash(*node);
                self.schedule_at(*restart_at_us, Event::Restart { node: *node });
            }
            Fault::Join { node, via } => {
                if self.nodes[*node].joined {
                    return;
                }
                let reachable = self.nodes[*via].live.is_some() && !self.net.is_cut(*node, *via);
                if !(reachable && self.admit(*node, *via)) {
                    // The joiner tries again, as a person would.
                    self.schedule(SECOND_US, Event::Fault(fault.clone()));
                }
            }
            Fault::Remove { node, by } => self.remove(*node, *by),
            Fault::ToggleGpu { node } => {
                self.nodes[*node].gpu = !self.nodes[*node].gpu;
                self.publish_probe(*node);
            }
        }
    }

    fn heal(&mut self, fault: Fault) {
        self.note(format!("healed: {fault:?}"));
        match fault {
            Fault::Partition { side, .. } => {
                for a in &side {
                    for b in (0..self.nodes.len()).filter(|b| !side.contains(b)) {
                        self.net.unblock(*a, b);
                        self.net.unblock(b, *a);
                    }
                }
            }
            Fault::OneWay { from, to, .. } => self.net.unblock(from, to),
            _ => {}
        }
    }

    fn flap(&mut self, a: usize, b: usize, down: bool, until_us: u64, period_us: u64) {
        if self.phase != Phase::Work {
            return; // the heal lifted every block
        }
        if down {
            self.net.block(a, b);
            self.net.block(b, a);
            self.watch_pair(a, b);
        } else {
            self.net.unblock(a, b);
            self.net.unblock(b, a);
        }
        if down || self.now_us + period_us < until_us {
            self.schedule(period_us, Event::FlapToggle { a, b, down: !down, until_us, period_us });
        }
    }

    /// A blocked path: pings stop coming back, so the connection dies after the timeout
    /// unless the path healed by then.
    fn watch_pair(&mut self, a: usize, b: usize) {
        if let Some(conn) = self.net.conn_between(a, b) {
            let after = self.net.detection_us(true, &mut self.rng);
            self.schedule(after, Event::Broken { conn });
        }
    }

    fn crash(&mut self, node: usize) {
        let Some(_) = self.nodes[node].live.take() else { return };
        self.crashes += 1;
        let lost = self.nodes[node].disk.crash();
        self.note(format!("n{node} crashed; {lost} unsynced chunks lost"));
        for conn in self.net.conns_of(node) {
            self.net.doom(conn);
            let after = self.net.detection_us(true, &mut self.rng);
            self.schedule(after, Event::Broken { conn });
        }
        self.check.restarted(node);
    }

    fn restart(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        if !sim_node.joined {
            return;
        }
        match sim_node.start() {
            Ok(()) => {
                let boot = sim_node.disk.boot;
                self.note(format!("n{node} restarted with boot {boot}"));
                self.check.restarted(node);
                self.dirty.insert(node);
                self.schedule_lease_timer(node);
                self.publish_probe(node);
                self.dial_everyone(node);
            }
            Err(error) => {
                let detail = format!("n{node} cannot restart from its disk: {error}");
                self.check.violate(invariant::NOTHING_LOST, self.now_us, detail);
            }
        }
    }

    fn remove(&mut self, node: usize, by: usize) {
        let wall = self.nodes[by].wall_ms(self.now_us);
        let membership = Membership {
            action: MembershipAction::Remove,
            member: self.nodes[node].id,
            name: self.nodes[node].name.clone(),
            roles: Vec::new(),
        };
        let victim = self.nodes[node].id;
        let remover = &mut self.nodes[by];
        let Some(live) = &mut remover.live else {
            self.schedule(SECOND_US, Event::Fault(Fault::Remove { node, by }));
            return;
        };
        if !live.replica.members().get(&victim).is_some_and(|member| member.is_current()) {
            // Not a member yet by this node's view (a join still travelling): try later.
            self.schedule(SECOND_US, Event::Fault(Fault::Remove { node, by }));
            return;
        }
        match live.replica.change_membership(&remover.key, membership, wall) {
            Ok(changes) => {
                remover.disk.write_durable(changes);
                self.nodes[node].removed = true;
                self.note(format!("n{by} removed n{node}"));
                self.fulfil_duties(by, &Touched { members: true, ..Touched::default() });
                self.inputs.push_back((by, SyncInput::LocalChange));
                self.dirty.insert(by);
            }
            Err(error) => self.note(format!("n{by} cannot remove n{node}: {}", error.to_error_body().message)),
        }
    }

    // ---- connections ----

    fn dial_everyone(&mut self, node: usize) {
        for peer in (0..self.nodes.len()).filter(|peer| *peer != node) {
            let after = self.rng.random_range(0..100_000);
            self.schedule_dial(node, peer, after);
        }
    }

    fn schedule_dial(&mut self, from: usize, to: usize, after_us: u64) {
        if self.dialling.insert((from.min(to), from.max(to))) {
            self.schedule(after_us, Event::Dial { from, to });
        }
    }

    fn redial(&mut self, from: usize, to: usize) {
        let backoff = self.net.next_backoff(from, to);
        self.schedule_dial(from, to, backoff);
    }

    fn dial(&mut self, from: usize, to: usize) {
        self.dialling.remove(&(from.min(to), from.max(to)));
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        if !a.joined || a.live.is_none() || self.net.conn_between(from, to).is_some() {
            return;
        }
        if b.live.is_none() || self.net.is_cut(from, to) {
            return self.redial(from, to);
        }
        if let Some((conn, handshake_us)) = self.net.dial(from, to, &mut self.rng) {
            self.schedule(handshake_us, Event::Open { conn });
        }
    }

    /// The handshake finished: each end's gate admits only current members of its view, then
    /// each end's engine opens a session from its saved sync state.
    fn open(&mut self, conn: ConnId) {
        let Some(link) = self.net.conn(conn).cloned() else { return };
        let (a, b) = (link.a, link.b);
        let up = |node: &SimNode| node.live.is_some();
        if link.dead || !up(&self.nodes[a]) || !up(&self.nodes[b]) || self.net.is_cut(a, b) {
            self.net.kill(conn);
            return self.redial(a, b);
        }
        let admits = |sim: &Sim, host: usize, guest: usize| {
            sim.nodes[host].live.as_ref().is_some_and(|live| {
                live.replica.members().get(&sim.nodes[guest].id).is_some_and(|member| member.is_current())
            })
        };
        if !admits(self, a, b) || !admits(self, b, a) {
            self.note(format!("n{a}-n{b}: refused by the membership gate"));
            self.net.kill(conn);
            return self.redial(a, b);
        }
        self.net.mark_open(conn);
        self.note(format!("n{a}-n{b}: connected (conn {conn})"));
        for (node, peer) in [(a, b), (b, a)] {
            let peer_id = self.nodes[peer].id;
            let sim_node = &mut self.nodes[node];
            let saved_state = sim_node.disk.sync_states.get(&peer_id).cloned();
            if let Some(live) = &mut sim_node.live {
                live.links.insert(peer, conn);
            }
            self.inputs.push_back((node, SyncInput::Connected { peer: peer_id, saved_state }));
        }
    }

    fn deliver(&mut self, conn: ConnId, to: usize, frame: Vec<u8>) {
        let Some(link) = self.net.conn(conn) else { return };
        if link.dead {
            return;
        }
        let from = link.other(to);
        let is_link = self.nodes[to].live.as_ref().is_some_and(|live| live.links.get(&from) == Some(&conn));
        if !is_link {
            return;
        }
        let peer = self.nodes[from].id;
        self.inputs.push_back((to, SyncInput::Frame { peer, bytes: frame }));
    }

    /// Both ends of a dead connection hear of it; the dialling side redials.
    fn broken(&mut self, conn: ConnId) {
        let Some(link) = self.net.conn(conn).cloned() else { return };
        let both_up = self.nodes[link.a].live.is_some() && self.nodes[link.b].live.is_some();
        if !link.dead && !self.net.is_cut(link.a, link.b) && both_up {
            return; // the path healed before the pings timed out
        }
        self.net.kill(conn);
        self.note(format!("n{}-n{}: connection {conn} closed", link.a, link.b));
        for (node, peer) in [(link.a, link.b), (link.b, link.a)] {
            self.drop_link(node, peer, conn);
        }
        self.redial(link.a, link.b);
    }

    fn drop_link(&mut self, node: usize, peer: usize, conn: ConnId) {
        let peer_id = self.nodes[peer].id;
        let Some(live) = &mut self.nodes[node].live else { return };
        if live.links.get(&peer) == Some(&conn) {
            live.links.remove(&peer);
            self.inputs.push_back((node, SyncInput::Disconnected { peer: peer_id }));
        }
    }

    // ---- the engine ----

    fn drain_inputs(&mut self) {
        while let Some((node, input)) = self.inputs.pop_front() {
            let wall = self.nodes[node].wall_ms(self.now_us);
            let Some(live) = &mut self.nodes[node].live else { continue };
            let outputs = live.engine.handle(&mut live.replica, input, wall);
            for output in outputs {
                self.carry_out(node, output);
            }
        }
    }

    fn carry_out(&mut self, node: usize, output: SyncOutput) {
        match output {
            SyncOutput::Send { peer, frame, .. } => {
                let Some(peer_index) = self.index_of(&peer) else { return };
                let Some(conn) = self.nodes[node].live.as_ref().and_then(|live| live.links.get(&peer_index).copied())
                else {
                    return;
                };
                let delay = self.nodes[node].slow_us;
                match self.net.send(conn, node, frame.len(), self.now_us, delay, &mut self.rng) {
                    Fate::Arrives(times) => {
                        for at in times {
                            self.schedule_at(at, Event::Deliver { conn, to: peer_index, frame: frame.clone() });
                        }
                    }
                    Fate::Lost => {
                        self.note(format!("n{node}->n{peer_index}: a frame was lost; the connection resets"));
                        let after = self.net.detection_us(false, &mut self.rng);
                        self.schedule(after, Event::Broken { conn });
                    }
                    Fate::Dropped => {}
                }
            }
            SyncOutput::Close { peer, reason } => {
                let Some(peer_index) = self.index_of(&peer) else { return };
                self.note(format!("n{node} closes its link to n{peer_index}: {reason}"));
                if reason.starts_with("bad frame") && in_mesh(&self.nodes, peer_index) {
                    let detail = format!("n{node} refused a frame of n{peer_index}: {reason}");
                    self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, detail);
                }
                if let Some(conn) = self.nodes[node].live.as_mut().and_then(|live| live.links.remove(&peer_index)) {
                    self.net.doom(conn);
                    let after = self.net.detection_us(false, &mut self.rng);
                    self.schedule(after, Event::Broken { conn });
                }
            }
            SyncOutput::Persist { changes } => {
                let boot = self.nodes[node].disk.boot;
                self.nodes[node].disk.write_behind(changes);
                let after = self.rng.random_range(200..3_000);
                self.schedule(after, Event::Flush { node, boot });
                self.dirty.insert(node);
            }
            SyncOutput::PersistPeerState { peer, state } => {
                self.nodes[node].disk.sync_states.insert(peer, state);
            }
            SyncOutput::Changed(touched) => {
                self.dirty.insert(node);
                // As the node does: a merge's duties at once when none were done in the last
                // batch time, else together with those of every merge until then.
                let now_us = self.now_us;
                let boot = self.nodes[node].disk.boot;
                let Some(live) = &mut self.nodes[node].live else { return };
                if live.duties_at_us.is_some() {
                    live.duties_due.absorb(&touched);
                    return;
                }
                live.duties_at_us = Some(now_us + DUTIES_BATCH_US);
                self.schedule(DUTIES_BATCH_US, Event::Duties { node, boot });
                self.fulfil_duties(node, &touched);
            }
        }
    }

    fn index_of(&self, id: &meshwork_protocol::NodeId) -> Option<usize> {
        self.nodes.iter().position(|node| node.id == *id)
    }

    /// What the node does after a merge or a local operation (`Replica::fulfil_duties`, as
    /// the node binary does).
    fn fulfil_duties(&mut self, node: usize, touched: &Touched) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let sim_node = &mut self.nodes[node];
        let Some(live) = &mut sim_node.live else { return };
        let duties = live.replica.fulfil_duties_after(&sim_node.key, touched, wall);
        self.carry_out_duties(node, duties);
    }

    /// The lease timer fired: tell the agents whose lease ran out, then sleep until the next
    /// lease of this node's agents ends (at most [`LEASE_TIMER_US_MAX`]).
    fn lease_timer(&mut self, node: usize) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let sim_node = &mut self.nodes[node];
        let Some(live) = &mut sim_node.live else { return };
        let duties = live.replica.fulfil_expiry_duties(&sim_node.key, wall);
        if !duties.changes.is_empty() {
            self.dirty.insert(node);
        }
        self.carry_out_duties(node, duties);
        self.schedule_lease_timer(node);
    }

    fn schedule_lease_timer(&mut self, node: usize) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let Some(live) = &self.nodes[node].live else { return };
        // The lease holds through its last millisecond: wake just after it.
        let next_us = live
            .replica
            .next_lease_expiry_ms()
            .map_or(LEASE_TIMER_US_MAX, |until| (until + 1).saturating_sub(wall).saturating_mul(1000));
        let boot = self.nodes[node].disk.boot;
        self.schedule(next_us.clamp(100_000, LEASE_TIMER_US_MAX), Event::LeaseTimer { node, boot });
    }

    /// Makes what duties wrote durable and pushes it; reports what could not be written.
    fn carry_out_duties(&mut self, node: usize, duties: meshwork_crdt::duties::Duties) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        self.check.expiry_notices_written(self.now_us, &self.nodes[node], &duties.notices, wall);
        let sim_node = &mut self.nodes[node];
        let wrote = !duties.changes.is_empty();
        for changes in duties.changes {
            sim_node.disk.write_durable(changes);
        }
        for error in duties.errors {
            self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, format!("n{node}: {error}"));
        }
        for notice in &duties.notices {
            self.trace.line(self.now_us, &format!("n{node} tells {}: {}", notice.to, notice.message.subject));
        }
        if !duties.acks.is_empty() {
            self.trace.line(self.now_us, &format!("n{node} votes for {} quorum claims", duties.acks.len()));
        }
        if wrote {
            self.inputs.push_back((node, SyncInput::LocalChange));
        }
    }

    fn ask_confirmation(&mut self, node: usize, task: &TaskId, claim: RecordId) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let sim_node = &mut self.nodes[node];
        let Some(live) = &mut sim_node.live else { return };
        match live.replica.ask_confirmation(&sim_node.key, task, claim, wall) {
            Ok(Some(changes)) => {
                sim_node.disk.write_durable(changes);
                self.dirty.insert(node);
                self.trace.line(self.now_us, &format!("n{node} asks to confirm its claim {claim} of {task}"));
                self.inputs.push_back((node, SyncInput::LocalChange));
            }
            Ok(None) => {}
            Err(error) => {
                let detail = format!("n{node}: asking to confirm {claim}: {}", error.to_error_body().message);
                self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, detail);
            }
        }
    }

    // ---- the agents ----

    fn work(&mut self, node: usize) {
        let finishing = match self.phase {
            Phase::Work => false,
            Phase::Finish => true,
            Phase::Settle => return,
        };
        let agent_index = self.rng.random_range(0..self.nodes[node].agents.len());
        let agent = self.nodes[node].agents[agent_index].clone();
        let wall = self.nodes[node].wall_ms(self.now_us);
        let op = match &self.nodes[node].live {
            Some(live) if self.nodes[node].joined && !(finishing && self.nodes[node].removed) => {
                if finishing {
                    workload::finishing(&live.replica, &agent, wall)
                } else {
                    Some(workload::busy(&mut self.rng, &live.replica, &agent, wall, self.scenario.quorum_percent))
                }
            }
            _ => None,
        };
        // An agent with nothing to do looks again in a few seconds (leases run out slowly).
        let gap = match (&op, finishing) {
            (None, _) => self.rng.random_range(2 * SECOND_US..5 * SECOND_US),
            (Some(_), true) => self.rng.random_range(50_000..500_000),
            (Some(_), false) => self.op_gap(),
        };
        self.schedule(gap, Event::Work { node });
        if let Some(op) = op {
            self.operate(node, agent_index, op);
        }
    }

    fn operate(&mut self, node: usize, agent_index: usize, op: Op) {
        let wall = self.nodes[node].wall_ms(self.now_us);
        let random = self.rng.random::<u64>();
        let sim_node = &mut self.nodes[node];
        let agent = sim_node.agents[agent_index].clone();
        let Some(live) = &mut sim_node.live else { return };
        let replica = &mut live.replica;
        let speaker = Speaker { key: &sim_node.key, agent: &agent };
        self.operations += 1;
        let outcome: Result<(Vec<u8>, Option<Acknowledged>), OpError> = match &op {
            Op::Add { after, requires_gpu, needs_approval, lease_ms, priority } => {
                let request = AddTask {
                    title: format!("task by {agent}@{}", sim_node.name),
                    after: after.iter().map(ToString::to_string).collect(),
                    requires: if *requires_gpu { vec!["label:gpu".to_owned()] } else { Vec::new() },
                    needs_approval: *needs_approval,
                    lease_ms: Some(*lease_ms),
                    priority: *priority,
                    ..AddTask::default()
                };
                replica
                    .add_task(speaker, &request, wall, random)
                    .map(|applied| (applied.changes, Some(Acknowledged::Task(applied.task))))
            }
            Op::Claim { task, quorum } => {
                replica.claim_with(speaker, task, ClaimOptions { quorum: *quorum }, wall).map(acknowledged)
            }
            Op::ClaimNext => replica.claim_next(speaker, wall).map(acknowledged),
            Op::TakeOver { task } => replica.claim(speaker, task, wall).map(acknowledged),
            Op::Renew { task } => replica.renew(speaker, task, wall).map(acknowledged),
            Op::Progress { task } => {
                let percent = u8::try_from(random % 101).ok();
                replica.progress(speaker, task, "working", percent, wall).map(acknowledged)
            }
            Op::Handoff { task } => {
                let request = HandoffRequest {
                    commits: vec![format!("{random:x}")],
                    tests: vec!["cargo test".to_owned()],
                    next: "review".to_owned(),
                    ..HandoffRequest::default()
                };
                replica.handoff(speaker, task, &request, wall).map(acknowledged)
            }
            Op::Done { task } => replica.done(speaker, task, "done", wall).map(acknowledged),
            Op::Fail { task } => replica.fail(speaker, task, "the build broke", wall).map(acknowledged),
            Op::Release { task } => replica.release(speaker, task, "handing back", wall).map(acknowledged),
            Op::Approve { task } => replica.approve(speaker, task, wall).map(acknowledged),
            Op::Cancel { task } => replica.cancel(speaker, task, "not needed", wall).map(acknowledged),
            Op::ReadInbox => {
                let to = meshwork_protocol::AgentId { agent: agent.clone(), node: sim_node.id };
                let ids: Vec<String> =
                    replica.inbox(&to).into_iter().filter(|entry| !entry.read).map(|entry| entry.id).collect();
                replica
                    .mark_messages(&to, &ids, true, wall)
                    .map(|changes| (changes.unwrap_or_default(), None))
                    .map_err(OpError::from)
            }
            Op::RogueClaim { task } => rogue_claim(replica, &sim_node.key, &agent, task, wall),
            Op::Edit { task, requires_gpu, priority } => {
                let request = EditTask {
                    requires: requires_gpu.map(|gpu| if gpu { vec!["label:gpu".to_owned()] } else { Vec::new() }),
                    priority: *priority,
                    ..EditTask::default()
                };
                replica.edit_task(speaker, task, &request, wall).map(|applied| (applied.changes, None))
            }
        };
        // A claim that lost at once wrote its record all the same: it is stored like any other.
        let (outcome, refusal) = match outcome {
            Err(OpError::Written { applied, refusal }) => (Ok(acknowledged(*applied)), Some(refusal)),
            other => (other, None),
        };
        match outcome {
            Ok((changes, kept)) => {
                let record = match &kept {
                    Some(Acknowledged::Record(_, record)) => format!(" ({record})"),
                    _ => String::new(),
                };
                let refused = refusal.is_some();
                let answer = refusal.map_or_else(
                    || "ok".to_owned(),
                    |refusal| format!("{} (written: {})", refusal.code.as_str(), refusal.message),
                );
                let summary = format!("n{node} {agent}: {op:?} -> {answer}{record}");
                let wrote = !changes.is_empty();
                if wrote {
                    sim_node.disk.write_durable(changes);
                    self.dirty.insert(node);
                }
                let task = match (&kept, &op) {
                    (Some(Acknowledged::Task(task) | Acknowledged::Record(task, _)), _) => Some(task.clone()),
                    (None, Op::Edit { task, .. }) => Some(task.clone()),
                    (None, _) => None,
                };
                if matches!(op, Op::Add { .. } | Op::Edit { .. })
                    && let Some(entry) = task.as_ref().and_then(|task| replica.task(task))
                {
                    self.check.requirements_given(&entry.fields.id, &entry.fields.requires);
                }
                // A plain claim that holds asks the mesh to confirm it once the settle time passed.
                let plain_claim = matches!(op, Op::Claim { quorum: false, .. } | Op::ClaimNext | Op::TakeOver { .. });
                if let (true, false, Some(Acknowledged::Record(task, claim))) = (plain_claim, refused, &kept) {
                    let boot = sim_node.disk.boot;
                    let ask = Event::AskConfirmation { node, boot, task: task.clone(), claim: *claim };
                    let settle_us = self.rng.random_range(SETTLE_US_MIN..=SETTLE_US_MAX);
                    self.schedule(settle_us, ask);
                }
                if let Some(kept) = kept {
                    self.check.acknowledge(node, kept);
                }
                self.note(summary);
                if let Some(task) = task.filter(|_| wrote) {
                    self.fulfil_duties(node, &Touched { tasks: [task].into_iter().collect(), ..Touched::default() });
                }
                if wrote {
                    self.inputs.push_back((node, SyncInput::LocalChange));
                }
            }
            Err(error) => {
                self.refused += 1;
                let body = error.to_error_body();
                if matches!(error, OpError::Doc(_)) {
                    let detail = format!("n{node}: {op:?} failed in the document: {}", body.message);
                    self.check.violate(invariant::NO_AUTOMERGE_ERRORS, self.now_us, detail);
                }
                self.note(format!("n{node} {agent}: {op:?} -> {}", body.code.as_str()));
            }
        }
    }

    // ---- the end ----

    /// Takeovers after a lease ran out, and `expired-` notices, on the final state: evidence
    /// that the runs exercise stale work.
    fn stale_counts(&self) -> (u64, u64) {
        let takeovers = self.any_replica().map_or(0, |replica| {
            replica.tasks().values().map(|entry| entry.state.taken_over.len() as u64).sum::<u64>()
        });
        let mut notices = 0;
        for node in self.nodes.iter().filter(|node| in_mesh(&self.nodes, node.index)) {
            let Some(live) = &node.live else { continue };
            for agent in &node.agents {
                let inbox = live.replica.inbox(&meshwork_protocol::AgentId { agent: agent.clone(), node: node.id });
                notices += inbox.iter().filter(|entry| entry.id.starts_with("expired-")).count() as u64;
            }
        }
        (takeovers, notices)
    }

    /// Every participant's saved document stays within its budget.
    fn document_budget(&mut self) -> usize {
        let mut largest = 0;
        for node in self.nodes.iter().filter(|node| in_mesh(&self.nodes, node.index)) {
            let Some(live) = &node.live else { continue };
            let automerge = live.replica.doc().automerge();
            let changes = automerge.get_changes(&[]).len();
            let bytes = live.replica.doc().save().len();
            largest = largest.max(bytes);
            let budget = DOCUMENT_BYTES_BASE + changes * DOCUMENT_BYTES_PER_CHANGE_MAX;
            if bytes > budget {
                let detail = format!("{}: {bytes} bytes for {changes} changes (budget {budget})", node.name);
                self.check.violate(invariant::DOCUMENT_SIZE, self.now_us, detail);
            }
        }
        largest
    }

    /// Folds a node's final state into the trace hash, so equal hashes mean equal outcomes.
    fn digest_node(&mut self, node: usize) {
        let line = match &self.nodes[node].live {
            Some(live) => {
                let mut heads = live.replica.doc().heads();
                heads.sort();
                let heads: Vec<String> = heads.iter().map(|head| head.to_string()[..12].to_owned()).collect();
                format!("end n{node}: heads {}", heads.join(","))
            }
            None => format!("end n{node}: down"),
        };
        self.note(line);
    }
}

fn acknowledged(applied: meshwork_crdt::Applied) -> (Vec<u8>, Option<Acknowledged>) {
    let kept =
        applied.record.filter(|_| !applied.changes.is_empty()).map(|record| Acknowledged::Record(applied.task, record));
    (applied.changes, kept)
}

/// Signs a claim without asking the gate, as a member whose node skipped it would.
fn rogue_claim(
    replica: &mut Replica,
    key: &NodeKey,
    agent: &meshwork_protocol::AgentName,
    task: &TaskId,
    wall: u64,
) -> Result<(Vec<u8>, Option<Acknowledged>), OpError> {
    let Some(entry) = replica.task(task) else { return Ok((Vec::new(), None)) };
    // It names the task's terms truthfully: only its gate was skipped.
    let claim = Claim {
        task: task.clone(),
        generation: entry.state.generation,
        lamport: entry.state.lamport_max + 1,
        lease_ms: entry.fields.lease_ms,
        probe: replica.probes().latest(&replica.node()).map(|(probe, _)| probe),
        quorum: false,
        requires: Claim::canonical_requirements(&entry.fields.requires),
        max_attempts: entry.fields.max_attempts,
    };
    let signed = replica.sign(key, Some(agent.clone()), RecordBody::Claim(claim), wall)?;
    let changes = replica.doc_mut().change(wall, "rogue claim", |tx, maps| put_task_record(tx, maps, task, &signed))?;
    let touched = Touched { tasks: [task.clone()].into_iter().collect(), ..Touched::default() };
    replica.refresh(&touched, wall);
    Ok((changes, Some(Acknowledged::Record(task.clone(), signed.id()))))
}
