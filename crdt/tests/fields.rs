//! A task's fields: created as one spec, edited key by key, read back edits first.

use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{QueueDoc, Replica, Speaker};
use meshwork_protocol::api::{AddTask, EditTask};
use meshwork_protocol::{AgentName, TaskId};

const NOW_MS: u64 = 1_800_000_000_000;

/// Edits of title, priority, requirements and lease override the creation spec, also for a
/// replica that loads the document afresh; untouched fields keep the spec's values.
#[test]
fn edits_take_precedence_over_the_creation_spec() {
    let key = node_key(1);
    let agent = AgentName::new("agent").unwrap();
    let speaker = Speaker { key: &key, agent: &agent };
    let mut replica = Replica::found(&key, 1, "n", "m", NOW_MS).unwrap().replica;
    let request = AddTask {
        id: Some("T".into()),
        title: "first".into(),
        description: "kept".into(),
        priority: 1,
        requires: vec!["os=linux".into()],
        labels: vec!["x".into()],
        ..AddTask::default()
    };
    replica.add_task(speaker, &request, NOW_MS, 0).unwrap();
    let edit = EditTask {
        title: Some("second".into()),
        priority: Some(-5),
        requires: Some(vec!["cpus>=2".into()]),
        lease_ms: Some(60_000),
        ..EditTask::default()
    };
    replica.edit_task(speaker, &TaskId::new("T").unwrap(), &edit, NOW_MS + 1).unwrap();
    let reloaded = Replica::open(key.node_id(), 2, QueueDoc::load(Some(&replica.doc().save()), &[]).unwrap().0);
    for view in [&replica, &reloaded] {
        let fields = &view.task(&TaskId::new("T").unwrap()).unwrap().fields;
        assert_eq!((fields.title.as_str(), fields.description.as_str(), fields.priority), ("second", "kept", -5));
        assert_eq!(fields.requires.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["cpus>=2"]);
        assert_eq!((fields.lease_ms, fields.labels.clone()), (60_000, vec!["x".to_owned()]));
    }
}
