//! What a node owes the mesh once records arrived, the same in the node and in netsim: its
//! vote on each pending quorum claim of the touched tasks (invariant 7), one notice to each
//! of its agents whose claim lost (invariant 5), and one to each whose lease ran out while it
//! held a task. Asked again, it writes nothing twice.
//!
//! Duties follow merges and local writes ([`Replica::fulfil_duties_after`]). A lease runs out
//! with no change at all, so the node also keeps a timer: it asks
//! [`Replica::next_lease_expiry_ms`] after every change, and once its clock passes that time
//! calls [`Replica::fulfil_expiry_duties`] with the time it reads.

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

    /// What is due because time passed, not because records arrived: the notice to each of
    /// this node's agents whose held lease ran out before `now_ms` ([`Replica::expired_holdings`]),
    /// with every other duty on those tasks. The node calls it when its lease timer fires
    /// ([`Replica::next_lease_expiry_ms`]); called early or twice, it writes nothing.
    pub fn fulfil_expiry_duties(&mut self, key: &NodeKey, now_ms: u64) -> Duties {
        let tasks = self.expired_holdings(now_ms);
        if tasks.is_empty() {
            return Duties::default();
        }
        self.fulfil_duties(key, &tasks, now_ms)
    }

    /// Signs this node's votes and writes its notices (lost, taken over, counts after all,
    /// lease ran out) for these tasks, one change each. Both are derived from the records, so a duty done once is never due again.
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
