//! A task's plain fields, as the document holds them.

use std::collections::BTreeSet;

use meshwork_protocol::{NodeId, Requirement, Stamp, TaskId};
use serde::{Deserialize, Serialize};

/// The editable and creation-time fields of one task. Status is not here: it is derived by
/// [`crate::resolve::resolve`] from the task's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFields {
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub priority: i64,
    pub labels: Vec<String>,
    pub depends_on: BTreeSet<TaskId>,
    pub requires: Vec<Requirement>,
    pub prefers: Vec<Requirement>,
    pub checks: Vec<String>,
    pub files: Vec<String>,
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub needs_approval: bool,
    pub created_by: NodeId,
    pub created_at: Stamp,
    /// Nodes that created another task under this same id (the tool reports the clash).
    pub id_conflicts: Vec<NodeId>,
}
