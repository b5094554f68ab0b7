//! How a task's plain fields sit in its Automerge map.
//!
//! The creator writes one `spec` scalar (a JSON [`TaskSpec`] of every initial field,
//! dependencies included) in the change that creates the task map: two operations per task.
//! An edit writes single keys (`title`, `description`, `priority`, `requires`, `prefers`,
//! `lease_ms`, `max_attempts`) that take precedence over the spec, each under Automerge's
//! last-writer rule, and one `dep:ID` key per dependency it adds (`true`) or removes
//! (`false`), so concurrent edits of different dependencies merge. The task map has no
//! nested objects: nothing an edit writes can be hidden by a concurrent creation. Reading is
//! one pass over the map and tolerant: a badly written field reads as the spec's value.

use std::collections::BTreeSet;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValueRef, Value, ValueRef};
use meshwork_protocol::limits::{ATTEMPTS_DEFAULT, LEASE_MS_DEFAULT};
use meshwork_protocol::task_spec::{TASK_SPEC_VERSION, TaskSpec};
use meshwork_protocol::{NodeId, Requirement, Stamp, TaskId};

use crate::layout::TopMaps;
use crate::task::TaskFields;

/// The spec a new task's fields are written as.
fn spec_of(fields: &TaskFields) -> TaskSpec {
    TaskSpec {
        v: TASK_SPEC_VERSION,
        title: fields.title.clone(),
        description: fields.description.clone(),
        priority: fields.priority,
        labels: fields.labels.clone(),
        requires: texts(&fields.requires),
        prefers: texts(&fields.prefers),
        checks: fields.checks.clone(),
        files: fields.files.clone(),
        depends_on: fields.depends_on.iter().map(|id| id.as_str().to_owned()).collect(),
        lease_ms: fields.lease_ms,
        max_attempts: fields.max_attempts,
        needs_approval: fields.needs_approval,
        created_by: fields.created_by.to_string(),
        created_wall_ms: fields.created_at.wall_ms,
        created_logical: fields.created_at.logical,
    }
}

/// Key prefix of a dependency edit in a task map.
pub const DEPENDENCY_KEY_PREFIX: &str = "dep:";

/// Creates a task: its map and its spec, in one change.
pub fn write_new_task(tx: &mut Transaction<'_>, maps: &TopMaps, fields: &TaskFields) -> Result<(), AutomergeError> {
    let task = tx.put_object(&maps.tasks, fields.id.as_str(), ObjType::Map)?;
    // A struct of strings and numbers always serializes.
    let spec = serde_json::to_string(&spec_of(fields)).unwrap_or_default();
    assert!(!spec.is_empty(), "a task spec always serializes");
    tx.put(&task, "spec", spec)
}

/// A change to a task's plain fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldEdit {
    pub title: Option<String>,
    pub description: Option<String>,
    pub priority: Option<i64>,
    pub add_dependencies: Vec<TaskId>,
    pub remove_dependencies: Vec<TaskId>,
    pub requires: Option<Vec<Requirement>>,
    pub prefers: Option<Vec<Requirement>>,
    pub lease_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

/// Writes an edit into an existing task's map.
pub fn write_edit(
    tx: &mut Transaction<'_>,
    maps: &TopMaps,
    id: &TaskId,
    edit: &FieldEdit,
) -> Result<(), AutomergeError> {
    let Some((Value::Object(ObjType::Map), task)) = tx.get(&maps.tasks, id.as_str())? else {
        return Err(AutomergeError::InvalidObjId(id.to_string()));
    };
    if let Some(title) = &edit.title {
        tx.put(&task, "title", title.as_str())?;
    }
    if let Some(description) = &edit.description {
        tx.put(&task, "description", description.as_str())?;
    }
    if let Some(priority) = edit.priority {
        tx.put(&task, "priority", priority)?;
    }
    if let Some(requires) = &edit.requires {
        tx.put(&task, "requires", json_list(&texts(requires)))?;
    }
    if let Some(prefers) = &edit.prefers {
        tx.put(&task, "prefers", json_list(&texts(prefers)))?;
    }
    if let Some(lease_ms) = edit.lease_ms {
        tx.put(&task, "lease_ms", lease_ms)?;
    }
    if let Some(max_attempts) = edit.max_attempts {
        tx.put(&task, "max_attempts", u64::from(max_attempts))?;
    }
    for dependency in &edit.add_dependencies {
        tx.put(&task, format!("{DEPENDENCY_KEY_PREFIX}{dependency}"), true)?;
    }
    for dependency in &edit.remove_dependencies {
        tx.put(&task, format!("{DEPENDENCY_KEY_PREFIX}{dependency}"), false)?;
    }
    Ok(())
}

/// The keys of a task map, gathered in one pass (a `get` per key costs a seek each).
#[derive(Debug, Default)]
struct TaskMapEntries {
    spec: Option<String>,
    /// `dep:ID` edits: true adds the dependency, false removes it.
    dependency_edits: Vec<(TaskId, bool)>,
    title: Option<String>,
    description: Option<String>,
    priority: Option<i64>,
    requires: Option<String>,
    prefers: Option<String>,
    lease_ms: Option<u64>,
    max_attempts: Option<u64>,
}

fn read_entries(doc: &Automerge, task: &ObjId) -> TaskMapEntries {
    let mut entries = TaskMapEntries::default();
    for item in doc.map_range(task, ..) {
        let text = || match &item.value {
            ValueRef::Scalar(ScalarValueRef::Str(text)) => Some(text.to_string()),
            _ => None,
        };
        let unsigned = || match &item.value {
            ValueRef::Scalar(ScalarValueRef::Uint(value)) => Some(*value),
            ValueRef::Scalar(ScalarValueRef::Int(value)) => u64::try_from(*value).ok(),
            _ => None,
        };
        if let Some(dependency) = item.key.strip_prefix(DEPENDENCY_KEY_PREFIX) {
            if let (Ok(dependency), ValueRef::Scalar(ScalarValueRef::Boolean(present))) =
                (TaskId::new(dependency), &item.value)
            {
                entries.dependency_edits.push((dependency, *present));
            }
            continue;
        }
        match item.key.as_ref() {
            "spec" => entries.spec = text(),
            "title" => entries.title = text(),
            "description" => entries.description = text(),
            "priority" => {
                entries.priority = match &item.value {
                    ValueRef::Scalar(ScalarValueRef::Int(value)) => Some(*value),
                    _ => None,
                }
            }
            "requires" => entries.requires = text(),
            "prefers" => entries.prefers = text(),
            "lease_ms" => entries.lease_ms = unsigned(),
            "max_attempts" => entries.max_attempts = unsigned(),
            _ => {}
        }
    }
    entries
}

/// The creator a task map names in its spec (for reporting duplicate ids).
pub(crate) fn creator_of(doc: &Automerge, task: &ObjId) -> Option<NodeId> {
    let spec: TaskSpec = serde_json::from_str(&read_entries(doc, task).spec?).ok()?;
    spec.created_by.parse().ok()
}

/// Node ids parsed once per text: a queue has many tasks but few creators, and parsing a
/// PeerId text (base58, protobuf) is costly next to everything else a read does.
#[derive(Debug, Default)]
pub(crate) struct NodeIdCache {
    parsed: std::collections::BTreeMap<String, Option<NodeId>>,
}

impl NodeIdCache {
    fn parse(&mut self, text: &str) -> Option<NodeId> {
        if let Some(parsed) = self.parsed.get(text) {
            return *parsed;
        }
        let parsed = text.parse().ok();
        self.parsed.insert(text.to_owned(), parsed);
        parsed
    }
}

/// Reads a task's fields from its map: edited keys first, then the spec, then defaults.
/// `None` if the map holds no readable spec with its creator (it is not a task).
pub(crate) fn read_fields(doc: &Automerge, task: &ObjId, id: &TaskId, nodes: &mut NodeIdCache) -> Option<TaskFields> {
    let entries = read_entries(doc, task);
    let spec: TaskSpec = serde_json::from_str(entries.spec.as_deref()?).ok()?;
    let created_by = nodes.parse(&spec.created_by)?;
    let list = |edited: Option<String>, initial: Vec<String>| match edited {
        Some(text) => serde_json::from_str(&text).unwrap_or(initial),
        None => initial,
    };
    let requirements = |texts: Vec<String>| texts.iter().filter_map(|text| text.parse::<Requirement>().ok()).collect();
    let mut depends_on: BTreeSet<TaskId> = spec.depends_on.iter().filter_map(|id| TaskId::new(id).ok()).collect();
    for (dependency, present) in entries.dependency_edits {
        if present {
            depends_on.insert(dependency);
        } else {
            depends_on.remove(&dependency);
        }
    }
    let lease_ms = entries.lease_ms.unwrap_or(spec.lease_ms);
    let max_attempts = entries.max_attempts.and_then(|v| u32::try_from(v).ok()).unwrap_or(spec.max_attempts);
    Some(TaskFields {
        id: id.clone(),
        title: entries.title.unwrap_or(spec.title),
        description: entries.description.unwrap_or(spec.description),
        priority: entries.priority.unwrap_or(spec.priority),
        labels: spec.labels,
        depends_on,
        requires: requirements(list(entries.requires, spec.requires)),
        prefers: requirements(list(entries.prefers, spec.prefers)),
        checks: spec.checks,
        files: spec.files,
        lease_ms: if lease_ms > 0 { lease_ms } else { LEASE_MS_DEFAULT },
        max_attempts: if max_attempts > 0 { max_attempts } else { ATTEMPTS_DEFAULT },
        needs_approval: spec.needs_approval,
        created_by,
        created_at: Stamp { wall_ms: spec.created_wall_ms, logical: spec.created_logical },
        id_conflicts: Vec::new(),
    })
}

fn texts(requirements: &[Requirement]) -> Vec<String> {
    requirements.iter().map(ToString::to_string).collect()
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}
