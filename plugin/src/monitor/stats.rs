//! Counters of the monitor, bumped lock-free on the exec path and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A snapshot of the monitor's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MonitorStats {
    /// Execs handed to the judge.
    pub execs_judged: u64,
    /// Answers sent, by action (repeats included).
    pub allowed: u64,
    pub denied: u64,
    pub killed: u64,
    /// Re-notified execs answered from memory, without judging (or reporting) them again.
    pub repeats_answered: u64,
    /// Callers that left the syscall before we answered (interrupted, killed): normal.
    pub vanished: u64,
    /// Trapped syscalls that were not execs (answered CONTINUE).
    pub non_exec_syscalls: u64,
    /// Judge panics (answered ALLOW so that the container keeps working).
    pub judge_panics: u64,
    /// Unexpected errors on a listener (logged).
    pub listener_errors: u64,
    /// Listener fds held right now.
    pub listener_fds_open: u64,
    pub listeners_adopted: u64,
    /// Listener fds dropped because every task of their filter exited (POLLHUP).
    pub listeners_closed: u64,
    /// Handover connections refused (bad peer, payload, fds, deadline).
    pub handovers_refused: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub execs_judged: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub killed: AtomicU64,
    pub repeats_answered: AtomicU64,
    pub vanished: AtomicU64,
    pub non_exec_syscalls: AtomicU64,
    pub judge_panics: AtomicU64,
    pub listener_errors: AtomicU64,
    pub listener_fds_open: AtomicU64,
    pub listeners_adopted: AtomicU64,
    pub listeners_closed: AtomicU64,
    pub handovers_refused: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> MonitorStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MonitorStats {
            execs_judged: g(&self.execs_judged),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            killed: g(&self.killed),
            repeats_answered: g(&self.repeats_answered),
            vanished: g(&self.vanished),
            non_exec_syscalls: g(&self.non_exec_syscalls),
            judge_panics: g(&self.judge_panics),
            listener_errors: g(&self.listener_errors),
            listener_fds_open: g(&self.listener_fds_open),
            listeners_adopted: g(&self.listeners_adopted),
            listeners_closed: g(&self.listeners_closed),
            handovers_refused: g(&self.handovers_refused),
        }
    }
}
