//! The sans-IO sync engine between two replicas in memory: frames are carried by hand.

use std::collections::VecDeque;

use meshwork_crdt::document::QueueDoc;
use meshwork_crdt::sync::{SyncEngine, SyncInput, SyncOutput};
use meshwork_crdt::test_support::node_key;
use meshwork_crdt::{Replica, Speaker};
use meshwork_protocol::api::{AddTask, TaskStatus};
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::{AgentName, NodeId, NodeKey, TaskId};

const NOW_MS: u64 = 1_800_000_000_000;

struct Side {
    key: NodeKey,
    replica: Replica,
    engine: SyncEngine,
    persisted: Vec<Vec<u8>>,
}

/// A founded by node 1 with node 2 added; node 2 starts from node 1's document.
fn two_sides() -> (Side, Side) {
    let (key_a, key_b) = (node_key(1), node_key(2));
    let mut replica_a = Replica::found(&key_a, 0, "a", "mesh", NOW_MS).unwrap().replica;
    let membership =
        Membership { action: MembershipAction::Add, member: key_b.node_id(), name: "b".into(), roles: vec![] };
    replica_a.change_membership(&key_a, membership, NOW_MS + 1).unwrap();
    let doc_b = QueueDoc::load(Some(&replica_a.doc().save()), &[]).unwrap().0;
    let replica_b = Replica::open(key_b.node_id(), 0, doc_b);
    let side = |key, replica| Side { key, replica, engine: SyncEngine::default(), persisted: Vec::new() };
    (side(key_a, replica_a), side(key_b, replica_b))
}

/// Carries frames between the two sides until neither has anything to send.
fn pump(a: &mut Side, b: &mut Side, first: Vec<(NodeId, SyncOutput)>) -> Vec<String> {
    let mut queue: VecDeque<(NodeId, SyncOutput)> = first.into();
    let mut closed = Vec::new();
    let mut steps = 0;
    while let Some((from, output)) = queue.pop_front() {
        steps += 1;
        assert!(steps < 10_000, "sync did not quiesce");
        let (sender, receiver) = if from == a.key.node_id() { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
        match output {
            SyncOutput::Send { frame, .. } => {
                let input = SyncInput::Frame { peer: sender.key.node_id(), bytes: frame };
                let outputs = receiver.engine.handle(&mut receiver.replica, input, NOW_MS);
                let receiver_id = receiver.key.node_id();
                queue.extend(outputs.into_iter().map(|output| (receiver_id, output)));
            }
            SyncOutput::Persist { changes } => sender.persisted.push(changes),
            SyncOutput::Close { reason, .. } => closed.push(reason),
            SyncOutput::PersistPeerState { .. } | SyncOutput::Changed(_) => {}
        }
    }
    closed
}

fn connect(a: &mut Side, b: &mut Side) -> Vec<(NodeId, SyncOutput)> {
    let mut outputs: Vec<(NodeId, SyncOutput)> = Vec::new();
    let from_a =
        a.engine.handle(&mut a.replica, SyncInput::Connected { peer: b.key.node_id(), saved_state: None }, NOW_MS);
    outputs.extend(from_a.into_iter().map(|output| (a.key.node_id(), output)));
    let from_b =
        b.engine.handle(&mut b.replica, SyncInput::Connected { peer: a.key.node_id(), saved_state: None }, NOW_MS);
    outputs.extend(from_b.into_iter().map(|output| (b.key.node_id(), output)));
    outputs
}

/// Two replicas that made changes apart meet through the engine and end with equal exports;
/// concurrent claims of one task resolve to one holder on both.
#[test]
fn two_replicas_converge_through_the_sync_engine() {
    let (mut a, mut b) = two_sides();
    let agent = AgentName::new("agent").unwrap();
    let task = TaskId::new("WRK-1").unwrap();
    let request = AddTask { id: Some("WRK-1".into()), title: "shared".into(), ..AddTask::default() };
    a.replica.add_task(Speaker { key: &a.key, agent: &agent }, &request, NOW_MS + 10, 1).unwrap();
    let first = connect(&mut a, &mut b);
    assert!(pump(&mut a, &mut b, first).is_empty());
    assert_eq!(b.replica.task(&task).map(|entry| entry.state.status), Some(TaskStatus::Open));
    assert!(!b.persisted.is_empty(), "received changes are handed out for storage");

    // Both claim while not exchanging frames, then push.
    a.replica.claim(Speaker { key: &a.key, agent: &agent }, &task, NOW_MS + 20).unwrap();
    b.replica.claim(Speaker { key: &b.key, agent: &agent }, &task, NOW_MS + 20).unwrap();
    let mut pushes: Vec<(NodeId, SyncOutput)> = Vec::new();
    let from_a = a.engine.handle(&mut a.replica, SyncInput::LocalChange, NOW_MS);
    pushes.extend(from_a.into_iter().map(|output| (a.key.node_id(), output)));
    let from_b = b.engine.handle(&mut b.replica, SyncInput::LocalChange, NOW_MS);
    pushes.extend(from_b.into_iter().map(|output| (b.key.node_id(), output)));
    assert!(pump(&mut a, &mut b, pushes).is_empty());

    assert_eq!(a.replica.doc().heads(), b.replica.doc().heads());
    assert_eq!(a.replica.export_json(), b.replica.export_json());
    let state = &a.replica.task(&task).unwrap().state;
    assert_eq!(state.status, TaskStatus::Claimed);
    assert_eq!(state.lost_claims.len(), 1);
}

/// A garbage frame closes the sender's session, is counted, and leaves the document as it was.
#[test]
fn a_garbage_frame_closes_the_peer_and_changes_nothing() {
    let (mut a, mut b) = two_sides();
    let first = connect(&mut a, &mut b);
    pump(&mut a, &mut b, first);
    let heads = a.replica.doc().heads();
    let outputs = a.engine.handle(
        &mut a.replica,
        SyncInput::Frame { peer: b.key.node_id(), bytes: vec![1, 0, 0xde, 0xad] },
        NOW_MS,
    );
    assert!(matches!(outputs.as_slice(), [SyncOutput::Close { .. }]));
    assert_eq!(a.engine.bad_frames.get(&b.key.node_id()), Some(&1));
    assert_eq!(a.replica.doc().heads(), heads);
}

/// A peer that is not a member is closed at once.
#[test]
fn a_non_member_peer_is_closed_on_connect() {
    let (mut a, _b) = two_sides();
    let outsider = node_key(9).node_id();
    let outputs = a.engine.handle(&mut a.replica, SyncInput::Connected { peer: outsider, saved_state: None }, NOW_MS);
    assert!(matches!(outputs.as_slice(), [SyncOutput::Close { .. }]));
    assert_eq!(a.engine.connected_peers().count(), 0);
}

/// Regression (found by netsim): a member removed here while its session was open kept
/// syncing until the shell happened to close the link. The engine now ends the session at
/// the removal, and a frame the removed node still sends is refused unread.
#[test]
fn a_member_removed_while_connected_is_closed_and_its_frames_refused() {
    let (mut a, mut b) = two_sides();
    let first = connect(&mut a, &mut b);
    assert!(pump(&mut a, &mut b, first).is_empty());
    assert_eq!(a.engine.connected_peers().count(), 1);

    let removed =
        Membership { action: MembershipAction::Remove, member: b.key.node_id(), name: "b".into(), roles: vec![] };
    a.replica.change_membership(&a.key, removed, NOW_MS + 10).unwrap();
    let outputs = a.engine.handle(&mut a.replica, SyncInput::LocalChange, NOW_MS + 10);
    let b_id = b.key.node_id();
    assert!(
        outputs.iter().any(|output| matches!(output, SyncOutput::Close { peer, .. } if *peer == b_id)),
        "{outputs:?}"
    );
    assert!(!outputs.iter().any(|output| matches!(output, SyncOutput::Send { .. })), "nothing more goes to b");
    assert_eq!(a.engine.connected_peers().count(), 0);

    // b, unaware, writes and pushes: a refuses the frame without reading it.
    let agent = AgentName::new("agent").unwrap();
    let request = AddTask { title: "late".into(), ..AddTask::default() };
    b.replica.add_task(Speaker { key: &b.key, agent: &agent }, &request, NOW_MS + 20, 1).unwrap();
    let heads = a.replica.doc().heads();
    let pushes = b.engine.handle(&mut b.replica, SyncInput::LocalChange, NOW_MS + 20);
    for output in pushes {
        if let SyncOutput::Send { frame, .. } = output {
            let answer = a.engine.handle(&mut a.replica, SyncInput::Frame { peer: b_id, bytes: frame }, NOW_MS + 20);
            assert!(matches!(answer.as_slice(), [SyncOutput::Close { .. }]), "{answer:?}");
        }
    }
    assert_eq!(a.replica.doc().heads(), heads, "nothing of b's arrived");
}
