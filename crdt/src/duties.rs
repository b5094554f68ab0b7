//! What a node owes the mesh once records arrived, the same in the node and in netsim: its
//! vote on each pending quorum claim of the touched tasks (invariant 7), and one notice to
//! each of its agents whose claim lost (invariant 5). Asked again, it writes nothing twice.

use meshwork_protocol::{NodeKey, TaskId};

use crate::document::Touched;
use crate::inbox::Notice;
use crate::ops::AckDue;
use crate::replica::Replica;

/// What [`Replica::fulfil_duties`] wrote: the changes to make durable and then push, in order.
#[derive(Debug, Default)]
pub struct Duties {
    pub changes: Vec<Vec<u8>>,
    pub acks: Vec<AckDue>,
    pub notices: Vec<Notice>,
    /// Duties that could not be written (they are due again at the next merge).
    pub errors: Vec<String>,
}

impl Replica {
    /// [`Replica::fulfil_duties`] for what a change touched: a change of members or probes
    /// resolves every task again (a removal can make claims lose anywhere), so every task.
    pub fn fulfil_duties_after(&mut self, key: &NodeKey, touched: &Touched, now_ms: u64) -> Duties {
        let tasks: Vec<TaskId> = if touched.members || touched.probes || touched.meta {
            self.tasks().keys().cloned().collect()
        } else {
            touched.tasks.iter().cloned().collect()
        };
        self.fulfil_duties(key, &tasks, now_ms)
    }

    /// Signs this node's votes and writes its lost-claim notices for these tasks, one change
    /// each. Both are derived from the records, so a duty done once is never due again.
    pub fn fulfil_duties(&mut self, key: &NodeKey, tasks: &[TaskId], now_ms: u64) -> Duties {
        let mut duties = Duties::default();
        let acks = self.acks_due(tasks);
        if !acks.is_empty() {
            match self.acknowledge(key, &acks, now_ms) {
                Ok(Some(changes)) => {
                    duties.changes.push(changes);
                    duties.acks = acks;
                }
                Ok(None) => {}
                Err(error) => duties
                    .errors
                    .push(format!("could not acknowledge quorum claims: {}", error.to_error_body().message)),
            }
        }
        let notices = self.notices_due(tasks, now_ms);
        match self.write_notices(&notices, now_ms) {
            Ok(Some(changes)) => {
                duties.changes.push(changes);
                duties.notices = notices;
            }
            Ok(None) => {}
            Err(error) => duties.errors.push(format!("could not write lost-claim notices: {error}")),
        }
        duties
    }
}
