//! The JSON of a task object, kept between listings.
//!
//! A listing of 20,000 tasks is 13 MB of JSON, and building every task object again for each
//! listing was most of a node's time for `ready --json` (docs/BENCHMARKS.md, "CLI calls").
//! A task object is written in three parts ([`TaskView::write_json_head`], readiness,
//! [`TaskView::write_json_tail`]). The head and tail depend only on the task's own fields and
//! records and on the members' names, so the first listing keeps them in the task's entry and
//! later ones copy them; the readiness, which depends on other tasks, and `stale`, which
//! depends on the clock, are written afresh each time.
//!
//! A kept JSON lives in its [`TaskEntry`](crate::resolve::TaskEntry) and is born empty with
//! it: the replica puts a new entry in place whenever it derives a task again, and derives
//! every task again when members or their names change, so a kept JSON is always that of the
//! entry it sits in. The one place that changes an entry in place empties its cell
//! (`cached_listing_is_the_fresh_listing` in `crdt/tests/views.rs` checks all of this). The
//! memory is at most that of the task objects listed, a fraction of their entries'.
//!
//! [`TaskView::write_json_head`]: meshwork_protocol::api::TaskView::write_json_head
//! [`TaskView::write_json_tail`]: meshwork_protocol::api::TaskView::write_json_tail

use std::sync::OnceLock;

/// A task object's head and tail, once a listing wrote them.
///
/// It is not part of the entry's value: entries compare equal whatever their cells hold, a
/// clone starts empty, and the derived-state cache does not store it.
#[derive(Default)]
pub struct TaskJsonCell(OnceLock<KeptJson>);

/// One task object's head followed by its tail.
struct KeptJson {
    json: Box<[u8]>,
    head_len: usize,
}

impl TaskJsonCell {
    /// The head and the tail, if a listing kept them.
    pub(crate) fn get(&self) -> Option<(&[u8], &[u8])> {
        self.0.get().map(|kept| kept.json.split_at(kept.head_len))
    }

    /// Keeps the head and tail of the entry's task object; the first kept stays.
    pub(crate) fn keep(&self, head: &[u8], tail: &[u8]) {
        self.0.get_or_init(|| KeptJson { json: [head, tail].concat().into_boxed_slice(), head_len: head.len() });
    }

    /// Empties the cell: the entry changed in place.
    pub(crate) fn forget(&mut self) {
        self.0.take();
    }
}

impl Clone for TaskJsonCell {
    fn clone(&self) -> TaskJsonCell {
        TaskJsonCell::default()
    }
}

impl PartialEq for TaskJsonCell {
    fn eq(&self, _other: &TaskJsonCell) -> bool {
        true
    }
}

impl Eq for TaskJsonCell {}

impl std::fmt::Debug for TaskJsonCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.get().map_or(0, |kept| kept.json.len());
        f.debug_tuple("TaskJsonCell").field(&format_args!("{held} bytes")).finish()
    }
}
