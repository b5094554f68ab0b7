//! What the agents do: a weighted choice of operations over what their node can see, with
//! the contention that makes races (several agents going for the same few tasks).

use meshwork_crdt::Replica;
use meshwork_protocol::api::TaskStatus;
use meshwork_protocol::{AgentName, TaskId};
use rand::RngExt;
use rand_pcg::Pcg64Mcg;

/// One operation of one agent, as the node's API would receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Add {
        after: Vec<TaskId>,
        requires_gpu: bool,
        needs_approval: bool,
        lease_ms: u64,
        priority: i64,
    },
    Claim {
        task: TaskId,
        quorum: bool,
    },
    ClaimNext,
    Renew {
        task: TaskId,
    },
    Progress {
        task: TaskId,
    },
    Handoff {
        task: TaskId,
    },
    Done {
        task: TaskId,
    },
    Fail {
        task: TaskId,
    },
    Release {
        task: TaskId,
    },
    Approve {
        task: TaskId,
    },
    Cancel {
        task: TaskId,
    },
    ReadInbox,
    /// A member that skips its own gate and signs a claim for a task its machine cannot
    /// run: the resolver must refuse the claim everywhere (invariant 6).
    RogueClaim {
        task: TaskId,
    },
    /// Takes over a task whose lease expired by this node's clock.
    TakeOver {
        task: TaskId,
    },
    /// `task edit` of a task's requirements or priority, whatever its state: a claim already
    /// made keeps the terms it names, and a finished task's requirements are refused.
    Edit {
        task: TaskId,
        requires_gpu: Option<bool>,
        priority: Option<i64>,
    },
}

/// The tasks an agent holds, by its node's view.
pub fn held_by(replica: &Replica, agent: &AgentName) -> Vec<TaskId> {
    let node = replica.node();
    replica
        .tasks()
        .values()
        .filter(|entry| {
            entry
                .state
                .holder
                .as_ref()
                .is_some_and(|holder| holder.node == node && holder.agent.as_ref() == Some(agent))
        })
        .map(|entry| entry.fields.id.clone())
        .collect()
}

/// Stale tasks (their holder's lease ended by this node's clock) that this machine may run.
pub fn expired(replica: &Replica, wall_ms: u64) -> Vec<TaskId> {
    replica
        .stale_tasks(wall_ms)
        .into_iter()
        .filter(|entry| replica.unmet_here(entry).is_empty())
        .map(|entry| entry.fields.id.clone())
        .collect()
}

fn pick<T: Clone>(rng: &mut Pcg64Mcg, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())].clone())
}

/// The next operation of `agent` during the workload: anything, races included.
pub fn busy(rng: &mut Pcg64Mcg, replica: &Replica, agent: &AgentName, wall_ms: u64, quorum_percent: u32) -> Op {
    let held = held_by(replica, agent);
    let ready: Vec<TaskId> = replica.ready_tasks().iter().map(|entry| entry.fields.id.clone()).collect();
    let all: Vec<TaskId> = replica.tasks().keys().cloned().collect();
    let roll = rng.random_range(0..100u32);
    if let Some(task) = pick(rng, &held).filter(|_| roll < 40) {
        return match rng.random_range(0..100u32) {
            0..30 => Op::Progress { task },
            30..45 => Op::Renew { task },
            45..55 => Op::Handoff { task },
            55..85 => Op::Done { task },
            85..92 => Op::Fail { task },
            _ => Op::Release { task },
        };
    }
    if all.len() < 3 || roll >= 80 {
        return add(rng, &all);
    }
    match rng.random_range(0..100u32) {
        0..45 => {
            // The first few ready tasks: where agents on several nodes collide.
            let front = &ready[..ready.len().min(3)];
            match pick(rng, front) {
                Some(task) => Op::Claim { task, quorum: rng.random_range(0..100) < quorum_percent },
                None => Op::ClaimNext,
            }
        }
        45..65 => Op::ClaimNext,
        65..72 => pick(rng, &expired(replica, wall_ms)).map_or(Op::ReadInbox, |task| Op::TakeOver { task }),
        72..80 => {
            let waiting: Vec<TaskId> = replica
                .tasks()
                .values()
                .filter(|entry| entry.fields.needs_approval && !entry.state.approved)
                .map(|entry| entry.fields.id.clone())
                .collect();
            pick(rng, &waiting).map_or(Op::ReadInbox, |task| Op::Approve { task })
        }
        80..83 => pick(rng, &all).map_or(Op::ReadInbox, |task| Op::Cancel { task }),
        83..87 => {
            let gated: Vec<TaskId> = replica
                .tasks()
                .values()
                .filter(|entry| !entry.fields.requires.is_empty() && !replica.unmet_here(entry).is_empty())
                .filter(|entry| entry.state.status == TaskStatus::Open)
                .map(|entry| entry.fields.id.clone())
                .collect();
            pick(rng, &gated).map_or(Op::ReadInbox, |task| Op::RogueClaim { task })
        }
        87..94 => pick(rng, &all).map_or(Op::ReadInbox, |task| edit(rng, task)),
        _ => Op::ReadInbox,
    }
}

/// An edit of a task's requirements (a GPU or none), its priority, or both.
fn edit(rng: &mut Pcg64Mcg, task: TaskId) -> Op {
    let (requires_gpu, priority) = match rng.random_range(0..3u32) {
        0 => (Some(rng.random_bool(0.5)), None),
        1 => (None, Some(rng.random_range(0..=3))),
        _ => (Some(rng.random_bool(0.5)), Some(rng.random_range(0..=3))),
    };
    Op::Edit { task, requires_gpu, priority }
}

fn add(rng: &mut Pcg64Mcg, all: &[TaskId]) -> Op {
    let mut after = Vec::new();
    for _ in 0..rng.random_range(0..=2u32) {
        if let Some(task) = pick(rng, all).filter(|task| !after.contains(task)) {
            after.push(task);
        }
    }
    Op::Add {
        after,
        requires_gpu: rng.random_bool(0.15),
        needs_approval: rng.random_bool(0.05),
        // Short leases, so that expiry and takeover happen inside a run.
        lease_ms: rng.random_range(10_000..=40_000),
        priority: rng.random_range(0..=3),
    }
}

/// The next operation of `agent` once the mesh is healed: finish everything that can be
/// finished (liveness), taking over what was abandoned: `claim --next` takes stale tasks too.
pub fn finishing(replica: &Replica, agent: &AgentName, wall_ms: u64) -> Option<Op> {
    if let Some(task) = held_by(replica, agent).first() {
        return Some(Op::Done { task: task.clone() });
    }
    let waiting: Vec<TaskId> = replica
        .tasks()
        .values()
        .filter(|entry| entry.fields.needs_approval && !entry.state.approved && !entry.state.status.is_finished())
        .map(|entry| entry.fields.id.clone())
        .collect();
    if let Some(task) = waiting.first() {
        return Some(Op::Approve { task: task.clone() });
    }
    // As a worker does (`meshwork work`): `claim --next` is the only way it finds work, stale
    // work included, so a stale task left behind means `ready`/`claim --next` missed it.
    replica.ready_tasks_at(wall_ms).iter().any(|entry| replica.unmet_here(entry).is_empty()).then_some(Op::ClaimNext)
}
