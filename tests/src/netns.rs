//! A network lab for fault tests: N hosts, each a Linux network namespace with one address,
//! joined by a bridge that lives in a "switch" namespace of its own, and the faults the
//! kernel offers without netem: partitions and random loss with `iptables`, duplication with
//! `nft dup`.
//!
//! Every lab has its own name prefix and /24, so tests may run in parallel, and it deletes its
//! namespaces on drop, also after a panic. Labs leaked by a killed test process are swept by
//! the next one. Needs root; [`lab_or_fail`] fails a test that cannot run here, with why.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestNode;

/// Every namespace of a lab is named `mwlab<pid>n<lab>...`, so a later run can tell which
/// labs belong to test processes that are gone.
const NAMESPACE_PREFIX: &str = "mwlab";

/// The nft table of [`Lab::duplicate_outgoing`].
const DUP_TABLE: &str = "meshwork_lab_dup";

/// Labs made by this process so far: a lab's number, part of its names and subnet.
static LABS_MADE: AtomicU32 = AtomicU32::new(0);

/// A tool a netns test needs besides root and `ip netns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `iptables`: partitions and loss.
    Iptables,
    /// `nft`: duplication.
    Nft,
    /// `libfaketime.so.1` (package `faketime`): a node with a skewed wall clock.
    Libfaketime,
}

/// A lab of `hosts` hosts, or a test failure saying why this machine cannot build one. The
/// tests that call it are `#[ignore = "needs root: ..."]`, so they run only when asked for
/// (`--include-ignored`, as `.ci/run` does as root) and never pass without having run.
pub fn lab_or_fail(hosts: usize, needs: &[Need]) -> Lab {
    match missing_need(needs).map_or_else(|| Lab::new(hosts), Err) {
        Ok(lab) => lab,
        Err(reason) => panic!("this netns test cannot run here: {reason}"),
    }
}

/// The first reason this process cannot run a lab with these needs.
fn missing_need(needs: &[Need]) -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".to_owned());
    }
    if find_program("ip").is_none() {
        return Some("`ip` (package iproute2) is not installed".to_owned());
    }
    needs.iter().find_map(|need| match need {
        Need::Iptables => {
            find_program("iptables").is_none().then(|| "`iptables` (package iptables) is not installed".to_owned())
        }
        Need::Nft => find_program("nft").is_none().then(|| "`nft` (package nftables) is not installed".to_owned()),
        Need::Libfaketime => {
            libfaketime().is_none().then(|| "libfaketime.so.1 (package faketime) is not installed".to_owned())
        }
    })
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A program on `PATH` or in the sbin directories (not on a plain user's `PATH`).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

/// The libfaketime preload library: the thread-safe build when present (the node runs many
/// threads), in Debian's multiarch directories or the plain ones.
fn libfaketime() -> Option<PathBuf> {
    let mut directories = vec![PathBuf::from("/usr/lib/faketime"), PathBuf::from("/usr/lib64/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        directories.extend(entries.flatten().map(|entry| entry.path().join("faketime")));
    }
    ["libfaketimeMT.so.1", "libfaketime.so.1"]
        .iter()
        .flat_map(|library| directories.iter().map(move |directory| directory.join(library)))
        .find(|candidate| candidate.is_file())
}

/// A launch prefix (after the lab's [`Lab::launch_prefix`]) that runs the node with its wall
/// clock moved by `offset` (libfaketime syntax: `+1h`, `-90s`), the monotonic clock left
/// real so that timers, timeouts and round trips still measure real time.
pub fn wall_clock_offset_prefix(offset: &str) -> Vec<OsString> {
    let library = libfaketime().expect("libfaketime is installed (check with lab_or_fail and Need::Libfaketime)");
    let mut preload = OsString::from("LD_PRELOAD=");
    preload.push(library.as_os_str());
    vec![
        OsString::from("env"),
        preload,
        OsString::from(format!("FAKETIME={offset}")),
        OsString::from("FAKETIME_DONT_FAKE_MONOTONIC=1"),
    ]
}

/// Hosts in their own network namespaces on one bridge. Host `i` (from 0) is namespace
/// [`Lab::namespace`]`(i)` with address [`Lab::address`]`(i)` on `eth0`.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The first three octets of the lab's /24.
    subnet: [u8; 3],
    hosts: usize,
    /// Partition rules in force: the host, and the iptables arguments after `-I`/`-D`.
    partition_rules: Vec<(usize, Vec<String>)>,
}

impl Lab {
    /// Creates the switch and `hosts` hosts. An error says which command failed and why.
    pub fn new(hosts: usize) -> Result<Lab, String> {
        assert!((1..=200).contains(&hosts), "a lab has 1 to 200 hosts");
        sweep_leaked_labs();
        let number = LABS_MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // The subnet only needs to be unique among the labs of one process (each lab's hosts
        // see only their own bridge); it differs between processes too, for readable captures.
        let subnet = [10, 64 + (pid % 128) as u8, (number % 256) as u8];
        let lab =
            Lab { prefix: format!("{NAMESPACE_PREFIX}{pid}n{number}"), subnet, hosts, partition_rules: Vec::new() };
        // From here on, drop deletes whatever was created, also when a step below fails.
        lab.build().map_err(|error| format!("cannot build a network lab: {error}"))?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        let switch = self.switch_namespace();
        run("ip", &["netns", "add", &switch])?;
        run("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        for host in 0..self.hosts {
            let namespace = self.namespace(host);
            let port = format!("port{host}");
            let address = format!("{}/24", self.address(host));
            run("ip", &["netns", "add", &namespace])?;
            // Both ends are created inside their namespaces: no name is taken in the root one.
            run(
                "ip",
                &["link", "add", "eth0", "netns", &namespace, "type", "veth", "peer", "name", &port, "netns", &switch],
            )?;
            run("ip", &["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// How many hosts the lab has.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The namespace of host `host`.
    pub fn namespace(&self, host: usize) -> String {
        assert!(host < self.hosts, "host {host} of a lab of {}", self.hosts);
        format!("{}h{host}", self.prefix)
    }

    fn switch_namespace(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// The address of host `host` on the lab's bridge.
    pub fn address(&self, host: usize) -> Ipv4Addr {
        assert!(host < self.hosts, "host {host} of a lab of {}", self.hosts);
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 11 + host as u8)
    }

    /// The lab's /24, as iptables writes it.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The command words that run a program inside host `host`'s namespace.
    pub fn launch_prefix(&self, host: usize) -> Vec<OsString> {
        ["ip", "netns", "exec"].map(OsString::from).into_iter().chain([OsString::from(self.namespace(host))]).collect()
    }

    /// `node start` flags for host `host`: QUIC and TCP on the host's address (OS-chosen
    /// ports), no mDNS, so peers reach each other only through the lab's bridge.
    pub fn listen_flags(&self, host: usize) -> Vec<String> {
        let address = self.address(host);
        vec![
            "--no-mdns".to_owned(),
            "--listen".to_owned(),
            format!("/ip4/{address}/udp/0/quic-v1"),
            "--listen".to_owned(),
            format!("/ip4/{address}/tcp/0"),
        ]
    }

    /// A node named `name` in a fresh home, initialised and set up to run on host `host`, not
    /// started: add to its launch prefix before [`TestNode::launch`] if needed.
    pub fn stopped_node(&self, bin: &str, host: usize, name: &str) -> TestNode {
        let mut node = TestNode::stopped(bin);
        let init = node.cli(&["init", "--name", name, "--json"]);
        assert_eq!(init.code, 0, "init failed: {init:?}");
        let flags = self.listen_flags(host);
        node.set_start_flags(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        node.set_launch_prefix(self.launch_prefix(host));
        node
    }

    /// A running node named `name` on host `host` (see [`Lab::stopped_node`]).
    pub fn node(&self, bin: &str, host: usize, name: &str) -> TestNode {
        let mut node = self.stopped_node(bin, host, name);
        node.launch();
        node
    }

    /// Cuts every host of `one_side` off from every host of `other_side`, both directions,
    /// by dropping their packets on both hosts of each pair. [`Lab::heal`] undoes it.
    pub fn partition(&mut self, one_side: &[usize], other_side: &[usize]) {
        for &one in one_side {
            for &other in other_side {
                for (host, peer) in [(one, other), (other, one)] {
                    let peer = self.address(peer).to_string();
                    for rule in [["INPUT", "-s", &peer, "-j", "DROP"], ["OUTPUT", "-d", &peer, "-j", "DROP"]] {
                        let rule: Vec<String> = rule.map(str::to_owned).to_vec();
                        self.iptables(host, "-I", &rule);
                        self.partition_rules.push((host, rule));
                    }
                }
            }
        }
    }

    /// Removes every partition rule; loss and duplication stay.
    pub fn heal(&mut self) {
        for (host, rule) in std::mem::take(&mut self.partition_rules).into_iter().rev() {
            self.iptables(host, "-D", &rule);
        }
    }

    /// Drops each packet host `host` sends to the lab's subnet with probability `percent`%.
    pub fn lose_outgoing(&self, host: usize, percent: u32) {
        assert!(percent <= 100, "a percentage");
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        let subnet = self.subnet();
        let rule = [
            "OUTPUT",
            "-d",
            &subnet,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "DROP",
        ];
        self.iptables(host, "-I", &rule.map(str::to_owned));
    }

    /// Sends a second copy of each packet host `host` sends to the lab's subnet with
    /// probability `percent`% (`nft dup`).
    pub fn duplicate_outgoing(&self, host: usize, percent: u32) {
        assert!(percent <= 100, "a percentage");
        let ruleset = format!(
            "table ip {DUP_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             ip daddr {} numgen random mod 100 < {percent} counter dup to ip daddr\n  }}\n}}\n",
            self.subnet()
        );
        let file = tempfile::NamedTempFile::new().expect("a temporary nft file");
        std::fs::write(file.path(), ruleset).expect("write the nft ruleset");
        let path = file.path().to_string_lossy().into_owned();
        run("ip", &["netns", "exec", &self.namespace(host), "nft", "-f", &path]).expect("nft dup rule");
    }

    /// Packets host `host` sent a second copy of so far ([`Lab::duplicate_outgoing`]).
    pub fn duplicated_packets(&self, host: usize) -> u64 {
        let listing = output("ip", &["netns", "exec", &self.namespace(host), "nft", "list", "table", "ip", DUP_TABLE])
            .expect("nft list");
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(3)
            .filter(|window| window[0] == "counter" && window[1] == "packets")
            .filter_map(|window| window[2].parse::<u64>().ok())
            .sum()
    }

    /// Packets the DROP rules of host `host` dropped so far (partition and loss rules).
    pub fn dropped_packets(&self, host: usize) -> u64 {
        let listing = output("ip", &["netns", "exec", &self.namespace(host), "iptables", "-w", "-L", "-n", "-v", "-x"])
            .expect("iptables -L");
        listing
            .lines()
            .filter(|line| line.split_whitespace().nth(2) == Some("DROP"))
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    fn iptables(&self, host: usize, action: &str, rule: &[String]) {
        let mut words: Vec<&str> = vec!["netns", "exec"];
        let namespace = self.namespace(host);
        words.extend([namespace.as_str(), "iptables", "-w", action]);
        words.extend(rule.iter().map(String::as_str));
        run("ip", &words).unwrap_or_else(|error| panic!("iptables on host {host}: {error}"));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts first, then the switch; a namespace that was never created fails quietly.
        for host in 0..self.hosts {
            let _ = run("ip", &["netns", "delete", &self.namespace(host)]);
        }
        let _ = run("ip", &["netns", "delete", &self.switch_namespace()]);
    }
}

/// Deletes the namespaces of labs whose test process is gone (killed before its labs dropped).
fn sweep_leaked_labs() {
    let Ok(listing) = output("ip", &["netns", "list"]) else { return };
    for name in listing.lines().filter_map(|line| line.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = !pid.is_empty() && Path::new("/proc").join(&pid).exists();
        if !pid.is_empty() && !alive {
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}

/// Runs a command to completion; an error names it and carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(drop)
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let result = Command::new(program).args(args).output().map_err(|error| format!("`{program}`: {error}"))?;
    if !result.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}
