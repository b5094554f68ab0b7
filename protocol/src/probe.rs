//! A node's capability probe: what the machine is and has, as it signs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one machine offers. Every node judges a claim against the probe the claim names, so
/// this is part of the signed record and its encoding is canonical (sorted maps and lists).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Probe {
    /// `linux`, `macos`, `windows` (Rust's `std::env::consts::OS`).
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    /// `x86_64`, `aarch64` (Rust's `std::env::consts::ARCH`).
    pub arch: String,
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free space on the disk that holds the node's home.
    pub disk_free_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// Tools found on PATH: name to version text (empty when the version is unknown).
    pub tools: BTreeMap<String, String>,
    /// Labels the user declared in the node's config (`licensed-ansys`, `isolated`).
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Gpu {
    pub model: String,
    pub memory_bytes: u64,
}

impl Probe {
    /// Puts lists in their canonical order so equal machines sign equal bytes.
    pub fn canonicalize(&mut self) {
        self.labels.sort();
        self.labels.dedup();
        self.gpus.sort_by(|a, b| (&a.model, a.memory_bytes).cmp(&(&b.model, b.memory_bytes)));
    }
}
