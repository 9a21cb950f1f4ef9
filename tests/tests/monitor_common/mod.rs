//! Shared by the monitor's integration tests: an in-process monitor with a recording judge, and
//! a runner for the `notify-testee` helper (which plays runc plus a container process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rce_guard::exec_event::ExecEvent;
use rce_guard::monitor::{self, MonitorConfig, MonitorHandle};
use rce_guard::verdict::{Action, ExecJudge, WatchedContainer};

pub const TESTEE: &str = env!("CARGO_BIN_EXE_notify-testee");

/// These tests need root (seccomp listeners of other processes, pidfd_getfd, setuid): fail
/// loudly rather than skip.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the monitor integration tests must run as root (they read other processes' fds)"
    );
}

type Rule = Box<dyn Fn(&ExecEvent) -> Action + Send + Sync>;

/// A judge that records every call and answers by a rule (default: allow).
pub struct RecordingJudge {
    pub calls: Mutex<Vec<(WatchedContainer, ExecEvent)>>,
    rule: Rule,
}

impl RecordingJudge {
    pub fn allowing() -> Arc<Self> {
        Self::with_rule(|_| Action::Allow)
    }

    pub fn with_rule(rule: impl Fn(&ExecEvent) -> Action + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(RecordingJudge {
            calls: Mutex::new(Vec::new()),
            rule: Box::new(rule),
        })
    }

    pub fn calls(&self) -> Vec<(WatchedContainer, ExecEvent)> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls whose program's file name is `name`.
    pub fn calls_for(&self, name: &str) -> Vec<(WatchedContainer, ExecEvent)> {
        self.calls()
            .into_iter()
            .filter(|(_, e)| file_name(&e.program) == name)
            .collect()
    }
}

impl ExecJudge for RecordingJudge {
    fn judge(&self, c: &WatchedContainer, e: &ExecEvent) -> Action {
        self.calls.lock().unwrap().push((c.clone(), e.clone()));
        (self.rule)(e)
    }
}

pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A monitor serving a socket in its own temp dir.
pub struct TestMonitor {
    pub handle: MonitorHandle,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestMonitor {
    pub fn start(judge: Arc<dyn ExecJudge>) -> Self {
        Self::start_with(judge, |_| {})
    }

    pub fn start_with(judge: Arc<dyn ExecJudge>, tweak: impl FnOnce(&mut MonitorConfig)) -> Self {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/monitor.sock");
        let mut cfg = MonitorConfig {
            listener_path: socket.clone(),
            ..MonitorConfig::default()
        };
        tweak(&mut cfg);
        let handle = monitor::start(cfg, judge).expect("monitor starts");
        TestMonitor {
            handle,
            socket,
            _dir: dir,
        }
    }

    /// A testee command pointed at this monitor (add options, then `--` and the mode).
    pub fn testee(&self) -> Command {
        let mut c = Command::new(TESTEE);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// Wait until no listener fd is held any more (all testees exited).
    pub fn wait_all_closed(&self, within: Duration) {
        wait_until(within, "all listener fds closed", || {
            self.handle.stats().listener_fds_open == 0
        });
    }
}

pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run a testee to completion (bounded), capturing stdout/stderr.
pub fn run_testee(cmd: &mut Command, within: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testee");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("testee output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("testee {cmd:?} did not finish within {within:?}");
        }
    }
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert a testee exited 0, showing its output otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "testee failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Number of fds open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
