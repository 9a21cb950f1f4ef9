//! Which worker waits on the epoll set, and when.
//!
//! With several threads blocked in `epoll_wait` on one set, a notification wakes one that is
//! waiting. Right after a worker answers, it is usually not waiting yet (the caller it woke
//! runs first), so when that caller execs again at once (a shell, a PATH search) another
//! worker is woken, often on the other CPU; measured here, that ping-pong costs as much CPU
//! as the whole inspection. So one worker (the primary) serves alone and the others stand by.
//!
//! A standby steps in when a worker has been busy with one notification for longer than
//! [`STUCK_AFTER`] (a slow judge, a caller with hostile memory): each worker arms its own
//! one-shot timerfd when it takes a notification and disarms it when done (two cheap
//! syscalls); a timer that fires wakes a standby, which serves until no more workers are
//! stuck than standbys are active. Nothing polls: an idle monitor wakes nobody.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::sys;

/// A worker serving one notification for longer than this counts as stuck.
pub const STUCK_AFTER: Duration = Duration::from_millis(2);

/// epoll data of the shutdown eventfd in the standby set; timers are `1 + worker`.
const WAKE: u64 = 0;

pub struct Roles {
    base: Instant,
    /// Per worker: when it started serving (ns since `base`, plus one), or 0 when idle.
    serving_since: Vec<AtomicU64>,
    /// Per worker: fires when it has served one notification for [`STUCK_AFTER`]. Empty with
    /// a single worker (nobody to call).
    timers: Vec<OwnedFd>,
    /// Where standbys wait: every timer, plus the shutdown eventfd.
    standby_set: Epoll,
    /// Standbys serving right now.
    active_helpers: AtomicUsize,
}

/// What woke a standby.
pub enum Call {
    /// Serve alongside the others until [`Roles::still_needed`] says otherwise.
    Help,
    /// Nothing to do (a timer that fired for a worker that has finished since).
    Nothing,
    /// The wake eventfd: check for shutdown.
    Wake,
}

impl Roles {
    /// `wake` is the monitor's shutdown eventfd (level-triggered once written).
    pub fn new(workers: usize, wake: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        let standby_set = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        standby_set.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let mut timers = Vec::new();
        if workers > 1 {
            for i in 0..workers {
                let t = sys::timerfd_create()?;
                standby_set.add(
                    t.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, 1 + i as u64),
                )?;
                timers.push(t);
            }
        }
        Ok(Roles {
            base: Instant::now(),
            serving_since: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            timers,
            standby_set,
            active_helpers: AtomicUsize::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// Worker `i` took a notification.
    pub fn begin(&self, i: usize) {
        self.serving_since[i].store(self.now(), Ordering::Release);
        if let Some(t) = self.timers.get(i) {
            if let Err(e) = sys::timerfd_set(t.as_fd(), Some(STUCK_AFTER)) {
                tracing::warn!(error = %e, "cannot arm the stuck-worker timer");
            }
        }
    }

    /// Worker `i` is done with its notification.
    pub fn end(&self, i: usize) {
        if let Some(t) = self.timers.get(i) {
            let _ = sys::timerfd_set(t.as_fd(), None);
        }
        self.serving_since[i].store(0, Ordering::Release);
    }

    /// Workers busy with one notification for longer than [`STUCK_AFTER`].
    pub fn stuck(&self) -> usize {
        let now = self.now();
        let limit = STUCK_AFTER.as_nanos() as u64;
        self.serving_since
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&since| since != 0 && now.saturating_sub(since) >= limit)
            .count()
    }

    /// Block a standby until a worker looks stuck (or the wake eventfd is written).
    pub fn wait_for_call(&self) -> Call {
        let mut events = [EpollEvent::empty(); 1];
        match self.standby_set.wait(&mut events, EpollTimeout::NONE) {
            Ok(1) => {}
            _ => return Call::Nothing,
        }
        let token = events[0].data();
        if token == WAKE {
            return Call::Wake;
        }
        // Consume the expiry (level-triggered), whoever gets here first.
        if let Some(t) = self.timers.get(token as usize - 1) {
            let mut buf = [0u8; 8];
            if rustix::io::read(t, &mut buf).is_err() {
                return Call::Nothing;
            }
        }
        self.enlist()
    }

    /// Become an active helper if more workers are stuck than helpers are active.
    fn enlist(&self) -> Call {
        let stuck = self.stuck();
        let mut active = self.active_helpers.load(Ordering::Acquire);
        while stuck > active {
            match self.active_helpers.compare_exchange(
                active,
                active + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Call::Help,
                Err(now) => active = now,
            }
        }
        Call::Nothing
    }

    /// An active helper asks whether it is still needed; if not, it is counted out.
    pub fn still_needed(&self) -> bool {
        let stuck = self.stuck();
        let mut active = self.active_helpers.load(Ordering::Acquire);
        while active > stuck {
            match self.active_helpers.compare_exchange(
                active,
                active - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return false,
                Err(now) => active = now,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::eventfd::{EfdFlags, EventFd};

    use super::*;

    fn roles(workers: usize) -> (Roles, EventFd) {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap();
        (Roles::new(workers, wake.as_fd()).unwrap(), wake)
    }

    #[test]
    fn a_stuck_worker_calls_one_standby_and_lets_it_go_after() {
        let (r, _wake) = roles(3);
        r.begin(0);
        // The timer fires after STUCK_AFTER: one standby is called.
        assert!(matches!(r.wait_for_call(), Call::Help));
        assert_eq!(r.active_helpers.load(Ordering::Acquire), 1);
        // One stuck worker needs one helper, not two.
        assert!(matches!(r.enlist(), Call::Nothing));
        assert!(r.still_needed());
        r.end(0);
        assert!(
            !r.still_needed(),
            "the stuck worker is done: the helper stands by again"
        );
        assert_eq!(r.active_helpers.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_quick_notification_wakes_nobody() {
        let (r, wake) = roles(2);
        r.begin(0);
        r.end(0);
        std::thread::sleep(STUCK_AFTER * 3);
        // Only the wake eventfd, once written, reaches the standby.
        wake.write(1).unwrap();
        assert!(matches!(r.wait_for_call(), Call::Wake));
    }

    #[test]
    fn one_worker_needs_no_timers() {
        let (r, _wake) = roles(1);
        assert!(r.timers.is_empty());
        r.begin(0);
        r.end(0);
        assert_eq!(r.stuck(), 0);
    }
}
