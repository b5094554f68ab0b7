//! `bench cli`: one `meshwork` process per call, as a person or an agent's shell runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::bail;
use meshwork_protocol::route;

use meshwork_client::Client;

use super::{
    BenchNode, concurrent_adds, meshwork, met_or_not, millis, percentile, print_node_warnings, runtime, statuses,
};

/// Processes timed per row of `bench cli` before the timed ones, so the binary and the
/// node's answer paths are warm.
const CLI_WARM_UP_RUNS: usize = 3;
/// How many tasks `bench cli` adds at once while it fills the node.
const CLI_FILL_CLIENTS: usize = 16;
/// The read goals of `bench cli`: p50 at or under this many milliseconds, by queue size.
const CLI_READ_GOALS_MS: [(usize, f64); 2] = [(5_000, 15.0), (20_000, 50.0)];
/// The mutation goal of `bench cli`: p50 at or under this many milliseconds.
const CLI_MUTATION_GOAL_MS: f64 = 2.0;

/// What one row of `bench cli` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CliRow {
    /// `meshwork --version`: the process alone, no node.
    Version,
    /// `task show ID --json`: one small query.
    Show,
    Ready,
    ReadyJson,
    ListJson,
    List,
    Add,
    Claim,
    Done,
}

impl CliRow {
    const ALL: [CliRow; 9] = [
        CliRow::Version,
        CliRow::Show,
        CliRow::Ready,
        CliRow::ReadyJson,
        CliRow::ListJson,
        CliRow::List,
        CliRow::Add,
        CliRow::Claim,
        CliRow::Done,
    ];

    /// The command line after `meshwork --home HOME --agent bench`; `id` is the task a row
    /// about one task names.
    fn args(self, id: &str) -> Vec<String> {
        let words: &[&str] = match self {
            CliRow::Version => &["--version"],
            CliRow::Show => &["task", "show", id, "--json"],
            CliRow::Ready => &["ready"],
            CliRow::ReadyJson => &["ready", "--json"],
            CliRow::ListJson => &["task", "list", "--json"],
            CliRow::List => &["task", "list"],
            CliRow::Add => &["task", "add", "a task added by bench cli"],
            CliRow::Claim => &["claim", id],
            CliRow::Done => &["done", id],
        };
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    fn label(self) -> String {
        let args = self.args("ID");
        format!("`{}`", args.join(" ").replace("a task added by bench cli", "TITLE"))
    }

    /// The goal this row is held to at `tasks` tasks, if the issue names one.
    fn goal_ms(self, tasks: usize) -> Option<f64> {
        match self {
            CliRow::Ready | CliRow::ReadyJson | CliRow::ListJson => {
                CLI_READ_GOALS_MS.iter().find(|(size, _)| *size == tasks).map(|(_, goal)| *goal)
            }
            CliRow::Add | CliRow::Claim | CliRow::Done => Some(CLI_MUTATION_GOAL_MS),
            CliRow::Version | CliRow::Show | CliRow::List => None,
        }
    }
}

/// `meshwork bench cli`: one `meshwork` process per call against a node holding `sizes`
/// tasks in turn; a markdown table of p50/p90/p99 per command and size.
pub(crate) fn cli(sizes: &[usize], runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    runtime()?.block_on(async {
        let mut node = BenchNode::create("cli")?;
        node.start().await?;
        println!("one `meshwork` process per call, spawned and waited for (stdout and stderr piped and read);");
        println!("{runs} timed runs per row after {CLI_WARM_UP_RUNS} untimed; the tasks open and ready but those the rows claim and finish");
        println!();
        println!("| command | tasks | p50 ms | p90 ms | p99 ms | goal |");
        println!("| --- | ---: | ---: | ---: | ---: | --- |");
        for &size in &sizes {
            // The queue holds `size` tasks when the reads run; the rows after them add a
            // few and claim and finish a few, so the next size starts from there.
            let missing = size.saturating_sub(node.status().await?.tasks);
            concurrent_adds(&node.home, CLI_FILL_CLIENTS, missing, false).await?;
            for row in CliRow::ALL {
                let latencies = time_cli_row(&node.home, row, runs).await?;
                print_cli_row(row, size, &latencies);
            }
        }
        print_node_warnings("the node", &node);
        node.stop().await
    })
}

/// Times `runs` processes of one row (after the warm-up ones); sorted latencies.
async fn time_cli_row(home: &Path, row: CliRow, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let ids = if matches!(row, CliRow::Show | CliRow::Claim) {
        ready_ids(home, runs + CLI_WARM_UP_RUNS).await?
    } else if row == CliRow::Done {
        held_ids(home, runs + CLI_WARM_UP_RUNS).await?
    } else {
        Vec::new()
    };
    let mut latencies = Vec::with_capacity(runs);
    for index in 0..runs + CLI_WARM_UP_RUNS {
        let id = ids.get(index).map_or("", String::as_str);
        if row.args(id).iter().any(String::is_empty) {
            bail!("no task left for {} (run {index})", row.label());
        }
        let started = Instant::now();
        let output = meshwork(home).args(["--agent", "bench"]).args(row.args(id)).stdin(Stdio::null()).output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            bail!("{} failed ({}): {}{}", row.label(), output.status, stderr.trim(), stdout.trim());
        }
        if index >= CLI_WARM_UP_RUNS {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The first `count` tasks ready anywhere, in claim order.
async fn ready_ids(home: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await?;
    let ready = client.call::<route::Ready>(&(), &route::ReadyQuery { all: true, limit: Some(count) }).await?;
    if ready.len() < count {
        bail!("only {} tasks are ready, {count} are needed", ready.len());
    }
    Ok(ready.into_iter().take(count).map(|task| task.task.id.as_str().to_owned()).collect())
}

/// The first `count` tasks the agent `bench` holds.
async fn held_ids(home: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let mut client = Client::connect(home).await?;
    let claimed = client.call::<route::TaskList>(&(), &statuses("claimed")).await?;
    let held =
        claimed.into_iter().filter(|task| task.task.holder.as_ref().is_some_and(|holder| holder.agent == "bench"));
    let ids: Vec<String> = held.take(count).map(|task| task.task.id.as_str().to_owned()).collect();
    if ids.len() < count {
        bail!("bench holds only {} tasks, {count} are needed", ids.len());
    }
    Ok(ids)
}

fn print_cli_row(row: CliRow, size: usize, sorted: &[Duration]) {
    let [p50, p90, p99] = [0.5, 0.9, 0.99].map(|fraction| millis(percentile(sorted, fraction)));
    let goal = match row.goal_ms(size) {
        Some(goal) => format!("p50 ≤ {goal} ms: {}", met_or_not(p50 <= goal)),
        None => String::new(),
    };
    let tasks = crate::output::thousands(size);
    println!("| {} | {tasks} | {p50:.2} | {p90:.2} | {p99:.2} | {goal} |", row.label());
}
