//! `resolve` and `ready` at 1k, 20k and 100k tasks, and the task objects of a listing and their
//! JSON at 1k and 20k (docs/BENCHMARKS.md records the figures).
//! Goals: ready <= 10 ms at 20k tasks, <= 50 ms at 100k.
//!
//! The queue is realistic: a third of the tasks done (claim + progress + done), a third
//! claimed (claim + renew), a third open, each after the task before it in its chain of ten.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meshwork_crdt::resolve::{ResolveContext, StoredRecord, resolve};
use meshwork_crdt::task::TaskFields;
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{Replica, Speaker, TaskEntry};
use meshwork_protocol::AgentName;
use meshwork_protocol::api::AddTask;

const BASE_MS: u64 = 1_800_000_000_000;

fn queue(tasks: usize) -> Replica {
    let key = node_key(1);
    let agent = AgentName::new("bench").unwrap();
    let speaker = Speaker { key: &key, agent: &agent };
    let mut replica = Replica::found(&key, 1, "bench", "bench", BASE_MS).unwrap().replica;
    for index in 0..tasks {
        let now = BASE_MS + index as u64;
        let after = if index % 10 == 0 { vec![] } else { vec![format!("T-{}", index - 1)] };
        let request =
            AddTask { id: Some(format!("T-{index}")), title: format!("task {index}"), after, ..AddTask::default() };
        let id = replica.add_task(speaker, &request, now, index as u64).unwrap().task;
        match index % 3 {
            0 if replica.is_ready(replica.task(&id).unwrap()) => {
                replica.claim(speaker, &id, now).unwrap();
                replica.progress(speaker, &id, "half way", Some(50), now).unwrap();
                replica.done(speaker, &id, "done", now).unwrap();
            }
            1 if replica.is_ready(replica.task(&id).unwrap()) => {
                replica.claim(speaker, &id, now).unwrap();
                replica.renew(speaker, &id, now).unwrap();
            }
            _ => {}
        }
    }
    replica
}

fn bench(c: &mut Criterion) {
    for tasks in [1_000usize, 20_000, 100_000] {
        let replica = queue(tasks);
        let inputs: Vec<(TaskFields, Vec<StoredRecord>)> = replica
            .tasks()
            .values()
            .map(|entry| (entry.fields.clone(), replica.doc().read_task_records(&entry.fields.id)))
            .collect();
        let mut group = c.benchmark_group("queue");
        group.throughput(Throughput::Elements(tasks as u64));
        group.sample_size(if tasks > 20_000 { 10 } else { 30 });
        group.bench_with_input(BenchmarkId::new("resolve_all", tasks), &inputs, |b, inputs| {
            let context = ResolveContext { members: replica.members(), probes: replica.probes() };
            b.iter(|| inputs.iter().map(|(fields, records)| resolve(fields, records, context).attempts).sum::<u32>());
        });
        group.bench_with_input(BenchmarkId::new("ready", tasks), &replica, |b, replica| {
            b.iter(|| replica.ready_tasks().len());
        });
        if tasks <= 20_000 {
            // What `task list --json` costs the node: every task object, then its JSON.
            let entries: Vec<&TaskEntry> = replica.tasks().values().collect();
            group.bench_with_input(BenchmarkId::new("task_views", tasks), &entries, |b, entries| {
                b.iter(|| replica.task_views_of(entries.iter().copied()).len());
            });
            group.bench_with_input(BenchmarkId::new("task_views_json", tasks), &entries, |b, entries| {
                b.iter(|| replica.live_task_views_json(entries, 0).len());
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
