//! `meshwork-netsim`: runs seeds of the simulation and reports violations.
//!
//! `cargo run --release -p meshwork-netsim -- --seeds 500 --nodes 5 [--first-seed S] [--json]`
//! runs seeds S..S+N-1 and exits non-zero on any violation. `MESHWORK_SEED=S` replays one
//! seed and prints its readable trace.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use meshwork_netsim::{RunReport, run_seed};

#[derive(Debug, Parser)]
#[command(name = "meshwork-netsim", about = "Deterministic simulation of a meshwork mesh under faults")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    seeds: u64,
    /// The first seed; seeds S..S+N-1 run.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Nodes per mesh.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=16))]
    nodes: u64,
    /// Threads to run seeds on (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("meshwork-netsim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let nodes = usize::try_from(args.nodes).context("--nodes")?;
    if let Ok(text) = std::env::var("MESHWORK_SEED") {
        let seed: u64 = text.trim().parse().with_context(|| format!("MESHWORK_SEED={text} is not a seed number"))?;
        return Ok(replay(seed, nodes));
    }
    let started = Instant::now();
    let last = args.first_seed.checked_add(args.seeds).context("--first-seed plus --seeds overflows")?;
    let threads = args
        .threads
        .and_then(|threads| usize::try_from(threads).ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let next = AtomicU64::new(args.first_seed);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= last {
                        break;
                    }
                    let report = run_seed(seed, nodes, false);
                    if !report.violations.is_empty() && !args.json {
                        eprintln!("seed {seed}: {} violations (replay: MESHWORK_SEED={seed})", report.violations.len());
                    }
                    reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    reports.sort_by_key(|report| report.seed);
    let summary = Summary::of(&reports, args.first_seed, nodes, started.elapsed().as_millis());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        summary.print();
    }
    Ok(summary.violations == 0)
}

/// Runs one seed with its readable trace.
fn replay(seed: u64, nodes: usize) -> bool {
    let report = run_seed(seed, nodes, true);
    for line in &report.trace {
        println!("{line}");
    }
    println!();
    println!("{}", report.scenario);
    println!(
        "seed {seed}: trace hash {}, {} events, {} operations ({} refused), {} frames, {} bytes, settled in {:?} ms",
        report.trace_hash,
        report.events,
        report.operations,
        report.refused_operations,
        report.frames,
        report.bytes,
        report.settle_us.iter().map(|us| us / 1000).collect::<Vec<_>>()
    );
    for violation in &report.violations {
        println!("VIOLATION {} at {:.3}s: {}", violation.invariant, violation.at_us as f64 / 1e6, violation.detail);
    }
    report.violations.is_empty()
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    seeds: usize,
    first_seed: u64,
    nodes: usize,
    violations: usize,
    failed_seeds: Vec<u64>,
    violations_by_invariant: BTreeMap<&'static str, usize>,
    trace_hashes: BTreeMap<String, String>,
    details: Vec<Detail>,
    events: u64,
    operations: u64,
    frames: u64,
    bytes: u64,
    crashes: u64,
    takeovers: u64,
    expiry_notices: u64,
    settle_ms_max: u64,
    document_bytes_max: usize,
    elapsed_ms: u128,
}

#[derive(Debug, serde::Serialize)]
struct Detail {
    seed: u64,
    invariant: &'static str,
    at_ms: u64,
    detail: String,
}

impl Summary {
    fn of(reports: &[RunReport], first_seed: u64, nodes: usize, elapsed_ms: u128) -> Summary {
        let mut summary = Summary {
            seeds: reports.len(),
            first_seed,
            nodes,
            violations: 0,
            failed_seeds: Vec::new(),
            violations_by_invariant: BTreeMap::new(),
            trace_hashes: BTreeMap::new(),
            details: Vec::new(),
            events: 0,
            operations: 0,
            frames: 0,
            bytes: 0,
            crashes: 0,
            takeovers: 0,
            expiry_notices: 0,
            settle_ms_max: 0,
            document_bytes_max: 0,
            elapsed_ms,
        };
        for report in reports {
            summary.trace_hashes.insert(report.seed.to_string(), report.trace_hash.clone());
            summary.events += report.events;
            summary.operations += report.operations;
            summary.frames += report.frames;
            summary.bytes += report.bytes;
            summary.crashes += report.crashes;
            summary.takeovers += report.takeovers;
            summary.expiry_notices += report.expiry_notices;
            summary.settle_ms_max =
                summary.settle_ms_max.max(report.settle_us.iter().copied().max().unwrap_or(0) / 1000);
            summary.document_bytes_max = summary.document_bytes_max.max(report.document_bytes);
            if report.violations.is_empty() {
                continue;
            }
            summary.failed_seeds.push(report.seed);
            summary.violations += report.violations.len();
            for violation in &report.violations {
                *summary.violations_by_invariant.entry(violation.invariant).or_default() += 1;
                summary.details.push(Detail {
                    seed: report.seed,
                    invariant: violation.invariant,
                    at_ms: violation.at_us / 1000,
                    detail: violation.detail.clone(),
                });
            }
        }
        summary
    }

    fn print(&self) {
        let last = self.first_seed + self.seeds as u64;
        println!(
            "netsim: seeds {}..{} with {} nodes each, in {:.1} s",
            self.first_seed,
            last,
            self.nodes,
            self.elapsed_ms as f64 / 1000.0
        );
        println!(
            "  {} events, {} operations, {} frames ({} bytes), {} crashes, {} takeovers of expired leases, {} holders \
             told their lease ran out; slowest settle {} ms; largest document {} bytes",
            self.events,
            self.operations,
            self.frames,
            self.bytes,
            self.crashes,
            self.takeovers,
            self.expiry_notices,
            self.settle_ms_max,
            self.document_bytes_max
        );
        if self.violations == 0 {
            println!("  no violations");
            return;
        }
        println!("  {} violations in {} seeds: {:?}", self.violations, self.failed_seeds.len(), self.failed_seeds);
        for (invariant, count) in &self.violations_by_invariant {
            println!("    {invariant}: {count}");
        }
        for detail in self.details.iter().take(20) {
            println!("  seed {} at {} ms: {}: {}", detail.seed, detail.at_ms, detail.invariant, detail.detail);
        }
        if let Some(seed) = self.failed_seeds.first() {
            println!(
                "  replay one: MESHWORK_SEED={seed} cargo run --release -p meshwork-netsim -- --nodes {}",
                self.nodes
            );
        }
    }
}
