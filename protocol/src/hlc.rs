//! The hybrid logical clock: a stamp that never runs backwards and respects causality.
//!
//! The clock is pure: the caller passes the wall time in. A stamp orders by wall time, then
//! by its logical counter. A node's clock decides only *when* it tries something (a lease
//! takeover); what the records mean never depends on the clock of the node reading them.

use serde::{Deserialize, Serialize};

/// A point in hybrid logical time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, as the stamping node's clock (or a causally earlier
    /// stamp it had seen) put it.
    pub wall_ms: u64,
    /// Orders stamps that share a wall time.
    pub logical: u32,
}

/// Remote stamps further ahead of the local wall clock than this are not folded into the
/// local clock, so one node with a wildly wrong clock cannot drag every other node's clock
/// forward. The record itself is still kept and resolved like any other.
pub const HLC_DRIFT_MS_MAX: u64 = 24 * 3600 * 1000;

/// A node's hybrid logical clock.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: Stamp,
}

impl Hlc {
    /// A clock whose next stamp is after `stamp` (the highest stamp this node ever issued,
    /// as read back from its records after a restart).
    pub fn starting_after(stamp: Stamp) -> Hlc {
        Hlc { last: stamp }
    }

    pub fn last(&self) -> Stamp {
        self.last
    }

    /// A fresh stamp, strictly after every stamp this clock issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Stamp {
        let next = if wall_ms > self.last.wall_ms { Stamp { wall_ms, logical: 0 } } else { successor(self.last) };
        assert!(next > self.last, "hlc must move forward");
        self.last = next;
        next
    }

    /// Folds a stamp seen in a remote record into the clock. Returns false (and changes
    /// nothing) for a stamp more than [`HLC_DRIFT_MS_MAX`] ahead of `wall_ms`.
    pub fn observe(&mut self, remote: Stamp, wall_ms: u64) -> bool {
        if remote.wall_ms > wall_ms.saturating_add(HLC_DRIFT_MS_MAX) {
            return false;
        }
        if remote > self.last {
            self.last = remote;
        }
        true
    }
}

fn successor(stamp: Stamp) -> Stamp {
    match stamp.logical.checked_add(1) {
        Some(logical) => Stamp { wall_ms: stamp.wall_ms, logical },
        None => Stamp { wall_ms: stamp.wall_ms.saturating_add(1), logical: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the wall clock does (jumps back, stalls), stamps strictly increase, and a
        /// stamp issued after observing a remote stamp is after it.
        #[test]
        fn stamps_never_run_backwards(
            events in proptest::collection::vec((any::<bool>(), 0u64..10_000, 0u64..10_000, any::<u32>()), 1..200)
        ) {
            let mut clock = Hlc::default();
            let mut previous = Stamp::default();
            for (is_observe, wall_ms, remote_wall, remote_logical) in events {
                if is_observe {
                    let remote = Stamp { wall_ms: remote_wall, logical: remote_logical };
                    clock.observe(remote, wall_ms);
                    let next = clock.now(wall_ms);
                    prop_assert!(next > remote);
                    prop_assert!(next > previous);
                    previous = next;
                } else {
                    let next = clock.now(wall_ms);
                    prop_assert!(next > previous);
                    previous = next;
                }
            }
        }
    }

    #[test]
    fn far_future_remote_stamps_are_not_observed() {
        let mut clock = Hlc::default();
        let now = 1_000_000;
        assert!(!clock.observe(Stamp { wall_ms: now + HLC_DRIFT_MS_MAX + 1, logical: 0 }, now));
        assert_eq!(clock.now(now), Stamp { wall_ms: now, logical: 0 });
    }

    #[test]
    fn logical_counter_overflow_moves_wall_time() {
        let mut clock = Hlc::starting_after(Stamp { wall_ms: 5, logical: u32::MAX });
        assert_eq!(clock.now(1), Stamp { wall_ms: 6, logical: 0 });
    }
}
