//! The agent's side of the fd holder: make sure a holder runs, feed every listener fd it holds
//! into the monitor, recover execs a previous judge left unanswered, and survive the holder's
//! own death (start a new one and give it back every fd).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::holder::{HolderEvent, HolderLink};
use crate::monitor::handover::parse_payload;
use crate::monitor::MonitorHandle;

/// What `rce-guard status` shows about the holder.
#[derive(Debug, Default)]
pub struct HolderState {
    pub connected: AtomicBool,
    pub adopted: AtomicU64,
    pub holder_losses: AtomicU64,
    pub recovered_execs: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct HolderStatus {
    pub connected: bool,
    pub adopted: u64,
    pub holder_losses: u64,
    pub recovered_execs: u64,
    pub refused: u64,
}

impl HolderState {
    pub fn snapshot(&self) -> HolderStatus {
        HolderStatus {
            connected: self.connected.load(Ordering::Relaxed),
            adopted: self.adopted.load(Ordering::Relaxed),
            holder_losses: self.holder_losses.load(Ordering::Relaxed),
            recovered_execs: self.recovered_execs.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HolderPaths {
    pub listener: PathBuf,
    pub control: PathBuf,
    pub json_logs: bool,
    /// Start a holder when none answers (off: one runs as its own container; wait for it).
    pub start_holder: bool,
    pub when_replaced: crate::config::WhenReplaced,
}

/// The holder binary: next to our own executable.
fn holder_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rce-guard-holder")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("rce-guard-holder"))
}

fn spawn_holder(paths: &HolderPaths) -> anyhow::Result<()> {
    let bin = holder_binary();
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--listener")
        .arg(&paths.listener)
        .arg("--control")
        .arg(&paths.control);
    if paths.json_logs {
        cmd.arg("--log-json");
    }
    use std::os::unix::process::CommandExt;
    // Its own process group: a signal meant for the agent's group does not reach it.
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the fd holder {}", bin.display()))?;
    tracing::info!(pid = child.id(), binary = %bin.display(), "started the fd holder");
    // Reap it if it ever exits while we live, so it does not linger as a zombie.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

fn connect_with_retry(control: &Path, for_how_long: Duration) -> Option<HolderLink> {
    let deadline = Instant::now() + for_how_long;
    loop {
        if let Ok(link) = HolderLink::connect(control) {
            return Some(link);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to a running holder, or starts one and connects.
pub fn connect_or_spawn(paths: &HolderPaths) -> anyhow::Result<HolderLink> {
    if let Ok(link) = HolderLink::connect(&paths.control) {
        tracing::info!(control = %paths.control.display(), "connected to the running fd holder");
        return Ok(link);
    }
    if !paths.start_holder {
        // The holder is someone else's to run (its own container): wait for it, saying so.
        loop {
            tracing::warn!(control = %paths.control.display(), "waiting for the fd holder (monitor.start_holder = false)");
            if let Some(link) = connect_with_retry(&paths.control, Duration::from_secs(10)) {
                tracing::info!(control = %paths.control.display(), "connected to the fd holder");
                return Ok(link);
            }
        }
    }
    spawn_holder(paths)?;
    connect_with_retry(&paths.control, Duration::from_secs(5)).with_context(|| {
        format!(
            "the fd holder did not open {} within 5 s",
            paths.control.display()
        )
    })
}

/// An entry we adopted: kept (payload + a copy of the fd) so that a new holder can be given
/// it back if the holder dies.
struct Kept {
    payload: Vec<u8>,
    fd: OwnedFd,
}

fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::empty(),
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut p, Some(&zero)), Ok(n) if n > 0)
}

/// Runs the link until the process ends: adopts entries, handles replacement and holder loss.
pub fn run(
    mut link: HolderLink,
    paths: HolderPaths,
    monitor: Arc<MonitorHandle>,
    state: Arc<HolderState>,
) {
    let mut kept: HashMap<u64, Kept> = HashMap::new();
    // Entries whose containers are gone are pruned when the map has doubled since the last
    // prune (one poll per entry): pruning on every adoption would cost O(n^2) polls during
    // the initial sync of n entries, while execs wait.
    let mut prune_at = 64usize;
    let mut first_sync = true;
    state.connected.store(true, Ordering::Relaxed);
    loop {
        let event = match link.next_event() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "bad message from the fd holder; reconnecting");
                HolderEvent::Closed
            }
        };
        match event {
            HolderEvent::Entry { id, fds, payload } => {
                if kept.contains_key(&id) {
                    continue; // a resync after reconnecting: we have it already
                }
                match adopt(&monitor, fds, &payload) {
                    Ok(copy) => {
                        state.adopted.fetch_add(1, Ordering::Relaxed);
                        kept.insert(id, Kept { payload, fd: copy });
                        if kept.len() >= prune_at {
                            kept.retain(|_, k| !hung_up(k.fd.as_fd()));
                            prune_at = (kept.len() * 2).max(64);
                        }
                    }
                    Err(e) => {
                        state.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, entry = id, "listener fd from the holder not adopted");
                    }
                }
            }
            HolderEvent::SyncDone { entries } => {
                tracing::info!(
                    entries,
                    adopted_total = kept.len(),
                    "synchronized with the fd holder"
                );
                if first_sync {
                    first_sync = false;
                    recover_in_background(monitor.clone(), state.clone());
                }
            }
            HolderEvent::Replaced => {
                tracing::warn!("another agent connected to the fd holder and takes over; this one stops judging and exits");
                state.connected.store(false, Ordering::Relaxed);
                hand_off(monitor, paths.when_replaced);
            }
            HolderEvent::Closed => {
                state.connected.store(false, Ordering::Relaxed);
                // After an upgrade the successor already serves the same sockets when the old
                // holder closes our connection (it exits only once the successor confirmed),
                // so a connect succeeds at once; after a crash it is refused at once. Wait
                // only briefly: while no holder runs, runc cannot hand over new fds.
                if let Some(l) = connect_with_retry(&paths.control, Duration::from_millis(300)) {
                    tracing::info!("reconnected to the fd holder");
                    link = l;
                    state.connected.store(true, Ordering::Relaxed);
                    continue;
                }
                state.holder_losses.fetch_add(1, Ordering::Relaxed);
                kept.retain(|_, k| !hung_up(k.fd.as_fd()));
                tracing::error!(
                    containers_at_risk = kept.len(),
                    "the fd holder died: watched containers keep working while this agent runs, but an agent restart now would break exec in them; starting a new holder"
                );
                match connect_or_spawn(&paths) {
                    Ok(l) => {
                        link = l;
                        let mut given = 0;
                        for (id, k) in &kept {
                            match link.adopt(*id, &[k.fd.as_fd()], &k.payload) {
                                Ok(()) => given += 1,
                                Err(e) => {
                                    tracing::error!(error = %e, entry = id, "cannot give a listener fd to the new holder")
                                }
                            }
                        }
                        tracing::warn!(
                            given,
                            "new fd holder running; listener fds handed back to it"
                        );
                        state.connected.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot restart the fd holder; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

/// Adopts the seccomp fd of one entry and returns a copy of it.
fn adopt(monitor: &MonitorHandle, fds: Vec<OwnedFd>, payload: &[u8]) -> anyhow::Result<OwnedFd> {
    let state = parse_payload(payload, crate::holder::wire::MAX_PAYLOAD)?;
    let fd = state.take_seccomp_fd(fds)?;
    let copy = fd.try_clone()?;
    monitor.adopt_container(fd, state.watched_container())?;
    Ok(copy)
}

/// A previous judge may have died holding notifications it never answered; wake their tasks
/// so that their execs restart and reach us. Done twice: once now, once after any judge we
/// replaced has surely stopped.
fn recover_in_background(monitor: Arc<MonitorHandle>, state: Arc<HolderState>) {
    std::thread::spawn(move || {
        for delay in [Duration::ZERO, Duration::from_secs(2)] {
            std::thread::sleep(delay);
            let inits: Vec<i32> = monitor
                .watched()
                .iter()
                .map(|w| w.init_pid)
                .filter(|p| *p > 0)
                .collect();
            let kicked = crate::recovery::recover_unanswered_execs(&inits);
            state
                .recovered_execs
                .fetch_add(kicked as u64, Ordering::Relaxed);
            if kicked > 0 {
                tracing::info!(
                    kicked,
                    "woke tasks waiting in exec so that their execs are judged again"
                );
            }
        }
    });
}

/// Stops answering (in-flight answers finish), then exits or idles as configured: the holder
/// and the new judge have every fd.
fn hand_off(monitor: Arc<MonitorHandle>, when: crate::config::WhenReplaced) -> ! {
    monitor.stop_judging();
    // Let a worker finish the exec it is answering (a reported one waits up to 200 ms for its
    // finding to be written); the new judge recovers any it could not.
    std::thread::sleep(Duration::from_millis(300));
    match when {
        crate::config::WhenReplaced::Exit => std::process::exit(0),
        crate::config::WhenReplaced::Wait => {
            tracing::info!("replaced by a newer agent; idle until SIGTERM");
            loop {
                std::thread::park();
            }
        }
    }
}
