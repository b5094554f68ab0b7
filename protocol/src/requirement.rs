//! Hard requirements and soft preferences of a task: `gpu`, `mem>=32G`, `tool:matlab`,
//! `os=linux`, `label:licensed-ansys`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::FIELD_BYTES_MAX;

/// One requirement a machine's probe can meet or lack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// At least one GPU (`gpu`), or one with at least this much memory (`gpu>=24G`).
    Gpu { memory_bytes_min: u64 },
    /// At least this much memory (`mem>=32G`).
    Memory { bytes_min: u64 },
    /// At least this many CPU cores (`cpus>=8`).
    Cpus { min: u32 },
    /// At least this much free disk (`disk>=100G`).
    Disk { bytes_min: u64 },
    /// A tool on PATH (`tool:cargo`).
    Tool { name: String },
    /// The operating system (`os=linux`).
    Os { name: String },
    /// The CPU architecture (`arch=x86_64`).
    Arch { name: String },
    /// A label the user declared for the node (`label:licensed-ansys`).
    Label { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a requirement: {0:?} (write gpu, gpu>=24G, mem>=32G, cpus>=8, disk>=100G, tool:NAME, os=NAME, arch=NAME or label:NAME)"
)]
pub struct RequirementError(pub String);

impl FromStr for Requirement {
    type Err = RequirementError;

    fn from_str(text: &str) -> Result<Requirement, RequirementError> {
        let error = || RequirementError(text.to_owned());
        if text.len() > FIELD_BYTES_MAX {
            return Err(error());
        }
        let word = |name: &str| -> Result<String, RequirementError> {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
            if ok { Ok(name.to_owned()) } else { Err(error()) }
        };
        if text == "gpu" {
            return Ok(Requirement::Gpu { memory_bytes_min: 0 });
        }
        if let Some(size) = text.strip_prefix("gpu>=") {
            return Ok(Requirement::Gpu { memory_bytes_min: parse_size(size).ok_or_else(error)? });
        }
        if let Some(size) = text.strip_prefix("mem>=") {
            return Ok(Requirement::Memory { bytes_min: parse_size(size).ok_or_else(error)? });
        }
        if let Some(size) = text.strip_prefix("disk>=") {
            return Ok(Requirement::Disk { bytes_min: parse_size(size).ok_or_else(error)? });
        }
        if let Some(count) = text.strip_prefix("cpus>=") {
            return Ok(Requirement::Cpus { min: count.parse().map_err(|_| error())? });
        }
        if let Some(name) = text.strip_prefix("tool:") {
            return Ok(Requirement::Tool { name: word(name)? });
        }
        if let Some(name) = text.strip_prefix("label:") {
            return Ok(Requirement::Label { name: word(name)? });
        }
        if let Some(name) = text.strip_prefix("os=") {
            return Ok(Requirement::Os { name: word(&name.to_ascii_lowercase())? });
        }
        if let Some(name) = text.strip_prefix("arch=") {
            return Ok(Requirement::Arch { name: word(name)? });
        }
        Err(error())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Gpu { memory_bytes_min: 0 } => f.write_str("gpu"),
            Requirement::Gpu { memory_bytes_min } => write!(f, "gpu>={}", format_size(*memory_bytes_min)),
            Requirement::Memory { bytes_min } => write!(f, "mem>={}", format_size(*bytes_min)),
            Requirement::Disk { bytes_min } => write!(f, "disk>={}", format_size(*bytes_min)),
            Requirement::Cpus { min } => write!(f, "cpus>={min}"),
            Requirement::Tool { name } => write!(f, "tool:{name}"),
            Requirement::Os { name } => write!(f, "os={name}"),
            Requirement::Arch { name } => write!(f, "arch={name}"),
            Requirement::Label { name } => write!(f, "label:{name}"),
        }
    }
}

// Requirements travel as their text, which is also how users write them.
impl Serialize for Requirement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Requirement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Requirement, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `512M`, `32G`, `1T` (binary units), or a plain number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, multiplier) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        b'G' | b'g' => (&text[..text.len() - 1], 1 << 30),
        b'T' | b't' => (&text[..text.len() - 1], 1 << 40),
        _ => (text, 1),
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// The shortest exact text of a size in [`parse_size`]'s units.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_and_print_back() {
        for text in [
            "gpu",
            "gpu>=24G",
            "mem>=32G",
            "cpus>=8",
            "disk>=100G",
            "tool:matlab",
            "os=linux",
            "arch=x86_64",
            "label:licensed-ansys",
        ] {
            let requirement: Requirement = text.parse().unwrap();
            assert_eq!(requirement.to_string(), text);
        }
        assert_eq!("mem>=1024M".parse::<Requirement>().unwrap().to_string(), "mem>=1G");
    }

    #[test]
    fn malformed_requirements_are_refused() {
        for text in ["", "gpus", "mem>32G", "mem>=lots", "tool:", "os=", "label:a b", "cpus>=-1"] {
            assert!(text.parse::<Requirement>().is_err(), "{text}");
        }
    }
}
