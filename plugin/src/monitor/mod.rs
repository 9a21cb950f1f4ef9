//! The seccomp-notify monitor: takes over the runtime's seccomp listener fds and answers every
//! `execve`/`execveat` in the watched containers, in-line, after asking an [`ExecJudge`].
//!
//! Data flow, one file each:
//! - [`handover`]: the listener socket runc/crun connect to (peer check, payload, fds);
//!   [`MonitorHandle::adopt`] is the same entry point for any other producer of fds;
//! - `notify`: one epoll set, a fixed pool of workers, one notification per wake-up;
//! - [`inspect`]: what the caller is about to run and what its fds 0-2 are (pure logic behind
//!   the [`inspect::Target`] trait), `target`: the live implementation;
//! - [`sys`]: the syscalls, and all `unsafe` of the project; [`filter`]: the exec-notify BPF
//!   program (for tests and benchmarks, which play the runtime);
//! - `repeat`: recognises execs the kernel re-notifies after an interrupted wait.

pub mod abi;
pub mod filter;
pub mod handover;
pub mod inspect;
mod notify;
mod repeat;
mod stats;
pub mod sys;
pub mod target;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use handover::{
    hand_over, send_handover, BindError, HandoverError, PayloadError, ProcessState,
};
pub use inspect::InspectLimits;
pub use notify::WatchedSummary;
pub use stats::MonitorStats;

use crate::exec_event::ExecEvent;
use crate::verdict::{ExecJudge, WatchedContainer};

/// Default path of the listener socket (the `listenerPath` of our seccomp rule).
pub const DEFAULT_LISTENER_PATH: &str = "/run/rce-guard/monitor.sock";

/// When to collect the caller's exe, cmdline and ancestor chain (/proc reads, the costly part
/// of inspection) before judging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallerContext {
    /// For every exec.
    Always,
    /// Only when one of fds 0-2 is a socket of any family: the only execs a finding can be
    /// about. Other execs reach the judge with `caller.exe`, `caller.cmdline` and
    /// `ancestors` empty.
    #[default]
    WhenStdioIsSocket,
    /// Never (pid and parent pid are still filled).
    Never,
}

impl CallerContext {
    fn wants(&self, event: &ExecEvent) -> bool {
        match self {
            CallerContext::Always => true,
            CallerContext::WhenStdioIsSocket => event
                .stdio
                .iter()
                .any(|s| matches!(s, crate::exec_event::StdioKind::Socket { .. })),
            CallerContext::Never => false,
        }
    }
}

/// A change in the set of listener fds, for callers that track coverage.
#[derive(Debug)]
pub enum ListenerEvent<'a> {
    /// A listener fd arrived; `listener_fds` now held for this container.
    Adopted {
        container: &'a WatchedContainer,
        listener_fds: usize,
    },
    /// A listener fd was dropped (all its tasks exited); `listener_fds` left for the container.
    Closed {
        container: &'a WatchedContainer,
        listener_fds: usize,
    },
}

/// Called from monitor threads on every [`ListenerEvent`]; must not block.
pub type ListenerHook = Arc<dyn Fn(ListenerEvent<'_>) + Send + Sync>;

/// How the monitor runs.
#[derive(Clone)]
pub struct MonitorConfig {
    /// Unix socket runc/crun hand fds to. Empty: no socket; fds arrive only via `adopt`.
    pub listener_path: PathBuf,
    /// Worker threads answering notifications (all containers share them).
    pub workers: usize,
    /// Bound on one handover connection, from accept to EOF.
    pub handover_deadline: Duration,
    /// Largest accepted handover payload.
    pub max_payload: usize,
    /// Handover connections read at once; more wait in the listen backlog (not refused).
    pub max_concurrent_handovers: usize,
    pub limits: InspectLimits,
    pub caller_context: CallerContext,
    pub on_listener: Option<ListenerHook>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            listener_path: PathBuf::from(DEFAULT_LISTENER_PATH),
            workers: 2,
            handover_deadline: Duration::from_secs(5),
            max_payload: 64 * 1024,
            max_concurrent_handovers: 256,
            limits: InspectLimits::default(),
            caller_context: CallerContext::default(),
            on_listener: None,
        }
    }
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("listener_path", &self.listener_path)
            .field("workers", &self.workers)
            .field("handover_deadline", &self.handover_deadline)
            .field("max_payload", &self.max_payload)
            .field("max_concurrent_handovers", &self.max_concurrent_handovers)
            .field("limits", &self.limits)
            .field("caller_context", &self.caller_context)
            .field("on_listener", &self.on_listener.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// Why the monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the kernel has no seccomp user notification (SECCOMP_GET_NOTIF_SIZES): {0}")]
    NoUserNotif(#[source] io::Error),
    #[error("cannot set up epoll: {0}")]
    Epoll(#[source] io::Error),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start a monitor thread: {0}")]
    Thread(#[source] io::Error),
    #[error("monitor.workers must be at least 1")]
    NoWorkers,
}

/// Why a listener fd was not adopted (it is closed).
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("the fd is not a seccomp listener")]
    NotSeccompListener,
    #[error("cannot add the listener to epoll: {0}")]
    Epoll(#[source] io::Error),
    #[error("the monitor is shutting down")]
    ShuttingDown,
}

/// Identifies one adopted listener fd.
pub type ListenerId = u64;

/// A running monitor.
pub struct MonitorHandle {
    engine: Arc<notify::Engine>,
    workers: Vec<JoinHandle<()>>,
    socket: Option<Acceptor>,
    max_payload: usize,
}

/// The thread serving the listener socket.
struct Acceptor {
    path: PathBuf,
    listener: Arc<UnixListener>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<()>,
}

/// Start the workers and, unless `listener_path` is empty, the listener socket.
pub fn start(cfg: MonitorConfig, judge: Arc<dyn ExecJudge>) -> Result<MonitorHandle, MonitorError> {
    if cfg.workers == 0 {
        return Err(MonitorError::NoWorkers);
    }
    sys::notif_sizes().map_err(MonitorError::NoUserNotif)?;
    raise_fd_limit();
    let engine = Arc::new(
        notify::Engine::new(
            judge,
            cfg.limits.clone(),
            cfg.caller_context,
            cfg.on_listener.clone(),
        )
        .map_err(MonitorError::Epoll)?,
    );
    let mut handle = MonitorHandle {
        engine: engine.clone(),
        workers: Vec::new(),
        socket: None,
        max_payload: cfg.max_payload,
    };
    for i in 0..cfg.workers {
        let e = engine.clone();
        let t = std::thread::Builder::new()
            .name(format!("rce-guard-notify-{i}"))
            .spawn(move || e.run_worker())
            .map_err(MonitorError::Thread)?;
        handle.workers.push(t);
    }
    if !cfg.listener_path.as_os_str().is_empty() {
        let listener = Arc::new(handover::bind(&cfg.listener_path)?);
        let acceptor_cfg = handover::AcceptorConfig {
            deadline: cfg.handover_deadline,
            max_payload: cfg.max_payload,
            max_connections: cfg.max_concurrent_handovers.max(1),
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, e, s) = (listener.clone(), engine.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rce-guard-accept".into())
            .spawn(move || handover::accept_loop(l, e, acceptor_cfg, s))
            .map_err(MonitorError::Thread)?;
        handle.socket = Some(Acceptor {
            path: cfg.listener_path.clone(),
            listener,
            stop,
            thread,
        });
        tracing::info!(path = %cfg.listener_path.display(), workers = cfg.workers, "seccomp monitor listening");
    }
    Ok(handle)
}

impl MonitorHandle {
    /// Watch a listener fd; `payload` is the runtime's raw `ContainerProcessState` JSON (the
    /// identity comes from it). The fd is closed on error.
    pub fn adopt(&self, fd: OwnedFd, payload: &[u8]) -> Result<ListenerId, AdoptError> {
        let state = handover::parse_payload(payload, self.max_payload)?;
        self.engine.adopt(fd, state.watched_container())
    }

    /// Watch a listener fd for an already known container.
    pub fn adopt_container(
        &self,
        fd: OwnedFd,
        container: WatchedContainer,
    ) -> Result<ListenerId, AdoptError> {
        self.engine.adopt(fd, container)
    }

    pub fn stats(&self) -> MonitorStats {
        self.engine.counters.snapshot()
    }

    /// The containers watched now, with how many listener fds each.
    pub fn watched(&self) -> Vec<WatchedSummary> {
        self.engine.watched()
    }

    /// Stops answering notifications (each worker finishes the one it is on) while keeping
    /// every listener fd open: for handing over to another judge, which then receives what
    /// arrives next. Workers are not joined: one blocked in a receive that the other judge won
    /// stays blocked harmlessly until the process ends.
    pub fn stop_judging(&self) {
        self.engine.stop();
    }

    /// Path of the listener socket, if one is served.
    pub fn listener_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|a| a.path.as_path())
    }

    /// Stop accepting and answering, and hand back every listener fd. Dropping them makes the
    /// watched containers' execs fail with ENOSYS: give them to a holder if that matters.
    pub fn shutdown(mut self) -> Vec<(WatchedContainer, OwnedFd)> {
        self.stop_threads();
        self.engine.take_listeners()
    }

    fn stop_threads(&mut self) {
        if let Some(a) = self.socket.take() {
            a.stop.store(true, std::sync::atomic::Ordering::Release);
            // A shut-down listening socket polls readable: that wakes the acceptor.
            let _ = rustix::net::shutdown(&*a.listener, rustix::net::Shutdown::Both);
            let _ = a.thread.join();
            let _ = std::fs::remove_file(&a.path);
        }
        self.engine.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Each watched container costs one fd per listener (and more per `runc exec`); the default
/// soft limit of 1024 is too low for a busy node.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use super::*;
    use crate::exec_event::ExecEvent;
    use crate::verdict::Action;

    struct Allow;
    impl ExecJudge for Allow {
        fn judge(&self, _: &WatchedContainer, _: &ExecEvent) -> Action {
            Action::Allow
        }
    }

    #[test]
    fn shutdown_is_prompt_and_idle_with_connections_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let cfg = MonitorConfig {
            listener_path: path.clone(),
            ..MonitorConfig::default()
        };
        let mon = start(cfg, Arc::new(Allow)).unwrap();
        assert_eq!(mon.listener_path(), Some(path.as_path()));
        let _stalled = UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(mon.shutdown().len()));
        let released = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("shutdown returns");
        assert_eq!(released, 0);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "shutdown took {:?}",
            t0.elapsed()
        );
        assert!(!path.exists(), "socket file removed");
    }

    #[test]
    fn adopt_rejects_what_is_not_a_listener() {
        let cfg = MonitorConfig {
            listener_path: PathBuf::new(),
            ..MonitorConfig::default()
        };
        let mon = start(cfg, Arc::new(Allow)).unwrap();
        assert_eq!(mon.listener_path(), None);
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let payload = br#"{"fds":["seccompFd"],"state":{"id":"c1","pid":1}}"#;
        assert!(matches!(
            mon.adopt(null, payload),
            Err(AdoptError::NotSeccompListener)
        ));
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(matches!(
            mon.adopt(null, b"nope"),
            Err(AdoptError::Payload(_))
        ));
        assert!(mon.watched().is_empty());
        assert!(matches!(
            start(
                MonitorConfig {
                    workers: 0,
                    ..MonitorConfig::default()
                },
                Arc::new(Allow)
            ),
            Err(MonitorError::NoWorkers)
        ));
    }
}
