//! Shared by the holder's integration tests: the real `rce-guard-holder` binary on sockets in a
//! temp dir, a "runc" that hands fds over as runc does (connect, one `sendmsg` with the fds
//! and the state JSON, close), a judge on the control socket ([`HolderLink`], the agent's own
//! client), and a fake container: a thread of this test process that carries the real
//! exec-notify seccomp filter, so its children's execve calls wait for a judge.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rce_guard::holder::{HolderEvent, HolderLink};

pub const HOLDER_BIN: &str = env!("CARGO_BIN_EXE_rce-guard-holder");

/// These tests receive seccomp listener fds, install filters and check peer credentials:
/// they need root. Fail loudly rather than skip.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the holder integration tests must run as root (peer credential checks, seccomp filters)"
    );
}

/// Polls `f` every 10 ms until it returns `Some`, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The holder binary as a child process, its log (RUST_LOG=debug) in a file of its own.
pub struct HolderProc {
    child: Child,
    pub listener: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl HolderProc {
    /// The debug binary cargo built for these tests, sockets `runc.sock` and `control.sock`
    /// in `dir`. Waits until it logged "holder ready".
    pub fn start(dir: &Path) -> HolderProc {
        Self::start_bin(Path::new(HOLDER_BIN), dir, "holder")
    }

    /// `bin` on `dir`'s sockets (a second one takes over from a running one), log `<name>.log`.
    pub fn start_bin(bin: &Path, dir: &Path, name: &str) -> HolderProc {
        let h = Self::spawn(bin, dir, name);
        h.wait_log("holder ready", Duration::from_secs(15));
        h
    }

    /// Starts it without waiting for anything.
    pub fn spawn(bin: &Path, dir: &Path, name: &str) -> HolderProc {
        let listener = dir.join("runc.sock");
        let control = dir.join("control.sock");
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).expect("creating the holder's log file");
        let child = Command::new(bin)
            .arg("--listener")
            .arg(&listener)
            .arg("--control")
            .arg(&control)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        HolderProc {
            child,
            listener,
            control,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the log has at least `n` lines containing `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        if wait_for(timeout, || (self.log_count(needle) >= n).then_some(())).is_none() {
            panic!(
                "holder did not log {needle:?} {n} time(s) within {timeout:?}; log:\n{}",
                self.log_text()
            );
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for the holder")
    }

    /// Waits for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "holder {} still runs after {timeout:?}; log:\n{}",
                self.pid(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_exit() {
            panic!("the holder exited ({s}); log:\n{}", self.log_text());
        }
    }

    /// (VmRSS, VmHWM) in KiB, from /proc/<pid>/status.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the holder's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in the holder's status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Open fds of the holder process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HolderProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- holder {} log ({}):\n{}",
                self.child.id(),
                self.log.display(),
                self.log_text()
            );
        }
        self.kill();
    }
}

/// A runc-like `ContainerProcessState` of about `size` bytes (padded with annotations).
pub fn runc_payload(container_id: &str, pid: i32, size: usize) -> Vec<u8> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        "web".to_string().into(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-name".into(),
        "web-7d9".to_string().into(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        "shop".to_string().into(),
    );
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": "rce-guard/v1",
        "state": {
            "ociVersion": "1.0.2-dev",
            "id": container_id,
            "status": "creating",
            "pid": pid,
            "bundle": format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{container_id}"),
            "annotations": annotations,
        }
    });
    let len = serde_json::to_vec(&v).unwrap().len();
    if len + 40 < size {
        v["state"]["annotations"]["test.rce-guard/filler"] = "f".repeat(size - len - 40).into();
    }
    serde_json::to_vec(&v).unwrap()
}

/// Plays runc: connects to `listener`, sends `payload` with `fds` attached, closes.
pub fn hand_over(listener: &Path, fds: &[BorrowedFd<'_>], payload: &[u8]) -> io::Result<()> {
    let stream = UnixStream::connect(listener)?;
    rce_guard::monitor::send_handover(&stream, payload, fds)
}

/// Hands over the read end of a fresh pipe and returns the write end: while the test keeps
/// it, the holder's copy stays open and quiet; dropping it makes the holder's copy hang up,
/// like a listener whose container is gone.
pub fn hand_over_pipe(listener: &Path, payload: &[u8]) -> OwnedFd {
    let (r, w) = std::io::pipe().expect("pipe");
    hand_over(listener, &[r.as_fd()], payload).expect("handing a pipe over to the holder");
    w.into()
}

/// One entry as a judge received it.
pub struct Received {
    pub id: u64,
    pub fds: Vec<OwnedFd>,
    pub payload: Vec<u8>,
}

/// A judge: the agent's own client of the control socket.
pub struct Judge {
    pub link: HolderLink,
}

impl Judge {
    /// Connects (retrying for a few seconds) and says Hello; every wait is bounded by 10 s.
    pub fn connect(control: &Path) -> Judge {
        let link = wait_for(Duration::from_secs(5), || HolderLink::connect(control).ok())
            .unwrap_or_else(|| panic!("cannot connect a judge to {}", control.display()));
        link.set_timeout(Some(Duration::from_secs(10))).unwrap();
        Judge { link }
    }

    /// The next event; panics after the timeout.
    pub fn next(&self) -> HolderEvent {
        match self.link.next_event() {
            Ok(e) => e,
            Err(e) => panic!("no event from the holder: {e}"),
        }
    }

    /// The next event, or `None` if nothing comes within `within`.
    pub fn next_within(&self, within: Duration) -> Option<HolderEvent> {
        self.link.set_timeout(Some(within)).unwrap();
        let r = self.link.next_event();
        self.link
            .set_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match r {
            Ok(e) => Some(e),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("reading from the holder failed: {e}"),
        }
    }

    /// Entries up to SyncDone, and the count SyncDone announced.
    pub fn sync(&self) -> (Vec<Received>, u64) {
        let mut got = Vec::new();
        loop {
            match self.next() {
                HolderEvent::Entry { id, fds, payload } => got.push(Received { id, fds, payload }),
                HolderEvent::SyncDone { entries } => return (got, entries),
                HolderEvent::Replaced => panic!("judge replaced during its sync"),
                HolderEvent::Closed => panic!("holder closed the connection during the sync"),
            }
        }
    }

    /// The next event must be one entry.
    pub fn expect_entry(&self) -> Received {
        match self.next() {
            HolderEvent::Entry { id, fds, payload } => Received { id, fds, payload },
            HolderEvent::SyncDone { entries } => {
                panic!("expected an entry, got SyncDone({entries})")
            }
            HolderEvent::Replaced => panic!("expected an entry, got Replaced"),
            HolderEvent::Closed => panic!("expected an entry, the holder closed the connection"),
        }
    }

    /// Nothing at all arrives for `quiet`.
    pub fn expect_nothing(&self, quiet: Duration) {
        if let Some(e) = self.next_within(quiet) {
            panic!("expected no message, got {}", describe(&e));
        }
    }
}

pub fn describe(e: &HolderEvent) -> String {
    match e {
        HolderEvent::Entry { id, fds, payload } => {
            format!("Entry(id {id}, {} fds, {} bytes)", fds.len(), payload.len())
        }
        HolderEvent::SyncDone { entries } => format!("SyncDone({entries})"),
        HolderEvent::Replaced => "Replaced".into(),
        HolderEvent::Closed => "Closed".into(),
    }
}

/// Entries a fresh judge gets now (it connects, syncs and leaves).
pub fn held_entries(control: &Path) -> u64 {
    let j = Judge::connect(control);
    let (got, count) = j.sync();
    assert_eq!(
        got.len() as u64,
        count,
        "SyncDone count equals the entries sent"
    );
    count
}

/// Waits until a fresh judge sees `n` entries.
pub fn wait_held(control: &Path, n: u64, timeout: Duration) {
    let mut last = u64::MAX;
    if wait_for(timeout, || {
        last = held_entries(control);
        (last == n).then_some(())
    })
    .is_none()
    {
        panic!("the holder holds {last} entries, expected {n} within {timeout:?}");
    }
}

/// Reads what is available on a pipe's read end (blocking for the first byte).
pub fn read_some(fd: OwnedFd) -> String {
    let mut f = File::from(fd);
    let mut buf = [0u8; 64];
    let n = f.read(&mut buf).expect("reading the pipe");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

pub fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    let mut f = File::from(fd.try_clone().expect("dup"));
    f.write_all(bytes).expect("writing the pipe");
}

/// What one exec in a [`FakeContainer`] gave.
#[derive(Debug)]
pub struct ExecOutcome {
    /// Exit status, or the spawn error (ENOSYS when no listener fd is left).
    pub result: Result<ExitStatus, String>,
    pub took: Duration,
}

/// A thread of this test process with the exec-notify filter installed (as runc installs
/// it in a container's init): every execve of the children it spawns waits for a judge. The
/// listener fd goes to the holder like runc's, and the thread keeps no copy.
pub struct FakeContainer {
    commands: mpsc::Sender<Vec<String>>,
    outcomes: mpsc::Receiver<ExecOutcome>,
    tid: i32,
    thread: Option<JoinHandle<()>>,
}

impl FakeContainer {
    pub fn start(listener: &Path, container_id: &str) -> FakeContainer {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Vec<String>>();
        let (out_tx, out_rx) = mpsc::channel::<ExecOutcome>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<i32, String>>();
        let listener = listener.to_path_buf();
        let id = container_id.to_string();
        let thread = std::thread::spawn(move || {
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            let handed = rce_guard::monitor::filter::install_exec_notify_filter()
                .and_then(|fd| hand_over(&listener, &[fd.as_fd()], &runc_payload(&id, tid, 1024)));
            // The filter's fd is dropped here: the holder has the only copy now.
            let ok = handed.is_ok();
            let _ = ready_tx.send(handed.map(|_| tid).map_err(|e| e.to_string()));
            if !ok {
                return;
            }
            for argv in cmd_rx {
                let t0 = Instant::now();
                let result = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map_err(|e| e.to_string());
                if out_tx
                    .send(ExecOutcome {
                        result,
                        took: t0.elapsed(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        let tid = match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(tid)) => tid,
            Ok(Err(e)) => {
                panic!("the fake container could not install its filter and hand it over: {e}")
            }
            Err(e) => panic!("the fake container did not start: {e}"),
        };
        FakeContainer {
            commands: cmd_tx,
            outcomes: out_rx,
            tid,
            thread: Some(thread),
        }
    }

    /// The thread's id (the "container init" in the payload).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Starts `argv` as a child of the filtered thread (the result comes via [`Self::outcome`]).
    pub fn exec(&self, argv: &[&str]) {
        self.commands
            .send(argv.iter().map(|s| s.to_string()).collect())
            .expect("the fake container's thread is gone");
    }

    pub fn outcome(&self, timeout: Duration) -> Option<ExecOutcome> {
        self.outcomes.recv_timeout(timeout).ok()
    }

    /// Runs `argv` and waits for its outcome.
    pub fn run(&self, argv: &[&str], timeout: Duration) -> ExecOutcome {
        self.exec(argv);
        self.outcome(timeout).unwrap_or_else(|| {
            panic!("{argv:?} in the fake container did not finish within {timeout:?}")
        })
    }

    /// Children of the filtered thread right now.
    pub fn children(&self) -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/self/task/{}/children", self.tid))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // A child stuck in a trapped execve (no judge) would keep the thread waiting for ever.
        for pid in self.children() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let (tx, _) = mpsc::channel();
        self.commands = tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kernel function a task sleeps in (`/proc/<tid>/wchan`).
pub fn wchan(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default()
}

/// The syscall number a task is blocked in (`/proc/<tid>/syscall`), if any.
pub fn blocked_syscall(tid: i32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{tid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
