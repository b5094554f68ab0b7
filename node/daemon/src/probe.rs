//! The machine capability probe: what this machine is and has, gathered into the [`Probe`]
//! the node signs and publishes (DESIGN.md, "Capabilities and gates").
//!
//! Everything here blocks: it reads the OS through sysinfo and runs `TOOL --version` for each
//! tool found on PATH. Every command runs under a timeout, the tools each on a thread of their
//! own, so one probe takes about as long as its slowest command and never longer than the
//! largest timeout below. Async callers run it under `tokio::task::spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use meshwork_protocol::Probe;
use meshwork_protocol::probe::Gpu;
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};
use tracing::{debug, warn};

/// The tools looked for on PATH when the node's config names none: version control, language
/// toolchains, containers, GPU tooling and coding agents. Tools that do not answer `--version`
/// (or start something heavy when asked) stay out; a user names them in the config instead.
pub(crate) const DEFAULT_TOOLS: &[&str] = &[
    "git",
    "gh",
    "cargo",
    "rustc",
    "rustup",
    "python3",
    "python",
    "uv",
    "node",
    "npm",
    "pnpm",
    "yarn",
    "bun",
    "deno",
    "go",
    "java",
    "javac",
    "mvn",
    "gcc",
    "g++",
    "clang",
    "make",
    "cmake",
    "ninja",
    "docker",
    "podman",
    "kubectl",
    "nvidia-smi",
    "jq",
    "rg",
    "claude",
    "codex",
    "gemini",
    "aider",
];

/// How long one `TOOL --version` may run before it is killed and its version left empty.
const TOOL_VERSION_TIMEOUT_MS: u64 = 2_000;
/// How long the `nvidia-smi` query may run. Longer than a tool's version: without persistence
/// mode the driver initializes every GPU on each call, which takes seconds on large machines,
/// and a GPU machine that reports no GPU would be refused every GPU task.
const NVIDIA_SMI_TIMEOUT_MS: u64 = 5_000;
/// How often a running command is checked for exit.
const COMMAND_POLL_MS: u64 = 10;
/// How much of a command's stdout and of its stderr is read; only the first line is kept.
const COMMAND_OUTPUT_BYTES_MAX: u64 = 16 * 1024;
/// The longest text kept for one field taken from the OS or a command (a version, a model).
const TEXT_BYTES_MAX: usize = 128;
/// Labels and tool names are 1 to this many bytes.
const NAME_BYTES_MAX: usize = 64;
const LABELS_MAX: usize = 64;
/// At most this many tools are looked for, each on a thread of its own.
const TOOLS_MAX: usize = 64;
const GPUS_MAX: usize = 64;
const BYTES_PER_MIB: u64 = 1024 * 1024;
#[cfg(test)]
const BYTES_PER_GIB: u64 = 1024 * 1024 * 1024;

/// What to probe besides the machine itself: the node's config.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeConfig {
    /// Labels the user declares; invalid ones are skipped with a warning.
    pub labels: Vec<String>,
    /// The node's home; the probe reports the free space of the disk that holds it.
    pub home: PathBuf,
    /// Tool names to look for on PATH, usually [`DEFAULT_TOOLS`] plus the user's own.
    pub tools: Vec<String>,
}

/// Probes this machine: OS, kernel, arch, hostname, CPU, memory, free disk space under
/// `config.home`, GPUs (through `nvidia-smi` when it is on PATH), the configured tools found on
/// PATH with their versions, and the configured labels. The result is canonical.
///
/// Blocks for up to a few seconds (see the module docs); never fails: what cannot be read is
/// left empty or zero and logged.
pub(crate) fn probe_machine(config: &ProbeConfig) -> Probe {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let tool_names = valid_tool_names(&config.tools);
    let mut probe = Probe {
        os: std::env::consts::OS.to_owned(),
        os_version: os_text(System::os_version(), "os version"),
        kernel: os_text(System::kernel_version(), "kernel version"),
        arch: std::env::consts::ARCH.to_owned(),
        hostname: os_text(System::host_name(), "hostname"),
        labels: valid_labels(&config.labels),
        ..Probe::default()
    };
    // The tools run in the background while this thread reads the GPUs and the OS, so the
    // probe takes as long as the slowest of them rather than their sum.
    probe.tools = thread::scope(|scope| {
        let pending_tools = spawn_tool_versions(scope, &tool_names, &path_var);
        probe.gpus = probe_gpus(&path_var);
        probe_cpus_and_memory(&mut probe);
        probe.disk_free_bytes = disk_free_bytes(&config.home);
        join_tool_versions(pending_tools)
    });
    probe.canonicalize();
    probe
}

/// A text field read from the OS, or empty (logged) when the OS does not tell.
fn os_text(result: Result<String, sysinfo::Error>, what: &str) -> String {
    match result {
        Ok(text) => clean_text(&text),
        Err(error) => {
            debug!(%error, "could not read the {what}");
            String::new()
        }
    }
}

/// CPU model, logical CPU count and total memory. Falls back to the standard library's CPU
/// count (and no model or memory) when sysinfo cannot read the OS.
fn probe_cpus_and_memory(probe: &mut Probe) {
    let fallback_cpus = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mut system = match System::new() {
        Ok(system) => system,
        Err(error) => {
            warn!(%error, "could not read the cpu and memory of this machine");
            probe.cpus = u32::try_from(fallback_cpus).unwrap_or(u32::MAX);
            return;
        }
    };
    system.refresh_cpu_list(CpuRefreshKind::nothing());
    system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let cpus = system.cpus();
    // Some ARM machines report no brand; the vendor is the best model there is then.
    probe.cpu_model = cpus
        .first()
        .map(|cpu| clean_text(if cpu.brand().trim().is_empty() { cpu.vendor_id() } else { cpu.brand() }))
        .unwrap_or_default();
    let cpu_count = if cpus.is_empty() { fallback_cpus } else { cpus.len() };
    probe.cpus = u32::try_from(cpu_count).unwrap_or(u32::MAX);
    probe.memory_bytes = system.total_memory();
}

/// Free space on the disk that holds `home`. The home may not exist yet on a first start, so
/// its nearest existing ancestor stands in for it.
fn disk_free_bytes(home: &Path) -> u64 {
    let home = home.ancestors().find_map(|path| path.canonicalize().ok()).unwrap_or_else(|| home.to_owned());
    let disks = match Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage()) {
        Ok(disks) => disks,
        Err(error) => {
            warn!(%error, "could not list the disks of this machine");
            return 0;
        }
    };
    let mounts: Vec<(&Path, u64)> = disks.iter().map(|disk| (disk.mount_point(), disk.available_space())).collect();
    free_bytes_of_longest_mount(&home, &mounts)
}

/// The free space of the mount point that is the longest prefix of `path`, or 0 when none is.
fn free_bytes_of_longest_mount(path: &Path, mounts: &[(&Path, u64)]) -> u64 {
    mounts
        .iter()
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.components().count())
        .map_or(0, |(_, free_bytes)| *free_bytes)
}

/// GPUs as `nvidia-smi` lists them; none when it is absent, fails or times out.
fn probe_gpus(path_var: &OsStr) -> Vec<Gpu> {
    let Some(nvidia_smi) = find_executable("nvidia-smi", path_var) else {
        return Vec::new();
    };
    let args = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"];
    let timeout = Duration::from_millis(NVIDIA_SMI_TIMEOUT_MS);
    match run_with_timeout(&nvidia_smi, &args, timeout) {
        Some(output) => parse_nvidia_smi(&output.stdout),
        None => {
            warn!(path = %nvidia_smi.display(), "nvidia-smi failed or timed out; reporting no gpu");
            Vec::new()
        }
    }
}

/// Parses `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`: one
/// `model, MiB` line per GPU. Lines that do not fit exactly (errors, `[N/A]`, extra fields)
/// are skipped.
fn parse_nvidia_smi(output: &str) -> Vec<Gpu> {
    output.lines().filter_map(parse_nvidia_smi_line).take(GPUS_MAX).collect()
}

fn parse_nvidia_smi_line(line: &str) -> Option<Gpu> {
    let mut fields = line.split(',');
    let (model, memory_mib) = (fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let memory_mib: u64 = memory_mib.trim().parse().ok()?;
    let model = clean_text(model);
    if model.is_empty() {
        return None;
    }
    Some(Gpu { model, memory_bytes: memory_mib.saturating_mul(BYTES_PER_MIB) })
}

/// The configured labels that are valid, in order; the others are skipped with a warning.
fn valid_labels(labels: &[String]) -> Vec<String> {
    let mut valid = Vec::new();
    for label in labels {
        if !is_valid_name(label, false) {
            warn!(
                label = %label.escape_debug(),
                "skipping invalid label: use 1 to 64 bytes of letters, digits, '.', '_' and '-'"
            );
        } else if valid.len() == LABELS_MAX {
            warn!(label = %label, "skipping label: a node declares at most {LABELS_MAX} labels");
        } else {
            valid.push(label.clone());
        }
    }
    valid
}

/// The configured tool names that are valid, without duplicates. A name is never a path, so
/// the search stays inside the PATH directories.
fn valid_tool_names(tools: &[String]) -> Vec<String> {
    let mut valid = BTreeSet::new();
    for tool in tools {
        if !is_valid_name(tool, true) {
            warn!(
                tool = %tool.escape_debug(),
                "skipping invalid tool name: use 1 to 64 bytes of letters, digits, '.', '_', '+' and '-'"
            );
        } else if valid.len() == TOOLS_MAX && !valid.contains(tool) {
            warn!(tool = %tool, "skipping tool: a node looks for at most {TOOLS_MAX} tools");
        } else {
            valid.insert(tool.clone());
        }
    }
    valid.into_iter().collect()
}

/// 1 to [`NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_`, `-` (and `+` for tools,
/// as in `g++`), and not `.` or `..`.
fn is_valid_name(name: &str, allow_plus: bool) -> bool {
    let allowed =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') || (allow_plus && byte == b'+');
    (1..=NAME_BYTES_MAX).contains(&name.len()) && name != "." && name != ".." && name.bytes().all(allowed)
}

/// Starts one thread per tool found on PATH that asks the tool for its version. A tool whose
/// thread cannot start is still reported, with an empty version.
fn spawn_tool_versions<'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    tool_names: &[String],
    path_var: &OsStr,
) -> Vec<(String, Option<thread::ScopedJoinHandle<'scope, String>>)> {
    let mut pending = Vec::new();
    for name in tool_names {
        let Some(path) = find_executable(name, path_var) else {
            continue;
        };
        let args = version_args(name);
        let timeout = Duration::from_millis(TOOL_VERSION_TIMEOUT_MS);
        let spawned = thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn_scoped(scope, move || tool_version(&path, args, timeout));
        if let Err(error) = &spawned {
            warn!(%error, tool = %name, "could not start a thread to read the tool's version");
        }
        pending.push((name.clone(), spawned.ok()));
    }
    pending
}

fn join_tool_versions(
    pending: Vec<(String, Option<thread::ScopedJoinHandle<'_, String>>)>,
) -> BTreeMap<String, String> {
    let join = |handle: Option<thread::ScopedJoinHandle<'_, String>>| handle.and_then(|handle| handle.join().ok());
    pending.into_iter().map(|(name, handle)| (name, join(handle).unwrap_or_default())).collect()
}

/// The arguments that make a tool print its version; most take `--version`.
fn version_args(tool: &str) -> &'static [&'static str] {
    match tool {
        "go" => &["version"],
        // `java --version` only exists since Java 9; `-version` works on all (on stderr).
        "java" | "javac" => &["-version"],
        "kubectl" => &["version", "--client"],
        _ => &["--version"],
    }
}

/// The first line a tool prints when asked for its version (stdout, else stderr), or empty
/// when it fails or times out.
fn tool_version(program: &Path, args: &[&str], timeout: Duration) -> String {
    let Some(output) = run_with_timeout(program, args, timeout) else {
        debug!(path = %program.display(), "no version: the tool failed or timed out");
        return String::new();
    };
    let line = version_line(&output.stdout);
    if line.is_empty() { version_line(&output.stderr) } else { line }
}

/// The first non-empty line of a command's output, trimmed, without control characters, and
/// cut to [`TEXT_BYTES_MAX`] bytes.
fn version_line(output: &str) -> String {
    output.lines().map(clean_text).find(|line| !line.is_empty()).unwrap_or_default()
}

/// `text` as a field worth signing and showing: terminal colour codes are dropped, other
/// control characters become spaces, the ends are trimmed and the rest is cut to
/// [`TEXT_BYTES_MAX`] bytes on a character boundary.
fn clean_text(text: &str) -> String {
    let printable: String =
        without_escape_sequences(text).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let printable = printable.trim();
    let mut end = printable.len().min(TEXT_BYTES_MAX);
    while !printable.is_char_boundary(end) {
        end -= 1;
    }
    printable[..end].trim_end().to_owned()
}

/// `text` without ANSI escape sequences (`ESC [ ... final`), which some tools (Maven) print
/// even when their output is not a terminal. A lone ESC is dropped.
fn without_escape_sequences(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            kept.push(c);
        } else if chars.next_if_eq(&'[').is_some() {
            // Parameters and intermediates run up to the final byte, '@' to '~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    kept
}

/// The executable `name` in the first PATH directory that holds one. Relative and empty
/// PATH entries are skipped: they name the daemon's working directory, and the probe runs
/// what it finds.
fn find_executable(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .flat_map(|dir| executable_names(name).into_iter().map(move |file_name| dir.join(file_name)))
        .find(|candidate| is_executable(candidate))
}

#[cfg(not(windows))]
fn executable_names(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

#[cfg(windows)]
fn executable_names(name: &str) -> Vec<String> {
    ["exe", "cmd", "bat", "com"].iter().map(|extension| format!("{name}.{extension}")).collect()
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|metadata| metadata.is_file())
}

/// What a command that exited successfully printed (each stream cut to
/// [`COMMAND_OUTPUT_BYTES_MAX`] bytes, decoded lossily).
#[derive(Debug)]
struct CommandOutput {
    stdout: String,
    stderr: String,
}

/// Runs `program` with no input and returns its output when it exits successfully within
/// `timeout`. Otherwise it is killed, and the call returns `None` within about `timeout`.
fn run_with_timeout(program: &Path, args: &[&str], timeout: Duration) -> Option<CommandOutput> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .inspect_err(|error| debug!(%error, path = %program.display(), "could not run"))
        .ok()?;
    let Some(output_receiver) = read_output_in_background(&mut child) else {
        kill_and_reap(&mut child);
        return None;
    };
    let status = wait_until(&mut child, deadline)?;
    // A child the program left behind may hold the pipes open after it exits; the deadline
    // bounds the wait for them too (the reader thread then ends when that child does).
    let remaining = deadline.saturating_duration_since(Instant::now());
    let output = output_receiver.recv_timeout(remaining).ok()?;
    status.success().then_some(output)
}

/// Reads the child's stdout and then its stderr on a thread of its own, so a full pipe never
/// stalls the child while this thread waits for it.
fn read_output_in_background(child: &mut Child) -> Option<mpsc::Receiver<CommandOutput>> {
    let mut stdout = child.stdout.take()?;
    let mut stderr = child.stderr.take()?;
    let (sender, receiver) = mpsc::channel();
    let reader = move || {
        let stdout = read_capped(&mut stdout);
        let stderr = read_capped(&mut stderr);
        // The receiver is gone when the command timed out; nobody needs the output then.
        let _ = sender.send(CommandOutput { stdout, stderr });
    };
    let spawned = thread::Builder::new().name("probe-output".to_owned()).spawn(reader);
    spawned.inspect_err(|error| warn!(%error, "could not start a thread to read a command's output")).ok()?;
    Some(receiver)
}

fn read_capped(reader: &mut impl Read) -> String {
    let mut bytes = Vec::new();
    // A read error keeps what was read before it; a version line needs nothing more.
    let _ = reader.take(COMMAND_OUTPUT_BYTES_MAX).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The child's exit status, or `None` after killing it when it outlives `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(COMMAND_POLL_MS));
            }
            Ok(None) | Err(_) => {
                kill_and_reap(child);
                return None;
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    // Either fails only when the child is already gone, which is what is wanted.
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(model: &str, memory_bytes: u64) -> Gpu {
        Gpu { model: model.to_owned(), memory_bytes }
    }

    #[test]
    fn nvidia_smi_lines_become_gpus_with_memory_in_bytes() {
        // Goal: the csv,noheader,nounits format gives one GPU per line, MiB turned into bytes.
        let output = "NVIDIA GeForce RTX 4090, 24564\nNVIDIA A100-SXM4-80GB, 81920\n";
        let gpus = parse_nvidia_smi(output);
        let expected = vec![
            gpu("NVIDIA GeForce RTX 4090", 24_564 * BYTES_PER_MIB),
            gpu("NVIDIA A100-SXM4-80GB", 81_920 * BYTES_PER_MIB),
        ];
        assert_eq!(gpus, expected);
    }

    #[test]
    fn garbage_nvidia_smi_output_yields_no_gpus() {
        // Goal: error text, blank lines and half lines never become GPUs.
        let outputs = [
            "",
            "\n\n",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            "Failed to initialize NVML: Driver/library version mismatch",
            "Tesla T4, 15360, extra",
            ", 24564",
            "Tesla T4, [N/A]",
            "Tesla T4, -1",
            "Tesla T4, 99999999999999999999999",
            "\u{1b}[31m,\u{0}",
        ];
        for output in outputs {
            assert_eq!(parse_nvidia_smi(output), Vec::new(), "output {output:?}");
        }
    }

    #[test]
    fn nvidia_smi_keeps_good_lines_among_bad_ones() {
        // Goal: one unreadable line does not hide the other GPUs; spaces and CRLF are tolerated.
        let output = "Tesla T4, [N/A]\r\n  Tesla T4 , 15360 \r\nbad line\nNVIDIA L4, 1024\n";
        let expected = vec![gpu("Tesla T4", 15_360 * BYTES_PER_MIB), gpu("NVIDIA L4", BYTES_PER_GIB)];
        assert_eq!(parse_nvidia_smi(output), expected);
    }

    #[test]
    fn version_line_is_the_first_non_empty_line_trimmed() {
        // Goal: leading blank lines and surrounding spaces are dropped, later lines ignored.
        let output = "\n   \n  cargo 1.95.0 (abc 2026-04-01)  \nsecond line\n";
        assert_eq!(version_line(output), "cargo 1.95.0 (abc 2026-04-01)");
        assert_eq!(version_line("v22.1.0\r\n"), "v22.1.0");
    }

    #[test]
    fn version_line_of_empty_output_is_empty() {
        // Goal: nothing printed gives the empty version, not a panic.
        assert_eq!(version_line(""), "");
        assert_eq!(version_line("\n \t\n"), "");
    }

    #[test]
    fn version_line_is_capped_at_128_bytes_on_a_char_boundary() {
        // Goal: a long line is cut to at most 128 bytes without splitting a character.
        let long_ascii = "x".repeat(500);
        assert_eq!(version_line(&long_ascii), "x".repeat(128));
        let long_accented = "é".repeat(100); // 2 bytes each: 64 fit exactly.
        assert_eq!(version_line(&long_accented), "é".repeat(64));
        let shifted = format!("a{}", "é".repeat(100)); // 1 + 2 * 63 = 127 bytes fit.
        assert_eq!(version_line(&shifted).len(), 127);
    }

    #[test]
    fn version_line_drops_colour_codes_and_control_characters() {
        // Goal: escape codes and NULs from a tool never reach the signed probe or the terminal.
        let maven = "\u{1b}[1mApache Maven 3.8.7 \u{1b}[m\n";
        assert_eq!(version_line(maven), "Apache Maven 3.8.7");
        assert_eq!(version_line("\u{1b}[38;5;12mv1\u{1b}"), "v1");
        assert_eq!(version_line("\u{1b}(tool\u{0}\t1.0\u{7f}"), "(tool  1.0");
    }

    #[test]
    fn invalid_labels_are_skipped_and_valid_ones_kept() {
        // Goal: only 1-64 bytes of letters, digits, '.', '_', '-' pass, in their order.
        let labels = ["licensed-ansys", "", "has space", "site.paris_2", "é", &"a".repeat(65), &"b".repeat(64), "a/b"];
        let labels: Vec<String> = labels.iter().map(|label| (*label).to_owned()).collect();
        let expected = vec!["licensed-ansys".to_owned(), "site.paris_2".to_owned(), "b".repeat(64)];
        assert_eq!(valid_labels(&labels), expected);
    }

    #[test]
    fn tool_names_are_never_paths_and_are_deduplicated() {
        // Goal: a configured name cannot leave the PATH directories; `g++` stays allowed.
        let tools = ["git", "../bin/sh", "/bin/sh", "..", "g++", "git", "a b"];
        let tools: Vec<String> = tools.iter().map(|tool| (*tool).to_owned()).collect();
        assert_eq!(valid_tool_names(&tools), vec!["g++".to_owned(), "git".to_owned()]);
    }

    #[test]
    fn home_disk_is_the_longest_mount_point_prefix() {
        // Goal: the most specific mount wins, by path components rather than by text.
        let mounts = [(Path::new("/"), 1), (Path::new("/home"), 2), (Path::new("/home/al"), 3), (Path::new("/ho"), 4)];
        assert_eq!(free_bytes_of_longest_mount(Path::new("/home/al/.local/share"), &mounts), 3);
        assert_eq!(free_bytes_of_longest_mount(Path::new("/home/bo"), &mounts), 2);
        assert_eq!(free_bytes_of_longest_mount(Path::new("/house"), &mounts), 1);
        assert_eq!(free_bytes_of_longest_mount(Path::new("relative"), &mounts), 0);
    }

    #[cfg(unix)]
    fn write_script(dir: &Path, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\necho 'mytool 1.2.3'\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn path_search_finds_the_first_executable_and_skips_plain_files() {
        // Goal: a non-executable file or a directory of the name is passed over; PATH order holds.
        let plain = tempfile::tempdir().unwrap();
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        write_script(plain.path(), "mytool", 0o644);
        std::fs::create_dir(plain.path().join("mydir")).unwrap();
        write_script(first.path(), "mytool", 0o755);
        write_script(second.path(), "mytool", 0o755);
        // A relative entry is skipped even when it holds the tool.
        let dirs = [plain.path(), Path::new(""), Path::new("."), first.path(), second.path()];
        let path_var = std::env::join_paths(dirs).unwrap();
        assert_eq!(find_executable("mytool", &path_var), Some(first.path().join("mytool")));
        assert_eq!(find_executable("mydir", &path_var), None);
        assert_eq!(find_executable("absent", &path_var), None);
        assert_eq!(tool_version(&first.path().join("mytool"), &["--version"], Duration::from_secs(5)), "mytool 1.2.3");
    }

    #[cfg(unix)]
    #[test]
    fn a_version_printed_on_stderr_is_read_from_stderr() {
        // Goal: tools such as `java -version` that print on stderr still get a version.
        let version = tool_version(Path::new("/bin/sh"), &["-c", "echo 'java 1.8.0' >&2"], Duration::from_secs(5));
        assert_eq!(version, "java 1.8.0");
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_tool_has_an_empty_version() {
        // Goal: the text of a failed `--version` (an error message) is not taken as a version.
        let version =
            tool_version(Path::new("/bin/sh"), &["-c", "echo 'unknown flag'; exit 2"], Duration::from_secs(5));
        assert_eq!(version, "");
        assert_eq!(tool_version(Path::new("/nonexistent/tool"), &[], Duration::from_secs(5)), "");
    }

    #[cfg(unix)]
    #[test]
    fn a_hanging_tool_is_killed_at_its_timeout() {
        // Goal: a tool that never answers (here one that also leaves a child holding its pipes)
        // costs the probe its timeout, not its run time.
        let started = Instant::now();
        let script = "sleep 3 & echo started; sleep 3";
        let version = tool_version(Path::new("/bin/sh"), &["-c", script], Duration::from_millis(300));
        assert_eq!(version, "");
        assert!(started.elapsed() < Duration::from_millis(2_500), "took {:?}", started.elapsed());
    }

    #[test]
    fn probing_this_machine_finds_its_os_cpus_memory_and_cargo() {
        // Goal: a real probe of the test machine reports the obvious; tests run under cargo,
        // so cargo is on PATH.
        let home = tempfile::tempdir().unwrap();
        let mut tools: Vec<String> = DEFAULT_TOOLS.iter().map(|tool| (*tool).to_owned()).collect();
        tools.push("not-a-real-tool-meshwork".to_owned());
        let config = ProbeConfig {
            labels: vec!["ci".to_owned(), "bad label".to_owned()],
            home: home.path().join("not-yet"),
            tools,
        };
        let started = Instant::now();
        let probe = probe_machine(&config);
        let elapsed = started.elapsed();
        eprintln!("probe took {elapsed:?}\n{probe:#?}");
        assert_eq!(probe.os, std::env::consts::OS);
        if cfg!(target_os = "linux") {
            assert_eq!(probe.os, "linux");
            assert!(!probe.kernel.is_empty());
        }
        assert_eq!(probe.arch, std::env::consts::ARCH);
        assert!(probe.cpus >= 1);
        assert!(probe.memory_bytes > 0);
        assert!(probe.disk_free_bytes > 0);
        assert!(probe.tools.get("cargo").is_some_and(|version| version.starts_with("cargo ")), "{:?}", probe.tools);
        assert!(!probe.tools.contains_key("not-a-real-tool-meshwork"));
        assert_eq!(probe.labels, vec!["ci".to_owned()]);
        let bound = Duration::from_millis(NVIDIA_SMI_TIMEOUT_MS.max(TOOL_VERSION_TIMEOUT_MS)) + Duration::from_secs(3);
        assert!(elapsed < bound, "probe took {elapsed:?}");
    }
}
