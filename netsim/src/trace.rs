//! The trace of a run: every event, as one line, hashed as it happens. The hash is the
//! run's fingerprint (the same seed gives the same hash); the lines are kept only when a
//! run is replayed to be read (`MESHWORK_SEED`).

use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct Trace {
    hasher: Sha256,
    lines: Option<Vec<String>>,
    events: u64,
}

impl Trace {
    /// A trace that keeps its lines when `keep_lines` is set.
    pub fn new(keep_lines: bool) -> Trace {
        Trace { hasher: Sha256::new(), lines: keep_lines.then(Vec::new), events: 0 }
    }

    /// Records one line at simulated time `at_us`.
    pub fn line(&mut self, at_us: u64, text: &str) {
        self.events += 1;
        self.hasher.update(at_us.to_be_bytes());
        self.hasher.update(text.as_bytes());
        self.hasher.update([b'\n']);
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>10.3}s  {text}", at_us as f64 / 1e6));
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The lines kept so far (empty unless verbose).
    pub fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or_default()
    }

    /// The hash of every line so far, as 16 hex digits.
    pub fn hash(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest[..8].iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
