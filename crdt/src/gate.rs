//! Gates: whether a machine's probe meets a task's hard requirements.

use meshwork_protocol::requirement::format_size;
use meshwork_protocol::{Probe, Requirement};

/// Why a probe does not meet one requirement, in words for people.
pub fn unmet_reason(requirement: &Requirement, probe: &Probe) -> Option<String> {
    let gib = |bytes: u64| format_size(bytes);
    match requirement {
        Requirement::Gpu { memory_bytes_min } => {
            let best = probe.gpus.iter().map(|gpu| gpu.memory_bytes).max();
            match best {
                None => Some("no GPU".to_owned()),
                Some(memory) if memory < *memory_bytes_min => {
                    Some(format!("largest GPU has {} of memory, needs {}", gib(memory), gib(*memory_bytes_min)))
                }
                Some(_) => None,
            }
        }
        Requirement::Memory { bytes_min } => (probe.memory_bytes < *bytes_min)
            .then(|| format!("has {} of memory, needs {}", gib(probe.memory_bytes), gib(*bytes_min))),
        Requirement::Cpus { min } => (probe.cpus < *min).then(|| format!("has {} CPU cores, needs {min}", probe.cpus)),
        Requirement::Disk { bytes_min } => (probe.disk_free_bytes < *bytes_min)
            .then(|| format!("has {} of free disk, needs {}", gib(probe.disk_free_bytes), gib(*bytes_min))),
        Requirement::Tool { name } => (!probe.tools.contains_key(name)).then(|| format!("no tool {name} on PATH")),
        Requirement::Os { name } => (probe.os != *name).then(|| format!("os is {}, needs {name}", probe.os)),
        Requirement::Arch { name } => (probe.arch != *name).then(|| format!("arch is {}, needs {name}", probe.arch)),
        Requirement::Label { name } => (!probe.labels.contains(name)).then(|| format!("no label {name}")),
    }
}

/// Every hard requirement the probe lacks, as `requirement: reason`. Empty means it may run.
pub fn unmet(requirements: &[Requirement], probe: Option<&Probe>) -> Vec<String> {
    requirements
        .iter()
        .filter_map(|requirement| match probe {
            None => Some(format!("{requirement}: the machine has published no probe")),
            Some(probe) => unmet_reason(requirement, probe).map(|reason| format!("{requirement}: {reason}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwork_protocol::probe::Gpu;

    fn workstation() -> Probe {
        let mut probe = Probe {
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 8,
            memory_bytes: 32 << 30,
            disk_free_bytes: 100 << 30,
            gpus: vec![Gpu { model: "RTX".into(), memory_bytes: 24 << 30 }],
            labels: vec!["licensed-ansys".into()],
            ..Probe::default()
        };
        probe.tools.insert("cargo".into(), "cargo 1.95.0".into());
        probe
    }

    #[test]
    fn a_probe_meeting_every_requirement_passes_the_gate() {
        let requirements: Vec<Requirement> = [
            "gpu>=24G",
            "mem>=32G",
            "cpus>=8",
            "disk>=100G",
            "tool:cargo",
            "os=linux",
            "arch=x86_64",
            "label:licensed-ansys",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        assert_eq!(unmet(&requirements, Some(&workstation())), Vec::<String>::new());
    }

    /// A minimum is met at exactly the minimum and above it, and unmet one below it, for every
    /// requirement that names a number.
    #[test]
    fn every_minimum_is_met_at_its_value_and_unmet_just_below() {
        let probe = workstation();
        let exactly = ["gpu>=24G", "mem>=32G", "cpus>=8", "disk>=100G"];
        let above = ["gpu>=23G", "mem>=31G", "cpus>=7", "disk>=99G"];
        let below = ["gpu>=25G", "mem>=33G", "cpus>=9", "disk>=101G"];
        for (met, texts) in [(true, exactly), (true, above), (false, below)] {
            for text in texts {
                let requirement: Requirement = text.parse().unwrap();
                assert_eq!(unmet_reason(&requirement, &probe).is_none(), met, "{text} on the workstation");
            }
        }
    }

    #[test]
    fn each_lacking_requirement_is_named_with_its_reason() {
        let requirements: Vec<Requirement> = ["gpu>=48G", "mem>=64G", "tool:matlab", "os=macos", "label:isolated"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        expect_test::expect![[r#"
            [
                "gpu>=48G: largest GPU has 24G of memory, needs 48G",
                "mem>=64G: has 32G of memory, needs 64G",
                "tool:matlab: no tool matlab on PATH",
                "os=macos: os is linux, needs macos",
                "label:isolated: no label isolated",
            ]
        "#]]
        .assert_debug_eq(&unmet(&requirements, Some(&workstation())));
        assert_eq!(unmet(&requirements[..1], None).len(), 1);
    }
}
