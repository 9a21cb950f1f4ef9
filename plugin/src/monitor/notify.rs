//! The notify loop: every adopted listener fd sits in one epoll set with `EPOLLONESHOT`, and a
//! small fixed pool of worker threads waits on it. A ready fd goes to exactly one worker,
//! which receives a notification, inspects, judges, answers, serves the fd's further pending
//! notifications (a bounded few), and re-arms it. So a fd is never RECV'd by two threads at
//! once (RECV would block the second), a slow container holds at most one worker, and a busy
//! one cannot starve the others: after its fair share its fd goes back behind the other
//! ready fds.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::exec_event::{ExecEvent, ProcessInfo, StdioKind};
use crate::verdict::{Action, ExecJudge, WatchedContainer};

use super::abi::{self, ExecCall};
use super::inspect::{self, InspectLimits, Vanished};
use super::repeat::RepeatCache;
use super::stats::{bump, Counters};
use super::sys::{self, Reply};
use super::target::LiveTarget;
use super::{AdoptError, CallerContext, ListenerEvent, ListenerHook};

/// epoll data of the shutdown eventfd; listener tokens start above it.
const WAKE_TOKEN: u64 = 0;

/// Notifications served from one fd in a row before it goes back behind the other ready fds.
const FAIR_SHARE: usize = 16;

/// How long a judged exec is remembered to recognise the kernel re-notifying it.
const REPEAT_WINDOW: Duration = Duration::from_secs(2);
const REPEAT_CAPACITY: usize = 4096;

/// One adopted seccomp listener fd.
pub(crate) struct Listener {
    token: u64,
    fd: OwnedFd,
    container: WatchedContainer,
    /// Caller of the last notification served (to spot a thread exec'ing in a row).
    last_tid: AtomicI32,
}

/// Everything the workers share.
pub(crate) struct Engine {
    epoll: Epoll,
    wake: EventFd,
    listeners: Mutex<HashMap<u64, Arc<Listener>>>,
    next_token: AtomicU64,
    judge: Arc<dyn ExecJudge>,
    pub(crate) counters: Counters,
    repeats: Mutex<RepeatCache>,
    limits: InspectLimits,
    context: CallerContext,
    stopping: AtomicBool,
    hook: Option<ListenerHook>,
}

/// Per-container view of the listeners, for coverage checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WatchedSummary {
    pub container_id: String,
    /// Listener fds held for this container (init, plus one per live `runc exec`).
    pub listener_fds: usize,
    pub init_pid: i32,
    pub identity: crate::identity::ContainerIdentity,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub(crate) fn new(
        judge: Arc<dyn ExecJudge>,
        limits: InspectLimits,
        context: CallerContext,
        hook: Option<ListenerHook>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        // Level-triggered and never read: once written, every worker sees it and exits.
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
        )?;
        Ok(Engine {
            epoll,
            wake,
            listeners: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
            judge,
            counters: Counters::default(),
            repeats: Mutex::new(RepeatCache::new(REPEAT_WINDOW, REPEAT_CAPACITY)),
            limits,
            context,
            stopping: AtomicBool::new(false),
            hook,
        })
    }

    /// Start watching `fd` for `container`. Returns the listener's token.
    pub(crate) fn adopt(
        &self,
        fd: OwnedFd,
        container: WatchedContainer,
    ) -> Result<u64, AdoptError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(AdoptError::ShuttingDown);
        }
        if !is_seccomp_listener(fd.as_fd()) {
            return Err(AdoptError::NotSeccompListener);
        }
        match sys::notif_set_sync_wakeup(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("kernel has no SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP"),
            Err(e) => tracing::debug!(error = %e, "cannot set SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP"),
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let listener = Arc::new(Listener {
            token,
            fd,
            container,
            last_tid: AtomicI32::new(0),
        });
        // In the map before epoll can report it, so a worker always finds it.
        let fds_for_container = {
            let mut map = lock(&self.listeners);
            map.insert(token, listener.clone());
            count_for(&map, &listener.container.container_id)
        };
        if let Err(e) = self.epoll.add(listener.fd.as_fd(), interest(token)) {
            lock(&self.listeners).remove(&token);
            return Err(AdoptError::Epoll(e.into()));
        }
        bump(&self.counters.listeners_adopted);
        bump(&self.counters.listener_fds_open);
        tracing::info!(
            container_id = %listener.container.container_id,
            pod_namespace = %listener.container.identity.pod_namespace,
            pod_name = %listener.container.identity.pod_name,
            container_name = %listener.container.identity.container_name,
            listener_fds = fds_for_container,
            "watching container execs"
        );
        if let Some(hook) = &self.hook {
            hook(ListenerEvent::Adopted {
                container: &listener.container,
                listener_fds: fds_for_container,
            });
        }
        Ok(token)
    }

    /// Body of one worker thread.
    pub(crate) fn run_worker(&self) {
        let mut events = [EpollEvent::empty(); 1];
        loop {
            match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed");
                    bump(&self.counters.listener_errors);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let ev = events[0];
            if ev.data() != WAKE_TOKEN {
                self.on_ready(ev.data(), ev.events());
            }
        }
    }

    fn on_ready(&self, token: u64, flags: EpollFlags) {
        let Some(listener) = lock(&self.listeners).get(&token).cloned() else {
            return;
        };
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            // Every task of the filter has exited: RECV would now fail at once, forever.
            self.close(token, "every task using the filter has exited");
            return;
        }
        if flags.contains(EpollFlags::EPOLLIN) {
            // Serve this fd while it has notifications pending, up to a fair share. A caller
            // that execs again right after our answer (a PATH search, a shell loop) is then
            // served by this worker directly: re-arming would hand the next notification to
            // another worker (this one is usually not back in epoll_wait yet, the caller it
            // woke ran first), often on the other CPU, which measured as costly as the whole
            // inspection.
            for _ in 0..FAIR_SHARE {
                let served = match self.serve_one(&listener) {
                    Ok(tid) => tid,
                    Err(e) => {
                        tracing::error!(container_id = %listener.container.container_id, error = %e, "listener fd broken");
                        bump(&self.counters.listener_errors);
                        self.close(token, "listener fd broken");
                        return;
                    }
                };
                // Only a thread that just exec'd twice in a row is likely to do it again at
                // once; for others the extra poll costs more than it saves.
                let previous = listener.last_tid.swap(served, Ordering::Relaxed);
                if served == 0 || served != previous {
                    break;
                }
                match poll_now(listener.fd.as_fd()) {
                    Readiness::Pending => continue,
                    Readiness::Idle => break,
                    Readiness::HungUp => {
                        self.close(token, "every task using the filter has exited");
                        return;
                    }
                }
            }
        }
        self.rearm(&listener);
    }

    /// Let epoll report the fd again. Only after the answer is sent and a possible repeat is
    /// recorded: a retry of the same exec (the caller's wait was interrupted) must not be
    /// served before its verdict is known.
    fn rearm(&self, l: &Listener) {
        if let Err(e) = self.epoll.modify(l.fd.as_fd(), &mut interest(l.token)) {
            // Only fails if the fd is no longer in the set (shutdown).
            tracing::debug!(error = %e, "cannot re-arm listener");
        }
    }

    /// Receive one notification and answer it; returns the caller's tid (0 if none). `Err`
    /// only when the listener itself is broken.
    fn serve_one(&self, l: &Listener) -> io::Result<i32> {
        let notif = match sys::notif_recv(l.fd.as_fd()) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINTR)) => {
                bump(&self.counters.vanished);
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let notif_tid = notif.tid as i32;
        let Some(call) = abi::decode(notif.arch, notif.nr) else {
            // Not ours to judge (another rule of the profile); let it run.
            bump(&self.counters.non_exec_syscalls);
            self.send(l, notif.id, Reply::Continue);
            return Ok(notif_tid);
        };
        let target = match notif.tid {
            // The caller is outside our pid namespace: nothing of it can be read.
            0 => None,
            _ => match LiveTarget::attach(l.fd.as_fd(), &notif) {
                Ok(Some(t)) => Some(t),
                Ok(None) => {
                    bump(&self.counters.vanished);
                    return Ok(notif_tid);
                }
                Err(e) => {
                    tracing::warn!(tid = notif.tid, error = %e, "cannot open the caller's pidfd; judging without inspection");
                    bump(&self.counters.listener_errors);
                    None
                }
            },
        };
        let Some(target) = target else {
            let action = self.judge(l, &unseen_event(call, notif.tid as i32));
            self.answer(l, notif.id, action, None);
            return Ok(notif_tid);
        };
        let Ok(mut event) = inspect::inspect_exec(&target, call, &notif.args, &self.limits) else {
            bump(&self.counters.vanished);
            return Ok(notif_tid);
        };
        let tid = event.tid;
        let (fingerprint, repeat) = {
            let r = lock(&self.repeats);
            let fp = r.fingerprint(&event);
            (fp, r.lookup(l.token, tid, fp, Instant::now()))
        };
        let action = match repeat {
            Some(action) => {
                bump(&self.counters.repeats_answered);
                action
            }
            None => {
                if self.context.wants(&event) {
                    let init = l.container.init_pid;
                    if let Err(Vanished) =
                        inspect::add_caller_context(&target, &mut event, init, &self.limits)
                    {
                        bump(&self.counters.vanished);
                        return Ok(notif_tid);
                    }
                }
                self.judge(l, &event)
            }
        };
        let delivered = self.answer(l, notif.id, action, Some(target.pidfd()));
        let mut repeats = lock(&self.repeats);
        if delivered {
            // That exec is done with: the next identical one of this thread is a new exec.
            repeats.forget(l.token, tid, fingerprint);
        } else {
            // The caller left the wait before the answer landed: if it was only interrupted,
            // the kernel notifies this exec again once the fd is re-armed (after this).
            repeats.record(l.token, tid, fingerprint, action, Instant::now());
        }
        Ok(notif_tid)
    }

    fn judge(&self, l: &Listener, event: &ExecEvent) -> Action {
        bump(&self.counters.execs_judged);
        match catch_unwind(AssertUnwindSafe(|| self.judge.judge(&l.container, event))) {
            Ok(action) => action,
            Err(_) => {
                // Failing open keeps the container usable; the panic is loud in the log.
                bump(&self.counters.judge_panics);
                tracing::error!(container_id = %l.container.container_id, program = %event.program, "judge panicked; exec allowed");
                Action::Allow
            }
        }
    }

    /// Send the kernel our answer. In kill mode the SIGKILL goes first: the caller, blocked in
    /// the syscall, then never runs another instruction (an EPERM first would let it return
    /// to user space, print, exit or fork before the signal lands). The EPERM still follows,
    /// so the exec is denied even if the kill failed.
    /// Returns whether the answer reached a waiting caller.
    fn answer(&self, l: &Listener, id: u64, action: Action, pidfd: Option<BorrowedFd<'_>>) -> bool {
        let killed = match (action, pidfd) {
            (Action::Kill, Some(p)) => match sys::pidfd_kill(p) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(container_id = %l.container.container_id, error = %e, "kill mode: cannot SIGKILL the caller; denying only");
                    false
                }
            },
            (Action::Kill, None) => {
                tracing::warn!(container_id = %l.container.container_id, "kill mode: caller not visible; denying only");
                false
            }
            _ => false,
        };
        let reply = match action {
            Action::Allow => Reply::Continue,
            Action::Deny | Action::Kill => Reply::Fail(libc::EPERM),
        };
        let landed = match sys::notif_send(l.fd.as_fd(), id, reply) {
            Ok(()) => true,
            // Killed callers leave at once; only count the unexpected departures.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if !killed {
                    bump(&self.counters.vanished)
                }
                false
            }
            Err(e) => {
                tracing::warn!(container_id = %l.container.container_id, error = %e, "NOTIF_SEND failed");
                bump(&self.counters.listener_errors);
                false
            }
        };
        match action {
            Action::Allow => bump(&self.counters.allowed),
            Action::Kill if killed => bump(&self.counters.killed),
            Action::Deny | Action::Kill => bump(&self.counters.denied),
        }
        landed
    }

    fn send(&self, l: &Listener, id: u64, reply: Reply) {
        match sys::notif_send(l.fd.as_fd(), id, reply) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => bump(&self.counters.vanished),
            Err(e) => {
                tracing::warn!(container_id = %l.container.container_id, error = %e, "NOTIF_SEND failed");
                bump(&self.counters.listener_errors);
            }
        }
    }

    fn close(&self, token: u64, why: &str) {
        let (removed, remaining) = {
            let mut map = lock(&self.listeners);
            let removed = map.remove(&token);
            let remaining = removed
                .as_ref()
                .map(|l| count_for(&map, &l.container.container_id));
            (removed, remaining.unwrap_or(0))
        };
        let Some(l) = removed else { return };
        let _ = self.epoll.delete(l.fd.as_fd());
        self.counters
            .listener_fds_open
            .fetch_sub(1, Ordering::Relaxed);
        bump(&self.counters.listeners_closed);
        tracing::info!(container_id = %l.container.container_id, listener_fds = remaining, reason = why, "listener fd closed");
        if let Some(hook) = &self.hook {
            hook(ListenerEvent::Closed {
                container: &l.container,
                listener_fds: remaining,
            });
        }
    }

    pub(crate) fn watched(&self) -> Vec<WatchedSummary> {
        let map = lock(&self.listeners);
        let mut by_id: HashMap<&str, WatchedSummary> = HashMap::new();
        for l in map.values() {
            let c = &l.container;
            by_id
                .entry(&c.container_id)
                .or_insert_with(|| WatchedSummary {
                    container_id: c.container_id.clone(),
                    listener_fds: 0,
                    init_pid: c.init_pid,
                    identity: c.identity.clone(),
                })
                .listener_fds += 1;
        }
        let mut out: Vec<WatchedSummary> = by_id.into_values().collect();
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        out
    }

    /// Ask the workers to exit (they notice within one wake-up).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            tracing::error!(error = %e, "cannot wake the monitor workers");
        }
    }

    /// After the workers exited: hand back every listener fd with its container.
    pub(crate) fn take_listeners(&self) -> Vec<(WatchedContainer, OwnedFd)> {
        let drained: Vec<Arc<Listener>> = lock(&self.listeners).drain().map(|(_, l)| l).collect();
        self.counters.listener_fds_open.store(0, Ordering::Relaxed);
        drained
            .into_iter()
            .filter_map(|l| Arc::try_unwrap(l).ok())
            .map(|l| {
                let _ = self.epoll.delete(l.fd.as_fd());
                (l.container, l.fd)
            })
            .collect()
    }
}

enum Readiness {
    Pending,
    Idle,
    HungUp,
}

/// Non-blocking poll of one listener fd.
fn poll_now(fd: BorrowedFd<'_>) -> Readiness {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => {
            let r = fds[0].revents().unwrap_or(PollFlags::empty());
            if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                Readiness::HungUp
            } else if r.contains(PollFlags::POLLIN) {
                Readiness::Pending
            } else {
                Readiness::Idle
            }
        }
        _ => Readiness::Idle,
    }
}

fn interest(token: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token)
}

fn count_for(map: &HashMap<u64, Arc<Listener>>, container_id: &str) -> usize {
    map.values()
        .filter(|l| l.container.container_id == container_id)
        .count()
}

/// Only seccomp listener fds are accepted: anything else would make RECV fail forever.
fn is_seccomp_listener(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::readlink(link.as_str(), Vec::new()) {
        Ok(target) => target.as_bytes() == b"anon_inode:seccomp notify",
        Err(_) => false,
    }
}

/// The event for a caller we cannot look at (outside our pid namespace, or no pidfd).
fn unseen_event(call: ExecCall, tid: i32) -> ExecEvent {
    ExecEvent {
        syscall: call.syscall,
        abi: call.abi,
        tid,
        pid: tid,
        parent_pid: 0,
        program: String::new(),
        args: Vec::new(),
        args_truncated: true,
        stdio: [StdioKind::Unknown, StdioKind::Unknown, StdioKind::Unknown],
        caller: ProcessInfo {
            pid: tid,
            parent_pid: 0,
            exe: String::new(),
            cmdline: Vec::new(),
        },
        ancestors: Vec::new(),
    }
}
