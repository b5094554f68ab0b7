//! The node's wall clock: the one place the daemon reads the time of day.
//!
//! The core (`protocol`, `crdt`) never reads a clock; the daemon passes it this one.

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}
