//! How a task's plain fields sit in its Automerge map.
//!
//! The creator writes one `spec` scalar (a JSON [`TaskSpec`] of every initial field) and the
//! nested `depends_on` map (`dependency id -> true`, so concurrent additions and removals
//! merge), in the change that creates the task: three operations for a task without
//! dependencies. An edit writes single keys (`title`, `description`, `priority`, `requires`,
//! `prefers`, `lease_ms`, `max_attempts`) that take precedence over the spec, each under
//! Automerge's last-writer rule. Reading is tolerant: a field a member wrote badly reads as
//! the spec's value, then the default.

use std::collections::BTreeSet;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use meshwork_protocol::limits::{ATTEMPTS_DEFAULT, LEASE_MS_DEFAULT};
use meshwork_protocol::task_spec::{TASK_SPEC_VERSION, TaskSpec};
use meshwork_protocol::{NodeId, Requirement, Stamp, TaskId};

use crate::document::{TopMaps, read_str};
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
        lease_ms: fields.lease_ms,
        max_attempts: fields.max_attempts,
        needs_approval: fields.needs_approval,
        created_by: fields.created_by.to_string(),
        created_wall_ms: fields.created_at.wall_ms,
        created_logical: fields.created_at.logical,
    }
}

/// Creates a task: its map, its spec, and its `depends_on` map, in one change.
pub fn write_new_task(tx: &mut Transaction<'_>, maps: &TopMaps, fields: &TaskFields) -> Result<(), AutomergeError> {
    let task = tx.put_object(&maps.tasks, fields.id.as_str(), ObjType::Map)?;
    // A struct of strings and numbers always serializes.
    let spec = serde_json::to_string(&spec_of(fields)).unwrap_or_default();
    assert!(!spec.is_empty(), "a task spec always serializes");
    tx.put(&task, "spec", spec)?;
    let depends_on = tx.put_object(&task, "depends_on", ObjType::Map)?;
    for dependency in &fields.depends_on {
        tx.put(&depends_on, dependency.as_str(), true)?;
    }
    Ok(())
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
    if !edit.add_dependencies.is_empty() || !edit.remove_dependencies.is_empty() {
        let depends_on = match tx.get(&task, "depends_on")? {
            Some((Value::Object(ObjType::Map), object)) => object,
            // The creator always makes this map; a task without one was written by hand.
            _ => tx.put_object(&task, "depends_on", ObjType::Map)?,
        };
        for dependency in &edit.add_dependencies {
            tx.put(&depends_on, dependency.as_str(), true)?;
        }
        for dependency in &edit.remove_dependencies {
            tx.delete(&depends_on, dependency.as_str())?;
        }
    }
    Ok(())
}

/// Reads a task's fields from its map: edited keys first, then the spec, then defaults.
/// `None` if the map holds no readable spec with its creator (it is not a task).
pub(crate) fn read_fields(doc: &Automerge, task: &ObjId, id: &TaskId) -> Option<TaskFields> {
    let scalar = |key: &str| -> Option<ScalarValue> {
        match doc.get(task, key).ok()?? {
            (Value::Scalar(value), _) => Some(value.into_owned()),
            _ => None,
        }
    };
    let uint = |key: &str| {
        scalar(key).and_then(|value| value.as_u64().or_else(|| value.as_i64().and_then(|v| u64::try_from(v).ok())))
    };
    let spec: TaskSpec = serde_json::from_str(&read_str(doc, task, "spec")?).ok()?;
    let created_by: NodeId = spec.created_by.parse().ok()?;
    let list = |key: &str, initial: &[String]| match read_str(doc, task, key) {
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|_| initial.to_vec()),
        None => initial.to_vec(),
    };
    let requirements = |texts: Vec<String>| texts.iter().filter_map(|text| text.parse::<Requirement>().ok()).collect();
    let depends_on: BTreeSet<TaskId> = match doc.get(task, "depends_on").ok().flatten() {
        Some((Value::Object(ObjType::Map), object)) => {
            doc.keys(&object).filter_map(|key| TaskId::new(&key).ok()).collect()
        }
        _ => BTreeSet::new(),
    };
    let lease_ms = uint("lease_ms").unwrap_or(spec.lease_ms);
    let max_attempts = uint("max_attempts").and_then(|v| u32::try_from(v).ok()).unwrap_or(spec.max_attempts);
    Some(TaskFields {
        id: id.clone(),
        title: read_str(doc, task, "title").unwrap_or(spec.title),
        description: read_str(doc, task, "description").unwrap_or(spec.description),
        priority: scalar("priority").and_then(|value| value.as_i64()).unwrap_or(spec.priority),
        labels: spec.labels,
        depends_on,
        requires: requirements(list("requires", &spec.requires)),
        prefers: requirements(list("prefers", &spec.prefers)),
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
