//! Recognise an exec the kernel notifies twice.
//!
//! A Go runtime (runc itself, and Go programs in containers) retries an `execve` that a signal
//! interrupted while it waited for our answer: same thread, same path and argv, new
//! notification id. Each retry would otherwise be judged, and reported, again. When an answer
//! does not reach its caller (it left the wait), we remember the verdict per (listener,
//! thread) for a short window, as a keyed hash of everything the judge saw that could differ
//! between two execs (program, argv, stdio), and answer an identical retry with the same
//! action. Answers that landed are not remembered: the next exec of that thread is a new one.
//! Because stdio is part of the key, a thread that swaps its fds to a socket and execs the
//! same command again is judged again.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use crate::exec_event::ExecEvent;
use crate::verdict::Action;

/// Fingerprint of what was judged.
pub type Fingerprint = u64;

pub struct RepeatCache {
    window: Duration,
    capacity: usize,
    /// Random keys: a caller cannot craft two different execs with one fingerprint.
    hasher: RandomState,
    last: HashMap<(u64, i32), (Fingerprint, Action, Instant)>,
}

impl RepeatCache {
    pub fn new(window: Duration, capacity: usize) -> Self {
        RepeatCache {
            window,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            last: HashMap::new(),
        }
    }

    pub fn fingerprint(&self, event: &ExecEvent) -> Fingerprint {
        let mut h = self.hasher.build_hasher();
        (event.syscall as u8).hash(&mut h);
        event.program.hash(&mut h);
        event.args.hash(&mut h);
        event.args_truncated.hash(&mut h);
        event.stdio.hash(&mut h);
        h.finish()
    }

    /// The action given to the same exec by this thread within the window, if any.
    pub fn lookup(&self, listener: u64, tid: i32, fp: Fingerprint, now: Instant) -> Option<Action> {
        match self.last.get(&(listener, tid)) {
            Some((seen, action, at)) if *seen == fp && now.duration_since(*at) <= self.window => {
                Some(*action)
            }
            _ => None,
        }
    }

    /// Remember a verdict whose delivery is not (yet) confirmed.
    pub fn record(
        &mut self,
        listener: u64,
        tid: i32,
        fp: Fingerprint,
        action: Action,
        now: Instant,
    ) {
        if self.last.len() >= self.capacity {
            let window = self.window;
            self.last.retain(|_, e| now.duration_since(e.2) <= window);
        }
        if self.last.len() >= self.capacity {
            // Still full of fresh entries: drop the oldest (rare; O(n)).
            if let Some(oldest) = self.last.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| *k) {
                self.last.remove(&oldest);
            }
        }
        self.last.insert((listener, tid), (fp, action, now));
    }

    /// The verdict reached its caller: that exec cannot come back.
    pub fn forget(&mut self, listener: u64, tid: i32, fp: Fingerprint) {
        if self.last.get(&(listener, tid)).is_some_and(|e| e.0 == fp) {
            self.last.remove(&(listener, tid));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_event::{
        ExecAbi, ExecSyscall, ProcessInfo, SocketFamily, SocketProtocol, StdioKind,
    };

    fn event(program: &str, stdio: StdioKind) -> ExecEvent {
        ExecEvent {
            syscall: ExecSyscall::Execve,
            abi: ExecAbi::X86_64,
            tid: 9,
            pid: 9,
            parent_pid: 1,
            program: program.into(),
            args: vec![program.into(), "-c".into()],
            args_truncated: false,
            stdio: [stdio.clone(), stdio.clone(), stdio],
            caller: ProcessInfo {
                pid: 9,
                parent_pid: 1,
                exe: String::new(),
                cmdline: vec![],
            },
            ancestors: vec![],
        }
    }

    #[test]
    fn identical_retry_within_window_is_a_repeat() {
        let mut c = RepeatCache::new(Duration::from_secs(2), 16);
        let t0 = Instant::now();
        let fp = c.fingerprint(&event("/bin/sh", StdioKind::Pipe));
        assert_eq!(c.lookup(1, 9, fp, t0), None);
        c.record(1, 9, fp, Action::Deny, t0);
        assert_eq!(
            c.lookup(1, 9, fp, t0 + Duration::from_millis(10)),
            Some(Action::Deny)
        );
        // Another listener or thread is another exec.
        assert_eq!(c.lookup(2, 9, fp, t0), None);
        assert_eq!(c.lookup(1, 10, fp, t0), None);
        // Outside the window it is judged again.
        assert_eq!(c.lookup(1, 9, fp, t0 + Duration::from_secs(3)), None);
        // Delivered: forgotten.
        c.forget(1, 9, fp);
        assert_eq!(c.lookup(1, 9, fp, t0), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn same_command_with_other_stdio_is_not_a_repeat() {
        let mut c = RepeatCache::new(Duration::from_secs(2), 16);
        let t0 = Instant::now();
        let piped = c.fingerprint(&event("/bin/sh", StdioKind::Pipe));
        c.record(1, 9, piped, Action::Allow, t0);
        let sock = StdioKind::Socket {
            family: SocketFamily::Inet,
            protocol: SocketProtocol::Tcp,
            local: None,
            peer: Some("192.0.2.1:4444".parse().unwrap()),
        };
        let socketed = c.fingerprint(&event("/bin/sh", sock));
        assert_ne!(piped, socketed);
        assert_eq!(c.lookup(1, 9, socketed, t0), None);
        assert_ne!(piped, c.fingerprint(&event("/bin/ls", StdioKind::Pipe)));
    }

    #[test]
    fn capacity_bounds_memory() {
        let mut c = RepeatCache::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        for tid in 0..100 {
            c.record(
                1,
                tid,
                42,
                Action::Allow,
                t0 + Duration::from_millis(tid as u64),
            );
        }
        assert_eq!(c.len(), 8);
        assert_eq!(
            c.lookup(1, 99, 42, t0 + Duration::from_millis(100)),
            Some(Action::Allow)
        );
        assert_eq!(c.lookup(1, 0, 42, t0 + Duration::from_millis(100)), None);
    }
}
