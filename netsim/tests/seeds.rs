//! netsim in CI: hundreds of seeds keep every invariant, and a seed is a replayable scenario.

use meshwork_netsim::{RunReport, run_seed};

/// Seeds the CI run covers: 500 seeds of 5 nodes, about 2.5 minutes on two cores
/// (docs/BENCHMARKS.md). `MESHWORK_NETSIM_SEEDS` runs more or fewer.
const CI_SEEDS: u64 = 500;
const NODES: usize = 5;

fn run_seeds(seeds: std::ops::Range<u64>) -> Vec<RunReport> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let report = run_seed(seed, NODES, false);
                    reports.lock().expect("no thread panics while holding the lock").push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().expect("the lock is free once every thread ended");
    reports.sort_by_key(|report| report.seed);
    reports
}

#[test]
fn hundreds_of_seeds_of_five_nodes_keep_every_invariant() {
    let seeds = std::env::var("MESHWORK_NETSIM_SEEDS").ok().and_then(|text| text.parse().ok()).unwrap_or(CI_SEEDS);
    let reports = run_seeds(0..seeds);
    let failed: Vec<String> = reports
        .iter()
        .filter(|report| !report.violations.is_empty())
        .map(|report| {
            let first = &report.violations[0];
            format!(
                "seed {} ({}): {}: {} -- replay: MESHWORK_SEED={} cargo run --release -p meshwork-netsim",
                report.seed,
                report.violations.len(),
                first.invariant,
                first.detail,
                report.seed
            )
        })
        .collect();
    assert!(failed.is_empty(), "{} of {seeds} seeds broke an invariant:\n{}", failed.len(), failed.join("\n"));
    // The runs did real work: operations, crashes, settles, stale work told and taken over.
    let operations: u64 = reports.iter().map(|report| report.operations).sum();
    let crashes: u64 = reports.iter().map(|report| report.crashes).sum();
    assert!(operations > seeds * 100, "{operations} operations in {seeds} seeds");
    assert!(crashes > 0, "no seed crashed a node");
    let takeovers: u64 = reports.iter().map(|report| report.takeovers).sum();
    let told: u64 = reports.iter().map(|report| report.expiry_notices).sum();
    assert!(takeovers > 0 && told > 0, "{takeovers} takeovers, {told} holders told their lease ran out");
}

/// Seeds beyond the CI range that broke a check in the first 10,000-seed run, each fixed in
/// the simulation's model of the mesh, not in the core: a node admitted by a member already
/// removed counted as a participant (503, 900), a join or removal still pending at the heal
/// landed after the checks began (1430, 4205, 8498), a quorum claim its signer made after its
/// removal was seen to count before the removal arrived (5151), an approval voided by a
/// removal undid a `done` (734) and a late
/// renewal or takeover reopened a failed task (870, 987), both allowed by the design
/// (docs/PROTOCOL.md, "Open points").
#[test]
fn the_seeds_the_first_wide_run_broke_keep_every_invariant() {
    for seed in [503, 734, 870, 900, 987, 1430, 4205, 5151, 8498] {
        let report = run_seed(seed, NODES, false);
        assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    let first = run_seed(11, NODES, false);
    let again = run_seed(11, NODES, false);
    let other = run_seed(12, NODES, false);
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.events, again.events);
    assert_eq!(first.bytes, again.bytes);
    assert_ne!(first.trace_hash, other.trace_hash);
}

#[test]
fn a_replayed_seed_tells_what_each_node_did_and_hashes_the_same() {
    let quiet = run_seed(5, NODES, false);
    let replayed = run_seed(5, NODES, true);
    assert_eq!(quiet.trace_hash, replayed.trace_hash, "reading the trace must not change the run");
    assert!(quiet.trace.is_empty());
    let trace = replayed.trace.join("\n");
    for node in 0..NODES {
        assert!(trace.contains(&format!("n{node} ")), "the trace says nothing of n{node}");
    }
    assert!(trace.contains("settled: every participant has the same heads"), "{trace}");
}
