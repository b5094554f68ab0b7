//! What one seed simulates: how many nodes, what the network is like, which faults strike
//! when, and how the agents work. Everything follows from the seed, so a seed is a scenario.

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::clock::NodeClock;

/// One simulated second, in the simulator's microseconds.
pub const SECOND_US: u64 = 1_000_000;

/// Kept apart from the run's own random stream, so changing how a run draws numbers does not
/// change which scenario a seed names.
const SCENARIO_STREAM: u64 = 0x6d65_7368_776f_726b;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Sub-millisecond latency, 100 Mbit/s.
    Lan,
    /// Tens of milliseconds with a long tail, a few Mbit/s.
    Wan,
}

/// A fault planned for a moment of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The nodes in `side` cannot reach the others, both ways, until `heal_at_us`.
    Partition { side: Vec<usize>, heal_at_us: u64 },
    /// Nothing from `from` reaches `to` until `heal_at_us`; the other way works.
    OneWay { from: usize, to: usize, heal_at_us: u64 },
    /// The link between `a` and `b` goes down and up every `period_us` until `until_us`.
    Flap { a: usize, b: usize, period_us: u64, until_us: u64 },
    /// The node's process dies (what it had not written is lost) and starts again, with a
    /// new boot, at `restart_at_us`.
    Crash { node: usize, restart_at_us: u64 },
    /// A node that was not a member joins through an invite from `via`.
    Join { node: usize, via: usize },
    /// A member removes another; the removed node keeps running and writing.
    Remove { node: usize, by: usize },
    /// The node's probe changes: it gains or loses the `gpu` label.
    ToggleGpu { node: usize },
}

#[derive(Debug, Clone)]
pub struct PlannedFault {
    pub at_us: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: usize,
    /// Nodes `0..founding_members` are members from the start; the others join later.
    pub founding_members: usize,
    pub link: LinkKind,
    /// Chance per frame, in parts per million, that the frame is lost and its connection
    /// resets (as QUIC gives up on a path).
    pub loss_ppm: u32,
    /// Chance per frame, in parts per million, that it is delivered twice, or out of order.
    pub duplicate_ppm: u32,
    pub reorder_ppm: u32,
    pub clocks: Vec<NodeClock>,
    /// Extra time a slow node takes before what it sends leaves it.
    pub slow_us: Vec<u64>,
    /// Nodes whose probe has the `gpu` label at the start.
    pub gpu: Vec<bool>,
    /// How long the agents work before the mesh is healed and left to settle.
    pub workload_us: u64,
    /// Time between two operations of one node's agents.
    pub op_gap_us: (u64, u64),
    /// Share of claims that are quorum claims, in percent.
    pub quorum_percent: u32,
    pub faults: Vec<PlannedFault>,
}

impl Scenario {
    /// The scenario a seed names, for `nodes` nodes (at least 2).
    pub fn for_seed(seed: u64, nodes: usize) -> Scenario {
        assert!(nodes >= 2, "a mesh needs two nodes to simulate");
        let mut rng = Pcg64Mcg::seed_from_u64(seed ^ SCENARIO_STREAM);
        let link = if rng.random_bool(0.3) { LinkKind::Wan } else { LinkKind::Lan };
        let lossy = rng.random_bool(0.3);
        let hostile = rng.random_bool(0.2);
        let skewed = rng.random_bool(0.3);
        let clocks = (0..nodes)
            .map(|_| NodeClock {
                skew_ms: if skewed && rng.random_bool(0.4) {
                    rng.random_range(-3_600_000..=3_600_000)
                } else {
                    rng.random_range(-50..=50)
                },
                drift_ppm: rng.random_range(-200..=200),
            })
            .collect();
        let slow_us =
            (0..nodes).map(|_| if rng.random_bool(0.15) { rng.random_range(5_000..100_000) } else { 0 }).collect();
        let gpu = (0..nodes).map(|_| rng.random_bool(0.5)).collect();
        let workload_us = rng.random_range(20..=60) * SECOND_US;
        let founding_members = if nodes > 2 && rng.random_bool(0.4) { nodes - 1 } else { nodes };
        let mut scenario = Scenario {
            seed,
            nodes,
            founding_members,
            link,
            loss_ppm: if lossy { rng.random_range(1_000..=20_000) } else { 0 },
            duplicate_ppm: if hostile { rng.random_range(1_000..=30_000) } else { 0 },
            reorder_ppm: if hostile { rng.random_range(1_000..=30_000) } else { 0 },
            clocks,
            slow_us,
            gpu,
            workload_us,
            op_gap_us: (100_000, rng.random_range(500_000..=2_500_000)),
            quorum_percent: if rng.random_bool(0.5) { rng.random_range(10..=50) } else { 0 },
            faults: Vec::new(),
        };
        scenario.faults = plan_faults(&scenario, &mut rng);
        scenario
    }

    /// One line for the trace's head and for humans.
    pub fn summary(&self) -> String {
        let skewed = self.clocks.iter().filter(|clock| clock.skew_ms.abs() > 1000).count();
        let slow = self.slow_us.iter().filter(|slow| **slow > 0).count();
        format!(
            "seed {} nodes {} (founding {}) link {:?} loss {}ppm dup {}ppm reorder {}ppm skewed {} slow {} \
             quorum {}% workload {}s faults {}",
            self.seed,
            self.nodes,
            self.founding_members,
            self.link,
            self.loss_ppm,
            self.duplicate_ppm,
            self.reorder_ppm,
            skewed,
            slow,
            self.quorum_percent,
            self.workload_us / SECOND_US,
            self.faults.len()
        )
    }
}

fn plan_faults(scenario: &Scenario, rng: &mut Pcg64Mcg) -> Vec<PlannedFault> {
    let nodes = scenario.nodes;
    let end = scenario.workload_us;
    let mut faults = Vec::new();
    let at = |rng: &mut Pcg64Mcg| rng.random_range(SECOND_US..end.saturating_sub(5 * SECOND_US).max(2 * SECOND_US));
    for node in scenario.founding_members..nodes {
        let when = rng.random_range(2 * SECOND_US..end / 2);
        let via = rng.random_range(0..scenario.founding_members);
        faults.push(PlannedFault { at_us: when, fault: Fault::Join { node, via } });
    }
    for _ in 0..rng.random_range(0..=3) {
        let when = at(rng);
        let mut side: Vec<usize> = (0..nodes).filter(|_| rng.random_bool(0.4)).collect();
        if side.is_empty() || side.len() == nodes {
            side = vec![rng.random_range(0..nodes)];
        }
        let heal_at_us = when + rng.random_range(SECOND_US..=20 * SECOND_US);
        faults.push(PlannedFault { at_us: when, fault: Fault::Partition { side, heal_at_us } });
    }
    for _ in 0..rng.random_range(0..=2) {
        let when = at(rng);
        let (from, to) = two_nodes(rng, nodes);
        let heal_at_us = when + rng.random_range(SECOND_US..=15 * SECOND_US);
        faults.push(PlannedFault { at_us: when, fault: Fault::OneWay { from, to, heal_at_us } });
    }
    if rng.random_bool(0.3) {
        let when = at(rng);
        let (a, b) = two_nodes(rng, nodes);
        let period_us = rng.random_range(200_000..=3 * SECOND_US);
        let until_us = when + rng.random_range(3 * SECOND_US..=20 * SECOND_US);
        faults.push(PlannedFault { at_us: when, fault: Fault::Flap { a, b, period_us, until_us } });
    }
    for _ in 0..rng.random_range(0..=2) {
        let when = at(rng);
        let node = rng.random_range(0..nodes);
        let restart_at_us = when + rng.random_range(200_000..=15 * SECOND_US);
        faults.push(PlannedFault { at_us: when, fault: Fault::Crash { node, restart_at_us } });
    }
    if nodes >= 3 && rng.random_bool(0.25) {
        // Never the founder, so someone is always left to remove and to invite.
        let node = rng.random_range(1..nodes);
        let by = (0..nodes).find(|candidate| *candidate != node).unwrap_or(0);
        faults.push(PlannedFault { at_us: rng.random_range(end / 2..end), fault: Fault::Remove { node, by } });
    }
    for _ in 0..rng.random_range(0..=2) {
        let node = rng.random_range(0..nodes);
        faults.push(PlannedFault { at_us: at(rng), fault: Fault::ToggleGpu { node } });
    }
    faults.sort_by_key(|planned| planned.at_us);
    faults
}

fn two_nodes(rng: &mut Pcg64Mcg, nodes: usize) -> (usize, usize) {
    let a = rng.random_range(0..nodes);
    let b = (a + rng.random_range(1..nodes)) % nodes;
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_scenario() {
        let first = Scenario::for_seed(42, 5);
        let again = Scenario::for_seed(42, 5);
        assert_eq!(first.summary(), again.summary());
        assert_eq!(first.faults.len(), again.faults.len());
    }

    #[test]
    fn planned_faults_fall_inside_the_workload() {
        for seed in 0..200 {
            let scenario = Scenario::for_seed(seed, 5);
            for planned in &scenario.faults {
                assert!(planned.at_us < scenario.workload_us, "seed {seed}: {planned:?}");
            }
        }
    }
}
