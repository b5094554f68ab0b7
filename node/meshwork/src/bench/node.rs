//! `bench node` and `bench cold-start`: one node process, measured from its API.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;

use super::{BenchNode, concurrent_adds, millis, percentile, runtime};

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
