//! netsim: a seeded, deterministic simulation of a meshwork mesh under faults.
//!
//! It drives N replicas of the very engine the node runs (`meshwork_crdt::Replica`, its
//! operations, `SyncEngine`, `Replica::fulfil_duties`) over a simulated network, with one
//! random stream per seed and a simulated clock per node, and checks the design's
//! invariants after every event. A seed is a scenario: the same seed gives the same trace
//! hash. Start reading at [`sim::Sim::run`]; docs/TESTING.md says how to run and replay.

pub mod check;
pub mod clock;
pub mod net;
pub mod node;
pub mod scenario;
pub mod sim;
pub mod trace;
pub mod workload;

pub use check::Violation;
pub use scenario::Scenario;
pub use sim::{RunReport, Sim};

/// Runs one seed: the scenario it names, with `nodes` nodes. A panic anywhere in the core is
/// caught and reported as a violation of its own.
pub fn run_seed(seed: u64, nodes: usize, verbose: bool) -> RunReport {
    let scenario = Scenario::for_seed(seed, nodes);
    let summary = scenario.summary();
    match std::panic::catch_unwind(move || Sim::new(scenario, verbose).run()) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            RunReport {
                seed,
                scenario: summary,
                trace_hash: "panicked".to_owned(),
                violations: vec![Violation { invariant: check::invariant::NO_PANIC, at_us: 0, detail: message }],
                events: 0,
                operations: 0,
                refused_operations: 0,
                frames: 0,
                bytes: 0,
                crashes: 0,
                tasks: 0,
                takeovers: 0,
                expiry_notices: 0,
                settle_us: Vec::new(),
                document_bytes: 0,
                simulated_us: 0,
                trace: Vec::new(),
            }
        }
    }
}
