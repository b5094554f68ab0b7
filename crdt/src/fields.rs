//! How a task's plain fields sit in its Automerge map.
//!
//! Scalars are Automerge scalars; list fields (labels, requirements, checks, files) are one
//! JSON string each, edited as a whole under Automerge's last-writer rule; `depends_on` is a
//! nested map (`dependency id -> true`) so concurrent additions and removals merge.
//! Reading is tolerant: a field a member wrote badly reads as its default.

use std::collections::BTreeSet;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use meshwork_protocol::limits::{ATTEMPTS_DEFAULT, LEASE_MS_DEFAULT};
use meshwork_protocol::{NodeId, Requirement, Stamp, TaskId};

use crate::document::{TopMaps, read_str};
use crate::task::TaskFields;

/// Creates a task: its map, every field, and its `depends_on` map, in one change.
pub fn write_new_task(tx: &mut Transaction<'_>, maps: &TopMaps, fields: &TaskFields) -> Result<(), AutomergeError> {
    let task = tx.put_object(&maps.tasks, fields.id.as_str(), ObjType::Map)?;
    tx.put(&task, "title", fields.title.as_str())?;
    tx.put(&task, "description", fields.description.as_str())?;
    tx.put(&task, "priority", fields.priority)?;
    tx.put(&task, "labels", json_list(&fields.labels))?;
    tx.put(&task, "requires", json_list(&texts(&fields.requires)))?;
    tx.put(&task, "prefers", json_list(&texts(&fields.prefers)))?;
    tx.put(&task, "checks", json_list(&fields.checks))?;
    tx.put(&task, "files", json_list(&fields.files))?;
    tx.put(&task, "lease_ms", fields.lease_ms)?;
    tx.put(&task, "max_attempts", u64::from(fields.max_attempts))?;
    tx.put(&task, "needs_approval", fields.needs_approval)?;
    tx.put(&task, "created_by", fields.created_by.to_string())?;
    tx.put(&task, "created_wall_ms", fields.created_at.wall_ms)?;
    tx.put(&task, "created_logical", u64::from(fields.created_at.logical))?;
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

/// Reads a task's fields from its map; `None` if the map lacks the creation fields.
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
    let created_by: NodeId = read_str(doc, task, "created_by")?.parse().ok()?;
    let created_at = Stamp {
        wall_ms: uint("created_wall_ms").unwrap_or(0),
        logical: uint("created_logical").and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
    };
    let list = |key: &str| read_json_list(read_str(doc, task, key).as_deref());
    let requirements =
        |key: &str| list(key).iter().filter_map(|text| text.parse::<Requirement>().ok()).collect::<Vec<_>>();
    let depends_on: BTreeSet<TaskId> = match doc.get(task, "depends_on").ok().flatten() {
        Some((Value::Object(ObjType::Map), object)) => {
            doc.keys(&object).filter_map(|key| TaskId::new(&key).ok()).collect()
        }
        _ => BTreeSet::new(),
    };
    Some(TaskFields {
        id: id.clone(),
        title: read_str(doc, task, "title").unwrap_or_default(),
        description: read_str(doc, task, "description").unwrap_or_default(),
        priority: scalar("priority").and_then(|value| value.as_i64()).unwrap_or(0),
        labels: list("labels"),
        depends_on,
        requires: requirements("requires"),
        prefers: requirements("prefers"),
        checks: list("checks"),
        files: list("files"),
        lease_ms: uint("lease_ms").filter(|lease| *lease > 0).unwrap_or(LEASE_MS_DEFAULT),
        max_attempts: uint("max_attempts")
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(ATTEMPTS_DEFAULT),
        needs_approval: scalar("needs_approval").and_then(|value| value.as_bool()).unwrap_or(false),
        created_by,
        created_at,
        id_conflicts: Vec::new(),
    })
}

fn texts(requirements: &[Requirement]) -> Vec<String> {
    requirements.iter().map(ToString::to_string).collect()
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn read_json_list(text: Option<&str>) -> Vec<String> {
    text.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
}
