//! The rce-guard agent as a child process of the test: stdout (findings, JSON lines) and stderr
//! (logs, tracing-subscriber JSON with `--log-format json`) are collected by background
//! threads, so a test can wait for a line that matches. The agent is killed on drop.
//!
//! The binary is `$RCE_GUARD_BIN`, else `rce-guard` in the cargo profile directory the test
//! executable was built into (built on first use if it is missing).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::containerd::Containerd;
use crate::log_lines::{LineCollector, LogLine, WaitEnd};

/// Path of the agent binary. Unless `$RCE_GUARD_BIN` names one, this is `rce-guard` next to
/// the test executable's profile directory, (re)built with `cargo build -p rce-guard --bin
/// rce-guard` when it is missing or older than the agent's sources (so a test never runs a
/// stale agent).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("RCE_GUARD_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!(
                "RCE_GUARD_BIN points at {}, which does not exist",
                bin.display()
            );
        }
        return Ok(bin);
    }
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join("rce-guard");
    // One check (and build) per test process, however many tests ask in parallel.
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        if is_stale(&bin) {
            build_agent(profile_dir)?;
        }
        *checked = true;
    }
    if !bin.is_file() {
        bail!("built rce-guard, but {} is still missing", bin.display());
    }
    Ok(bin)
}

/// True if `bin` is missing or older than a source file of the agent or its proto crate.
fn is_stale(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["plugin", "proto"]
        .iter()
        .filter_map(|crate_dir| newest_mtime(&workspace.join(crate_dir)))
        .max();
    newest.is_some_and(|newest| newest > built)
}

/// Newest modification time of the files under `dir` (recursively).
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if let Ok(modified) = meta.modified() {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

fn build_agent(profile_dir: &Path) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("the tests crate has no parent directory"))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("profile dir {} has no parent", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "rce-guard", "--bin", "rce-guard"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name() == Some(OsStr::new("release")) {
        cmd.arg("--release");
    }
    eprintln!("rce-guard binary missing or older than its sources: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("`cargo build -p rce-guard --bin rce-guard` failed ({status})");
    }
    Ok(())
}

/// Arguments and environment of an agent to start.
#[derive(Debug, Clone, Default)]
pub struct AgentBuilder {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    listener: Option<PathBuf>,
    holder_socket: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
}

impl AgentBuilder {
    /// No arguments at all; add them with [`AgentBuilder::arg`].
    pub fn new() -> Self {
        Self::default()
    }

    /// `rce-guard run` against `cd`'s NRI socket, with the listener, fd-holder and admin
    /// sockets in its (short) instance directory and JSON logs. Nothing is shared with other
    /// instances, so tests can run in parallel. The fd holder the agent starts outlives the
    /// agent (by design); `cd`'s teardown ends it.
    pub fn for_containerd(cd: &Containerd) -> Self {
        let listener = cd.dir().join("listener.sock");
        let holder = cd.dir().join("holder.sock");
        let admin = cd.dir().join("admin.sock");
        let mut b = Self::new()
            .arg("run")
            .arg("--nri-socket")
            .arg(cd.nri_socket())
            .arg("--listener")
            .arg(&listener)
            .arg("--holder-socket")
            .arg(&holder)
            .arg("--admin-socket")
            .arg(&admin)
            .args(["--log-format", "json"]);
        b.listener = Some(listener);
        b.holder_socket = Some(holder);
        b.admin_socket = Some(admin);
        b
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// `--config FILE`.
    pub fn config(self, path: impl AsRef<OsStr>) -> Self {
        self.arg("--config").arg(path)
    }

    /// `--mode detect|block|kill`.
    pub fn mode(self, mode: &str) -> Self {
        self.arg("--mode").arg(mode)
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Starts the agent. `RUST_LOG` defaults to `info,rce_guard=debug` unless set here or in
    /// the test's environment. Set `RCE_GUARD_E2E_ECHO=1` to see its output live.
    pub fn spawn(self) -> Result<Agent> {
        let bin = agent_binary()?;
        let mut cmd = Command::new(&bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,rce_guard=debug");
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let started_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let echo = std::env::var_os("RCE_GUARD_E2E_ECHO").is_some_and(|v| v != "0");
        let stdout = LineCollector::default();
        let stderr = LineCollector::default();
        let pid = child.id();
        let out_pipe = child.stdout.take().context("agent stdout pipe")?;
        let err_pipe = child.stderr.take().context("agent stderr pipe")?;
        let agent = Agent {
            child: Mutex::new(child),
            pid,
            stdout,
            stderr,
            started_at,
            args: self.args,
            listener: self.listener,
            holder_socket: self.holder_socket,
            admin_socket: self.admin_socket,
        };
        agent
            .stdout
            .spawn_reader(format!("agent-{pid}-out"), out_pipe, move |l| {
                if echo {
                    eprintln!("[agent {pid} out] {l}");
                }
            })
            .context("starting the stdout reader")?;
        agent
            .stderr
            .spawn_reader(format!("agent-{pid}-err"), err_pipe, move |l| {
                if echo {
                    eprintln!("[agent {pid} err] {l}");
                }
            })
            .context("starting the stderr reader")?;
        Ok(agent)
    }
}

/// A running agent. Killed (SIGKILL) on drop; its log tail is printed if the test panicked.
pub struct Agent {
    /// Behind a lock so that `&self` methods can ask whether it has exited.
    child: Mutex<Child>,
    pid: u32,
    stdout: LineCollector,
    stderr: LineCollector,
    started_at: Instant,
    args: Vec<OsString>,
    listener: Option<PathBuf>,
    holder_socket: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
}

impl Agent {
    /// Starts `rce-guard run` against `cd` (see [`AgentBuilder::for_containerd`]).
    pub fn start(cd: &Containerd) -> Result<Agent> {
        AgentBuilder::for_containerd(cd).spawn()
    }

    /// When the process was spawned.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The `--listener` socket path, when started with [`AgentBuilder::for_containerd`].
    pub fn listener_path(&self) -> Option<&Path> {
        self.listener.as_deref()
    }

    /// The `--holder-socket` path, when started with [`AgentBuilder::for_containerd`].
    pub fn holder_socket_path(&self) -> Option<&Path> {
        self.holder_socket.as_deref()
    }

    /// The `--admin-socket` path, when started with [`AgentBuilder::for_containerd`].
    pub fn admin_socket_path(&self) -> Option<&Path> {
        self.admin_socket.as_deref()
    }

    /// Number of log (stderr) lines so far: a mark for [`Agent::wait_for_log_after`].
    pub fn log_mark(&self) -> usize {
        self.stderr.len()
    }

    /// Number of stdout lines so far: a mark for [`Agent::wait_for_stdout_after`].
    pub fn stdout_mark(&self) -> usize {
        self.stdout.len()
    }

    /// Waits for a log line (stderr, parsed JSON; `Null` for non-JSON lines) that matches.
    pub fn wait_for_log(
        &self,
        pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<LogLine> {
        self.wait_for_log_after(0, pred, timeout)
    }

    /// Like [`Agent::wait_for_log`], looking only at lines from index `mark` on.
    pub fn wait_for_log_after(
        &self,
        mark: usize,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<LogLine> {
        self.stderr
            .wait_for(mark, timeout, |l| pred(&l.json))
            .map_err(|end| self.wait_error("log line", end, timeout))
    }

    /// Waits for a log line whose message is `message` and whose fields equal `fields`
    /// (compared as text, see [`crate::field_str`]).
    pub fn wait_for_message(
        &self,
        mark: usize,
        message: &str,
        fields: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<LogLine> {
        self.stderr
            .wait_for(mark, timeout, |l| {
                l.message() == Some(message)
                    && fields
                        .iter()
                        .all(|(k, v)| l.field(k).as_deref() == Some(*v))
            })
            .map_err(|end| {
                self.wait_error(&format!("log {message:?} with {fields:?}"), end, timeout)
            })
    }

    /// Waits for a stdout line (a finding, parsed JSON) that matches.
    pub fn wait_for_stdout(
        &self,
        pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<LogLine> {
        self.wait_for_stdout_after(0, pred, timeout)
    }

    /// Like [`Agent::wait_for_stdout`], looking only at lines from index `mark` on.
    pub fn wait_for_stdout_after(
        &self,
        mark: usize,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<LogLine> {
        self.stdout
            .wait_for(mark, timeout, |l| pred(&l.json))
            .map_err(|end| self.wait_error("stdout line", end, timeout))
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.stderr.snapshot()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<LogLine> {
        self.stdout.snapshot()
    }

    /// Log lines (from `mark` on) with the given message.
    pub fn logs_with_message(&self, mark: usize, message: &str) -> Vec<LogLine> {
        self.stderr
            .snapshot()
            .into_iter()
            .skip(mark)
            .filter(|l| l.message() == Some(message))
            .collect()
    }

    /// The last `n` log lines, for messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.stderr.tail(n)
    }

    /// The exit status, if the agent has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Sends `signal` (e.g. SIGTERM for a graceful stop).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to the agent"))
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().context("waiting for the agent")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent still running after {timeout:?}; log tail:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_error(&self, what: &str, end: WaitEnd, timeout: Duration) -> anyhow::Error {
        let why = match end {
            WaitEnd::TimedOut => format!("no matching {what} within {timeout:?}"),
            WaitEnd::Closed => {
                format!("agent output closed (agent exited?) before a matching {what}")
            }
        };
        anyhow!(
            "{why}; agent {:?} (pid {}); log tail:\n{}\nstdout tail:\n{}",
            self.args,
            self.pid,
            self.stderr.tail(30),
            self.stdout.tail(10)
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agent (pid {}) log tail:\n{}\n--- agent stdout tail:\n{}\n---",
                self.pid,
                self.stderr.tail(40),
                self.stdout.tail(10)
            );
        }
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
