//! Readiness over `depends_on`, staleness of a holder's lease, and the cycle check that
//! guards edits.
//!
//! Readiness by the records alone (`is_ready`) is part of the task view and the export; a
//! task's staleness depends on the reading node's clock, so it is a function of `now_ms`
//! (the core reads no clock) and never part of the export (invariant 1, convergence).

use std::collections::BTreeSet;

use meshwork_protocol::TaskId;
use meshwork_protocol::api::TaskStatus;

/// What readiness needs to know of one task.
#[derive(Debug, Clone, Copy)]
pub struct ReadyInput<'a> {
    pub status: TaskStatus,
    pub depends_on: &'a BTreeSet<TaskId>,
    pub needs_approval: bool,
    pub approved: bool,
}

/// Dependencies of a task that are not done (unknown ids count as not done).
pub fn blocked_by(depends_on: &BTreeSet<TaskId>, status_of: impl Fn(&TaskId) -> Option<TaskStatus>) -> Vec<TaskId> {
    depends_on.iter().filter(|dependency| status_of(dependency) != Some(TaskStatus::Done)).cloned().collect()
}

/// A task is ready when it is open, every dependency is done, and it is approved if it
/// needs approval.
pub fn is_ready(input: ReadyInput<'_>, status_of: impl Fn(&TaskId) -> Option<TaskStatus>) -> bool {
    input.status == TaskStatus::Open && unblocked(input, status_of)
}

/// A claimed task is **stale** at `now_ms` when its holder's lease, as last renewed in the
/// records, ended before `now_ms`: another agent may take it over (a claim of the next
/// generation, which counts once the records show the lease ended before its stamp). At
/// `lease_until_ms` itself the lease still holds, as it does for the resolver and `renew`.
pub fn is_stale(lease_until_ms: u64, now_ms: u64) -> bool {
    lease_until_ms < now_ms
}

/// A task an agent may claim at a moment: ready, or stale (`stale` is [`is_stale`] of its
/// holder) with every dependency done and its approval given.
pub fn is_claimable(input: ReadyInput<'_>, stale: bool, status_of: impl Fn(&TaskId) -> Option<TaskStatus>) -> bool {
    let takeover = stale && input.status == TaskStatus::Claimed;
    (input.status == TaskStatus::Open || takeover) && unblocked(input, status_of)
}

fn unblocked(input: ReadyInput<'_>, status_of: impl Fn(&TaskId) -> Option<TaskStatus>) -> bool {
    (!input.needs_approval || input.approved)
        && input.depends_on.iter().all(|dependency| status_of(dependency) == Some(TaskStatus::Done))
}

/// The cycle that making `task` depend on `new_dependencies` would close, as a path
/// `task -> ... -> task`, or `None`. `edges` gives a task's current dependencies; only the
/// tasks reachable from the new dependencies are visited.
pub fn cycle_through<'a>(
    task: &TaskId,
    new_dependencies: &'a BTreeSet<TaskId>,
    edges: impl Fn(&TaskId) -> Option<&'a BTreeSet<TaskId>>,
) -> Option<Vec<TaskId>> {
    // Depth-first search from each new dependency back to `task`, keeping the path.
    let mut visited: BTreeSet<&TaskId> = BTreeSet::new();
    for start in new_dependencies {
        let mut stack: Vec<(&TaskId, Vec<TaskId>)> = vec![(start, vec![task.clone(), start.clone()])];
        while let Some((current, path)) = stack.pop() {
            if current == task {
                return Some(path);
            }
            if !visited.insert(current) {
                continue;
            }
            for dependency in edges(current).into_iter().flatten() {
                let mut longer = path.clone();
                longer.push(dependency.clone());
                stack.push((dependency, longer));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(text: &str) -> TaskId {
        TaskId::new(text).unwrap()
    }

    fn set(ids: &[&str]) -> BTreeSet<TaskId> {
        ids.iter().map(|text| id(text)).collect()
    }

    #[test]
    fn a_dependency_cycle_is_found_and_named() {
        let mut edges = BTreeMap::new();
        edges.insert(id("a"), set(&["b"]));
        edges.insert(id("b"), set(&["c"]));
        edges.insert(id("c"), set(&[]));
        let lookup = |task: &TaskId| edges.get(task);
        let (to_a, to_c) = (set(&["a"]), set(&["c"]));
        let cycle = cycle_through(&id("c"), &to_a, lookup).unwrap();
        assert_eq!(cycle, vec![id("c"), id("a"), id("b"), id("c")]);
        assert_eq!(cycle_through(&id("a"), &to_a, lookup), Some(vec![id("a"), id("a")]));
        assert_eq!(cycle_through(&id("a"), &to_c, lookup), None);
    }

    #[test]
    fn ready_needs_open_done_dependencies_and_approval() {
        let deps = set(&["x"]);
        let status = |done: bool| move |_: &TaskId| Some(if done { TaskStatus::Done } else { TaskStatus::Open });
        let input = ReadyInput { status: TaskStatus::Open, depends_on: &deps, needs_approval: false, approved: false };
        assert!(is_ready(input, status(true)));
        assert!(!is_ready(input, status(false)));
        assert!(!is_ready(ReadyInput { needs_approval: true, ..input }, status(true)));
        assert!(!is_ready(ReadyInput { status: TaskStatus::Claimed, ..input }, status(true)));
        assert!(!is_ready(input, |_: &TaskId| None));
        assert_eq!(blocked_by(&deps, status(false)), vec![id("x")]);
    }

    #[test]
    fn a_claimed_task_is_claimable_only_once_its_lease_ended_and_while_unblocked() {
        let deps = set(&["x"]);
        let done = |_: &TaskId| Some(TaskStatus::Done);
        let claimed =
            ReadyInput { status: TaskStatus::Claimed, depends_on: &deps, needs_approval: false, approved: false };
        assert!(!is_stale(1_000, 1_000), "the lease holds through its last millisecond");
        assert!(is_stale(1_000, 1_001));
        assert!(is_claimable(claimed, is_stale(1_000, 1_001), done));
        assert!(!is_claimable(claimed, is_stale(1_000, 999), done));
        assert!(!is_claimable(claimed, true, |_: &TaskId| Some(TaskStatus::Open)), "a dependency reopened");
        assert!(!is_claimable(ReadyInput { needs_approval: true, ..claimed }, true, done));
        assert!(!is_claimable(ReadyInput { status: TaskStatus::Done, ..claimed }, true, done));
        assert!(is_claimable(ReadyInput { status: TaskStatus::Open, ..claimed }, false, done));
    }
}
