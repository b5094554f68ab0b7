//! A task's initial fields as its creator writes them: one JSON scalar (`spec`) in the
//! task's map, so creating a task costs one Automerge operation instead of one per field.
//! Edits write single keys (`title`, `priority`, ...) that take precedence over the spec,
//! and `dep:ID` keys (`true` adds a dependency, `false` removes one).

use serde::{Deserialize, Serialize};

/// Version of [`TaskSpec`], its `v` field.
pub const TASK_SPEC_VERSION: u32 = 1;

/// Every field a task is created with. Missing fields read as their defaults, so a reader
/// accepts older specs; unknown fields are ignored, so a reader accepts newer ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSpec {
    pub v: u32,
    pub title: String,
    pub description: String,
    pub priority: i64,
    pub labels: Vec<String>,
    /// Requirement texts (hard), sorted and deduplicated by the writer.
    pub requires: Vec<String>,
    /// Requirement texts (soft).
    pub prefers: Vec<String>,
    pub checks: Vec<String>,
    pub files: Vec<String>,
    /// Task ids this task waits for, as created; edits add or remove through `dep:ID` keys.
    pub depends_on: Vec<String>,
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub needs_approval: bool,
    /// Node id text of the creator.
    pub created_by: String,
    pub created_wall_ms: u64,
    pub created_logical: u32,
}
