//! `meshwork bench`: measures a real node process from the outside and prints a table.
//!
//! - `bench node`: durable mutations (`task add`) through the local API, with 1 and 16
//!   concurrent clients; latency percentiles, throughput, and fsyncs per operation.
//! - `bench cold-start`: fills a home with many tasks, stops the node cleanly, then times
//!   starts until the first answer and reads the process's peak RSS.
//!
//! Figures and the commands that produced them are kept in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use meshwork_protocol::api::NodeStatus;
use serde_json::json;

use crate::client::Client;

/// How long a benchmarked node may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A node process in a temporary home, stopped and removed on drop.
struct BenchNode {
    home: PathBuf,
    child: Option<Child>,
}

impl BenchNode {
    fn create(label: &str) -> anyhow::Result<BenchNode> {
        let stamp = crate::daemon::now_ms();
        let home = std::env::temp_dir().join(format!("meshwork-bench-{label}-{}-{stamp}", std::process::id()));
        let status = meshwork(&home).args(["init", "--name", "bench"]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("meshwork init failed for {}", home.display());
        }
        Ok(BenchNode { home, child: None })
    }

    /// Starts the node and waits for its first answer; returns the time that took.
    async fn start(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let child = meshwork(&self.home)
            .args(["node", "start", "--offline"])
            .env("MESHWORK_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the node")?;
        self.child = Some(child);
        while started.elapsed() < START_TIMEOUT {
            if let Ok(mut client) = Client::connect(&self.home).await
                && client.request(Method::GET, "/v1/status", None).await.is_ok()
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("the node did not answer within {START_TIMEOUT:?}")
    }

    async fn status(&self) -> anyhow::Result<NodeStatus> {
        let mut client = Client::connect(&self.home).await?;
        Ok(client.request(Method::GET, "/v1/status", None).await?.json()?)
    }

    /// Stops the node through the API (it compacts its log) and waits for it to exit.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut client = Client::connect(&self.home).await?;
        client.request(Method::POST, "/v1/shutdown", None).await?;
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// Peak resident memory of the node process, from /proc, in bytes.
    fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn meshwork(home: &Path) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshwork"));
    let mut command = Command::new(exe);
    command.arg("--home").arg(home);
    command
}

/// Adds `count` tasks from one client, and with `finish` claims and finishes each (three
/// signed records a task); returns each addition's latency.
async fn add_tasks(home: &Path, client_index: usize, count: usize, finish: bool) -> anyhow::Result<Vec<Duration>> {
    let mut client = Client::connect(home).await?.with_agent(&format!("bench-{client_index}"))?;
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count {
        let body = json!({ "title": format!("bench task {client_index}-{index}"), "priority": index % 10 });
        let started = Instant::now();
        let added = client.request(Method::POST, "/v1/tasks", Some(body)).await?;
        latencies.push(started.elapsed());
        if finish {
            let id = added.json::<serde_json::Value>()?["id"].as_str().unwrap_or_default().to_owned();
            client.request(Method::POST, "/v1/claim", Some(json!({ "task": id }))).await?;
            client
                .request(Method::POST, &format!("/v1/tasks/{id}/progress"), Some(json!({ "text": "working" })))
                .await?;
            client.request(Method::POST, &format!("/v1/tasks/{id}/done"), Some(json!({ "text": "done" }))).await?;
        }
    }
    Ok(latencies)
}

/// Runs `clients` concurrent clients adding `ops` tasks in all; returns latencies and wall time.
async fn concurrent_adds(
    home: &Path,
    clients: usize,
    ops: usize,
    finish: bool,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let home = home.to_owned();
        let share = ops / clients + usize::from(client_index < ops % clients);
        tasks.push(tokio::spawn(async move { add_tasks(&home, client_index, share, finish).await }));
    }
    let mut latencies = Vec::with_capacity(ops);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, started.elapsed()))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `meshwork bench node`.
pub(crate) fn node(ops: usize, clients: &[usize]) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut node = BenchNode::create("node")?;
        node.start().await?;
        concurrent_adds(&node.home, 1, 200, false).await?; // warm up
        println!("durable mutations (task add) through the local API, {ops} per row");
        println!(
            "{:>7} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "clients", "p50 ms", "p99 ms", "max ms", "ops/s", "fsyncs/op"
        );
        for &count in clients {
            let before = node.status().await?.storage;
            let (mut latencies, wall) = concurrent_adds(&node.home, count, ops, false).await?;
            let after = node.status().await?.storage;
            latencies.sort();
            let fsyncs = (after.fsyncs - before.fsyncs) as f64 / ops as f64;
            println!(
                "{count:>7} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {fsyncs:>10.2}",
                millis(percentile(&latencies, 0.5)),
                millis(percentile(&latencies, 0.99)),
                millis(percentile(&latencies, 1.0)),
                ops as f64 / wall.as_secs_f64(),
            );
        }
        node.stop().await
    })
}

/// `meshwork bench cold-start`.
pub(crate) fn cold_start(tasks: usize, starts: usize, finish: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut node = BenchNode::create("cold")?;
        node.start().await?;
        let filling = Instant::now();
        concurrent_adds(&node.home, 16, tasks, finish).await?;
        let records = if finish { " (each claimed, with progress, done)" } else { "" };
        println!("filled {tasks} tasks{records} in {:.1} s", filling.elapsed().as_secs_f64());
        node.stop().await?;
        let disk = dir_bytes(&node.home.join("doc"));
        println!("document on disk: {:.1} MiB", disk as f64 / (1024.0 * 1024.0));
        println!("{:>5} {:>16} {:>14} {:>8}", "start", "first answer ms", "peak RSS MiB", "tasks");
        for index in 1..=starts {
            let ready = node.start().await?;
            let status = node.status().await?;
            let rss = node.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
            println!("{index:>5} {:>16.0} {rss:>14.1} {:>8}", millis(ready), status.tasks);
            if status.tasks != tasks {
                bail!("the node came back with {} tasks, not {tasks}", status.tasks);
            }
            node.stop().await?;
        }
        Ok(())
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}
