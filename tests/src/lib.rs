//! A harness for black-box tests: real `meshwork` processes in temporary homes.
//!
//! The test files in `tests/tests/` are targets of the `meshwork` package (see
//! node/meshwork/Cargo.toml), so they pass the real binary's path, `env!("CARGO_BIN_EXE_meshwork")`.

pub mod netns;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a node may take to start answering.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What one CLI invocation did.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The single JSON document on stdout.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!("stdout is not one JSON document ({error}): {:?}\nstderr: {}", self.stdout, self.stderr)
        })
    }

    /// The error code of a `--json` failure.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Set to a directory to keep every test node's log there, one `<home name>.log` per node, at
/// the level of `MESHWORK_LOG` (default `warn`): for reading what the nodes of a failing test did.
pub const NODE_LOG_DIR_VAR: &str = "MESHWORK_TEST_NODE_LOGS";

/// A node in a temporary home, driven through the real binary.
#[derive(Debug)]
pub struct TestNode {
    bin: PathBuf,
    home: tempfile::TempDir,
    child: Option<Child>,
    /// The flags of `node start` besides the home: `--offline` unless the node is online.
    start_flags: Vec<String>,
    /// Command words that `node start` runs under (a network namespace, a skewed clock).
    launch_prefix: Vec<OsString>,
}

/// `node start` flags of an online test node: loopback only, no mDNS, OS-chosen ports.
pub const LOOPBACK_FLAGS: [&str; 5] =
    ["--no-mdns", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip4/127.0.0.1/tcp/0"];

impl TestNode {
    /// A fresh home with `meshwork init`, and a running offline node.
    pub fn start(bin: &str) -> TestNode {
        let mut node = TestNode::stopped(bin);
        let init = node.cli(&["init", "--name", "test-node", "--json"]);
        assert_eq!(init.code, 0, "init failed: {init:?}");
        node.launch();
        node
    }

    /// A fresh, empty home with no node running.
    pub fn stopped(bin: &str) -> TestNode {
        TestNode {
            bin: PathBuf::from(bin),
            home: tempfile::tempdir().expect("a temporary home"),
            child: None,
            start_flags: vec!["--offline".to_owned()],
            launch_prefix: Vec::new(),
        }
    }

    /// A fresh home named `name`, and a running node on loopback (see [`LOOPBACK_FLAGS`]).
    pub fn online(bin: &str, name: &str) -> TestNode {
        let mut node = TestNode::stopped(bin);
        let init = node.cli(&["init", "--name", name, "--json"]);
        assert_eq!(init.code, 0, "init failed: {init:?}");
        node.set_start_flags(&LOOPBACK_FLAGS);
        node.launch();
        node
    }

    /// The `node start` flags for the next launches.
    pub fn set_start_flags(&mut self, flags: &[&str]) {
        self.start_flags = flags.iter().map(|flag| (*flag).to_owned()).collect();
    }

    /// The command words that the next launches run `node start` under, the first being the
    /// program: `ip netns exec NAME` runs the node in a network namespace (see [`netns::Lab`]),
    /// `env VAR=VALUE ...` with a changed environment. Each must exec the next, so the process
    /// the harness holds (and kills) is the node itself. The CLI runs without it.
    pub fn set_launch_prefix(&mut self, prefix: Vec<OsString>) {
        self.launch_prefix = prefix;
    }

    /// This node's id.
    pub fn node_id(&self) -> String {
        self.ok(&["node", "status"])["node_id"].as_str().unwrap_or_default().to_owned()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Starts `meshwork node start` (offline unless [`TestNode::online`]) under the launch
    /// prefix and waits until `node status` answers. The node's log goes nowhere unless
    /// [`NODE_LOG_DIR_VAR`] names a directory.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the node is running already");
        let mut command = match self.launch_prefix.split_first() {
            Some((program, words)) => {
                let mut command = Command::new(program);
                command.args(words).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["node", "start"])
            .args(&self.start_flags)
            .arg("--home")
            .arg(self.home.path())
            .env("MESHWORK_LOG", std::env::var("MESHWORK_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_destination())
            .spawn()
            .expect("spawn meshwork node start");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if self.cli(&["node", "status"]).code == 0 {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the node exited at start: {status}");
            }
            assert!(started.elapsed() < NODE_START_TIMEOUT, "the node did not start within {NODE_START_TIMEOUT:?}");
            sleep(Duration::from_millis(20));
        }
    }

    /// Where the node's stderr (its log) goes: `<home name>.log` (appended) in the directory
    /// [`NODE_LOG_DIR_VAR`] names, else nowhere.
    fn log_destination(&self) -> Stdio {
        let Some(directory) = std::env::var_os(NODE_LOG_DIR_VAR) else { return Stdio::null() };
        let home = self.home.path().file_name().unwrap_or_default().to_string_lossy().into_owned();
        let name = home.trim_start_matches('.');
        let path = Path::new(&directory).join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        file.map(Stdio::from).unwrap_or_else(|error| panic!("cannot open the node log {}: {error}", path.display()))
    }

    /// Runs the CLI against this home as agent `agent-a`.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as("agent-a", args)
    }

    /// Runs the CLI against this home as the given agent.
    pub fn cli_as(&self, agent: &str, args: &[&str]) -> Run {
        let output = Command::new(&self.bin)
            .args(args)
            .arg("--home")
            .arg(self.home.path())
            .env("MESHWORK_AGENT", agent)
            .env_remove("MESHWORK_HOME")
            .output()
            .expect("run meshwork");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts `meshwork watch --json ARGS` against this home as `agent` (none: every agent's
    /// events); its lines arrive on the returned [`Watcher`] as they are printed.
    pub fn watch(&self, agent: Option<&str>, args: &[&str]) -> Watcher {
        let mut command = Command::new(&self.bin);
        command.arg("watch").arg("--json").args(args).arg("--home").arg(self.home.path()).env_remove("MESHWORK_HOME");
        match agent {
            Some(agent) => command.env("MESHWORK_AGENT", agent),
            None => command.env_remove("MESHWORK_AGENT"),
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start meshwork watch");
        let stdout = child.stdout.take().expect("watch has a stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if sender.send(WatchedEvent { arrived: std::time::SystemTime::now(), event }).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// Runs the CLI with `--json` and expects success; returns the JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let run = self.cli(&with_json);
        assert_eq!(run.code, 0, "meshwork {args:?} failed: {run:?}");
        run.json()
    }

    /// The running node's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the node with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Waits for the node process to exit by itself (after `node stop`).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let started = Instant::now();
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `meshwork watch --json`, killed on drop.
#[derive(Debug)]
pub struct Watcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<WatchedEvent>,
}

/// One line of `watch --json` and when the test read it.
#[derive(Debug, Clone)]
pub struct WatchedEvent {
    pub arrived: std::time::SystemTime,
    pub event: Value,
}

impl Watcher {
    /// Every event printed so far.
    pub fn drain(&self) -> Vec<WatchedEvent> {
        self.lines.try_iter().collect()
    }

    /// Collects events until `done` holds for the events so far; panics after `timeout`.
    pub fn until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[WatchedEvent]) -> bool,
    ) -> Vec<WatchedEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?} waiting until {what}; saw {seen:#?}");
            if let Ok(event) = self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
                seen.push(event);
            }
        }
        seen
    }

    /// Stops the watcher; returns what it printed and nobody read yet.
    pub fn stop(mut self) -> Vec<WatchedEvent> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.drain()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        sleep(Duration::from_millis(25));
    }
}

/// Makes `joiner` a member of `inviter`'s mesh through `mesh invite` and `mesh join`.
pub fn join(inviter: &TestNode, joiner: &TestNode) -> Value {
    let token = inviter.ok(&["mesh", "invite"])["token"].as_str().unwrap_or_default().to_owned();
    joiner.ok(&["mesh", "join", &token])
}
