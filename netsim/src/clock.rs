//! A node's wall clock: simulated time, skewed by a fixed offset and drifting at a fixed rate.
//! It is what the node stamps records with and judges leases by; the simulator's own time is
//! the same for everyone.

/// Wall time at simulated time zero: 2026-06-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_780_272_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeClock {
    /// Fixed offset from true time, in ms (an hour off is ±3,600,000).
    pub skew_ms: i64,
    /// Rate error in parts per million (a cheap crystal is within ±100).
    pub drift_ppm: i64,
}

impl NodeClock {
    pub const TRUE: NodeClock = NodeClock { skew_ms: 0, drift_ppm: 0 };

    /// The node's wall clock, in ms since the Unix epoch, at simulated time `now_us`.
    pub fn wall_ms(&self, now_us: u64) -> u64 {
        let true_ms = i128::from(now_us / 1000);
        let drift = true_ms * i128::from(self.drift_ppm) / 1_000_000;
        let wall = i128::from(EPOCH_MS) + true_ms + drift + i128::from(self.skew_ms);
        u64::try_from(wall).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_is_off_by_its_skew_and_drifts_by_its_rate() {
        let clock = NodeClock { skew_ms: 3_600_000, drift_ppm: 100 };
        assert_eq!(clock.wall_ms(0), EPOCH_MS + 3_600_000);
        // 1,000 s of true time at +100 ppm is 100 ms fast.
        assert_eq!(clock.wall_ms(1_000_000_000), EPOCH_MS + 3_600_000 + 1_000_000 + 100);
    }

    #[test]
    fn a_node_clock_never_runs_backwards() {
        let clock = NodeClock { skew_ms: -5, drift_ppm: -200 };
        let mut last = 0;
        for step in 0..10_000u64 {
            let wall = clock.wall_ms(step * 997);
            assert!(wall >= last);
            last = wall;
        }
    }
}
