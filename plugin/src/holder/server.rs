//! The fd holder: a tiny, synchronous, single-threaded process that owns the seccomp listener
//! socket (runc's `listenerPath`) and a copy of every listener fd runc hands over, so that the
//! judging agent can die, restart or be upgraded without any container losing its filter's
//! last fd (which would make every later exec in it fail with ENOSYS).
//!
//! It never parses container data: a handover is stored as runc's raw bytes plus its fds, and
//! forwarded as is to the one connected judge. It drops a held fd when the kernel reports
//! POLLHUP on it (every task using that filter has exited).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use thiserror::Error;

use super::wire::{self, Kind, MAX_MESSAGE, MAX_PAYLOAD};
use crate::fdpass::{peer_uid, recv_with_fds, send_with_fds};

#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// runc's `listenerPath`.
    pub listener: PathBuf,
    /// Where judges (and a successor holder) connect.
    pub control: PathBuf,
    /// Most entries held at once; beyond it new handovers are refused (runc then fails the
    /// container's creation: closed, not open).
    pub max_entries: usize,
    /// A runc connection must deliver its fd and payload within this time.
    pub handover_timeout: Duration,
}

impl Default for HolderConfig {
    fn default() -> Self {
        HolderConfig {
            listener: PathBuf::from("/run/rce-guard/monitor.sock"),
            control: PathBuf::from("/run/rce-guard/holder.sock"),
            max_entries: 16_384,
            handover_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Error)]
pub enum HolderError {
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("taking over from the running holder at {path} failed: {reason}")]
    Takeover { path: PathBuf, reason: String },
    #[error("poll failed: {0}")]
    Poll(io::Error),
}

struct Entry {
    fds: Vec<OwnedFd>,
    payload: Vec<u8>,
}

/// A runc connection still sending its handover.
struct Handover {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    deadline: Instant,
}

pub struct Holder {
    cfg: HolderConfig,
    runc_listener: UnixListener,
    control_listener: OwnedFd,
    judge: Option<OwnedFd>,
    handovers: Vec<Handover>,
    /// Control connections that have not said who they are yet.
    newcomers: Vec<(OwnedFd, Instant)>,
    entries: BTreeMap<u64, Entry>,
    next_id: u64,
}

/// Control connections that have not sent their first message yet, at most (each is one fd).
const MAX_NEWCOMERS: usize = 32;
/// A control connection must say who it is (Hello or Takeover) within this time.
const NEWCOMER_TIMEOUT: Duration = Duration::from_secs(5);

/// Out of fds, a listening socket stays readable and every poll returns at once: pause a
/// little instead of spinning (the connection waits in the backlog, and the next handover
/// that hangs up frees an fd).
fn back_off_if_out_of_fds(e: rustix::io::Errno) {
    if e == rustix::io::Errno::MFILE || e == rustix::io::Errno::NFILE {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises the soft limit on open fds to the hard limit: the holder keeps one fd per
/// container and per `runc exec`, far more than the usual soft limit of 1024. Returns the
/// limit in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let wanted = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, wanted) {
            Ok(()) => limit = wanted,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

fn bind_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    crate::fsutil::prepare_socket_path(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, 64)?;
    Ok(fd)
}

/// Connects to a holder's control socket.
pub fn connect_control(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(fd)
}

fn set_send_timeout(fd: BorrowedFd<'_>, t: Duration) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_timeout(
        fd,
        rustix::net::sockopt::Timeout::Send,
        Some(t),
    )?)
}

fn set_recv_timeout(fd: BorrowedFd<'_>, t: Duration) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_timeout(
        fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(t),
    )?)
}

/// Sends one message with fds.
pub fn send(
    sock: BorrowedFd<'_>,
    kind: Kind,
    entry: u64,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let bytes = wire::encode(kind, entry, payload, fds.len())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    send_with_fds(sock, &bytes, fds)?;
    Ok(())
}

/// One received, checked message.
pub struct Owned {
    pub kind: Kind,
    pub entry: u64,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Receives one message; `Ok(None)` on orderly EOF.
pub fn recv(sock: BorrowedFd<'_>, nonblocking: bool) -> io::Result<Option<Owned>> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let r = recv_with_fds(sock, &mut buf, nonblocking)?;
    if r.len == 0 && r.fds.is_empty() {
        return Ok(None);
    }
    let m = wire::decode(&buf[..r.len], r.fds.len(), r.truncated)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(Owned {
        kind: m.kind,
        entry: m.entry,
        payload: m.payload.to_vec(),
        fds: r.fds,
    }))
}

fn initial_entry_id() -> u64 {
    // Ids must not collide with those a judge still knows from an earlier holder: the judge
    // skips an id it has, and a skipped entry would leave its container's execs waiting for
    // ever. Start at the wall clock in nanoseconds (fits in u64 until the year 2554), which
    // only a holder taking more than one handover per nanosecond could overtake.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX / 2)
}

impl Holder {
    /// Starts a holder: takes over from a running one if its control socket answers, else
    /// binds both sockets afresh.
    pub fn start(cfg: HolderConfig) -> Result<Holder, HolderError> {
        if let Ok(conn) = connect_control(&cfg.control) {
            // Only a root holder may hand us sockets and fds.
            match peer_uid(&conn) {
                Ok(0) => return Self::take_over(cfg, conn),
                Ok(uid) => {
                    return Err(HolderError::Takeover {
                        path: cfg.control.clone(),
                        reason: format!("the process serving it runs as uid {uid}, not root"),
                    })
                }
                Err(e) => {
                    return Err(HolderError::Takeover {
                        path: cfg.control.clone(),
                        reason: format!("cannot check its credentials: {e}"),
                    })
                }
            }
        }
        let bind_err = |path: &Path| {
            let path = path.to_owned();
            move |source| HolderError::Bind { path, source }
        };
        crate::fsutil::prepare_socket_path(&cfg.listener).map_err(bind_err(&cfg.listener))?;
        let runc_listener = UnixListener::bind(&cfg.listener).map_err(bind_err(&cfg.listener))?;
        let control_listener = bind_seqpacket(&cfg.control).map_err(bind_err(&cfg.control))?;
        Self::assemble(
            cfg,
            runc_listener,
            control_listener,
            BTreeMap::new(),
            initial_entry_id(),
        )
    }

    /// Both listening sockets non-blocking: the loop accepts until EAGAIN, and a connection
    /// that went away between poll and accept must not block it.
    fn assemble(
        cfg: HolderConfig,
        runc_listener: UnixListener,
        control_listener: OwnedFd,
        entries: BTreeMap<u64, Entry>,
        next_id: u64,
    ) -> Result<Holder, HolderError> {
        runc_listener
            .set_nonblocking(true)
            .map_err(HolderError::Poll)?;
        rustix::io::ioctl_fionbio(&control_listener, true)
            .map_err(|e| HolderError::Poll(e.into()))?;
        Ok(Holder {
            cfg,
            runc_listener,
            control_listener,
            judge: None,
            handovers: Vec::new(),
            newcomers: Vec::new(),
            entries,
            next_id,
        })
    }

    /// Successor side of an upgrade: ask the running holder for its sockets and entries.
    fn take_over(cfg: HolderConfig, conn: OwnedFd) -> Result<Holder, HolderError> {
        let fail = |reason: String| HolderError::Takeover {
            path: cfg.control.clone(),
            reason,
        };
        set_recv_timeout(conn.as_fd(), Duration::from_secs(30)).map_err(|e| fail(e.to_string()))?;
        send(conn.as_fd(), Kind::Takeover, 0, &[], &[]).map_err(|e| fail(e.to_string()))?;
        let mut listeners = None;
        let mut entries = BTreeMap::new();
        let mut next_id = initial_entry_id();
        loop {
            let m = recv(conn.as_fd(), false)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail("the running holder closed the connection".into()))?;
            match m.kind {
                Kind::Listeners if m.fds.len() == 2 => listeners = Some(m.fds),
                Kind::Entry if !m.fds.is_empty() => {
                    next_id = next_id.max(m.entry.saturating_add(1));
                    entries.insert(
                        m.entry,
                        Entry {
                            fds: m.fds,
                            payload: m.payload,
                        },
                    );
                }
                Kind::SyncDone => break,
                other => return Err(fail(format!("unexpected {other:?} during takeover"))),
            }
        }
        let mut fds = listeners
            .ok_or_else(|| fail("no listening sockets received".into()))?
            .into_iter();
        let (runc, control) = match (fds.next(), fds.next()) {
            (Some(r), Some(c)) => (r, c),
            _ => return Err(fail("no listening sockets received".into())),
        };
        // Tell the old holder we have everything; it exits after this.
        send(conn.as_fd(), Kind::SyncDone, 0, &[], &[]).map_err(|e| fail(e.to_string()))?;
        tracing::info!(
            entries = entries.len(),
            "took over listener sockets and fds from the previous holder"
        );
        Self::assemble(cfg, UnixListener::from(runc), control, entries, next_id)
    }

    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Runs until a successor has taken everything over.
    pub fn run(mut self) -> Result<(), HolderError> {
        tracing::info!(
            listener = %self.cfg.listener.display(),
            control = %self.cfg.control.display(),
            entries = self.entries.len(),
            "holder ready"
        );
        loop {
            if self.step(Duration::from_secs(1))? {
                return Ok(());
            }
        }
    }

    /// One poll round. Returns true when the holder handed everything to a successor.
    pub fn step(&mut self, max_wait: Duration) -> Result<bool, HolderError> {
        let now = Instant::now();
        let nearest = self
            .handovers
            .iter()
            .map(|h| h.deadline)
            .chain(self.newcomers.iter().map(|n| n.1))
            .min()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(max_wait)
            .min(max_wait);
        let entry_ids: Vec<u64> = self.entries.keys().copied().collect();
        let (ready, hup_entries) = {
            let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(
                3 + self.handovers.len() + self.newcomers.len() + self.entries.len(),
            );
            pfds.push(PollFd::new(&self.runc_listener, PollFlags::IN));
            pfds.push(PollFd::new(&self.control_listener, PollFlags::IN));
            if let Some(j) = &self.judge {
                pfds.push(PollFd::new(j, PollFlags::IN));
            }
            for h in &self.handovers {
                pfds.push(PollFd::new(&h.sock, PollFlags::IN));
            }
            for (n, _) in &self.newcomers {
                pfds.push(PollFd::new(n, PollFlags::IN));
            }
            // No events asked: only POLLHUP/POLLERR come back, never a busy POLLIN.
            for e in self.entries.values() {
                pfds.push(PollFd::new(&e.fds[0], PollFlags::empty()));
            }
            let timeout =
                rustix::event::Timespec::try_from(nearest).unwrap_or(rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                });
            match poll(&mut pfds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return Ok(false),
                Err(e) => return Err(HolderError::Poll(e.into())),
            }
            let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
            let base = pfds.len() - entry_ids.len();
            let hups: Vec<u64> = entry_ids
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    pfds[base + i]
                        .revents()
                        .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
                })
                .map(|(_, id)| *id)
                .collect();
            (ready, hups)
        };

        for id in hup_entries {
            self.entries.remove(&id);
            tracing::debug!(
                entry = id,
                held = self.entries.len(),
                "listener fd hung up (its container is gone); dropped"
            );
        }
        let mut i = 2;
        let judge_ready = if self.judge.is_some() {
            i += 1;
            ready[2]
        } else {
            false
        };
        let handovers_ready: Vec<bool> = ready[i..i + self.handovers.len()].to_vec();
        i += self.handovers.len();
        let newcomers_ready: Vec<bool> = ready[i..i + self.newcomers.len()].to_vec();

        if ready[0] {
            self.accept_runc();
        }
        if ready[1] {
            self.accept_control();
        }
        if judge_ready {
            self.read_judge();
        }
        self.progress_handovers(&handovers_ready);
        self.progress_newcomers(&newcomers_ready)
    }

    fn accept_runc(&mut self) {
        loop {
            match self.runc_listener.accept() {
                Ok((sock, _)) => {
                    match peer_uid(&sock) {
                        Ok(0) => {}
                        Ok(uid) => {
                            tracing::warn!(uid, "refused a listener handover from a non-root peer");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check a handover peer's credentials; refused");
                            continue;
                        }
                    }
                    if self.entries.len() + self.handovers.len() >= self.cfg.max_entries {
                        tracing::error!(
                            max_entries = self.cfg.max_entries,
                            "holder is full; handover refused (the container's creation fails)"
                        );
                        continue;
                    }
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.handovers.push(Handover {
                        sock,
                        buf: Vec::new(),
                        fds: Vec::new(),
                        deadline: Instant::now() + self.cfg.handover_timeout,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the listener socket failed");
                    back_off_if_out_of_fds(
                        rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
                    );
                    return;
                }
            }
        }
    }

    /// Reads what runc sent; a complete handover (EOF after at least one fd) becomes an entry.
    fn progress_handovers(&mut self, ready: &[bool]) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (idx, h) in self.handovers.iter_mut().enumerate() {
            // Checked whether or not the peer is readable: one that trickles a byte at a
            // time is always readable and must not keep its slot for ever.
            if now >= h.deadline {
                tracing::warn!(
                    bytes = h.buf.len(),
                    fds = h.fds.len(),
                    "listener handover not complete in time; dropped"
                );
                done.push((idx, false));
                continue;
            }
            if !ready.get(idx).copied().unwrap_or(false) {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match recv_with_fds(h.sock.as_fd(), &mut chunk, true) {
                    Ok(r) if r.len == 0 && r.fds.is_empty() => {
                        done.push((idx, true));
                        break;
                    }
                    Ok(r) if r.truncated => {
                        // More fds than a handover carries: the kernel closed the excess.
                        tracing::warn!(
                            fds = r.fds.len(),
                            "listener handover with too many fds; dropped"
                        );
                        done.push((idx, false));
                        break;
                    }
                    Ok(r) => {
                        h.fds.extend(r.fds);
                        h.buf.extend_from_slice(&chunk[..r.len]);
                        if h.buf.len() > MAX_PAYLOAD
                            || h.fds.len() > crate::fdpass::MAX_FDS_PER_MESSAGE
                        {
                            tracing::warn!(
                                bytes = h.buf.len(),
                                fds = h.fds.len(),
                                "listener handover too large; dropped"
                            );
                            done.push((idx, false));
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "listener handover read failed; dropped");
                        done.push((idx, false));
                        break;
                    }
                }
            }
        }
        for (idx, complete) in done.into_iter().rev() {
            let h = self.handovers.swap_remove(idx);
            if !complete {
                continue;
            }
            if h.fds.is_empty() {
                tracing::warn!(
                    bytes = h.buf.len(),
                    "listener handover without an fd; dropped"
                );
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.forward(id, &h.fds, &h.buf);
            self.entries.insert(
                id,
                Entry {
                    fds: h.fds,
                    payload: h.buf,
                },
            );
        }
    }

    /// Sends one entry to the judge; a judge that cannot take it is dropped (it resyncs when
    /// it reconnects).
    fn forward(&mut self, id: u64, fds: &[OwnedFd], payload: &[u8]) {
        let Some(judge) = &self.judge else { return };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = send(judge.as_fd(), Kind::Entry, id, payload, &borrowed) {
            tracing::error!(error = %e, "cannot forward a listener fd to the judge; disconnecting it");
            self.judge = None;
        }
    }

    fn accept_control(&mut self) {
        loop {
            let conn = match rustix::net::accept_with(&self.control_listener, SocketFlags::CLOEXEC)
            {
                Ok(conn) => conn,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the control socket failed");
                    back_off_if_out_of_fds(e);
                    return;
                }
            };
            match peer_uid(&conn) {
                Ok(0) => {
                    if self.newcomers.len() >= MAX_NEWCOMERS {
                        // Drop the oldest silent one: a judge that just connected says Hello
                        // at once and must get its turn.
                        tracing::warn!(
                            waiting = self.newcomers.len(),
                            "too many control connections that have not said who they are; dropped the oldest"
                        );
                        self.newcomers.remove(0);
                    }
                    self.newcomers
                        .push((conn, Instant::now() + NEWCOMER_TIMEOUT));
                }
                Ok(uid) => tracing::warn!(uid, "refused a control connection from a non-root peer"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a control peer's credentials; refused")
                }
            }
        }
    }

    fn read_judge(&mut self) {
        let Some(judge) = &self.judge else { return };
        loop {
            match recv(judge.as_fd(), true) {
                Ok(Some(m))
                    if m.kind == Kind::Adopt
                        && !m.fds.is_empty()
                        && self.entries.len() >= self.cfg.max_entries
                        && !self.entries.contains_key(&m.entry) =>
                {
                    tracing::error!(
                        max_entries = self.cfg.max_entries,
                        entry = m.entry,
                        "holder is full; an fd the judge gave back was not kept"
                    );
                }
                Ok(Some(m)) if m.kind == Kind::Adopt && !m.fds.is_empty() => {
                    self.next_id = self.next_id.max(m.entry.saturating_add(1));
                    self.entries.entry(m.entry).or_insert(Entry {
                        fds: m.fds,
                        payload: m.payload,
                    });
                }
                Ok(Some(m)) => {
                    tracing::warn!(kind = ?m.kind, "unexpected message from the judge; ignored")
                }
                Ok(None) => {
                    tracing::warn!(
                        held = self.entries.len(),
                        "judge disconnected; holding every listener fd until a judge comes back"
                    );
                    self.judge = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "bad message from the judge; disconnecting it");
                    self.judge = None;
                    return;
                }
            }
        }
    }

    /// Returns true when a successor took everything over.
    fn progress_newcomers(&mut self, ready: &[bool]) -> Result<bool, HolderError> {
        let now = Instant::now();
        // `ready[k]` belongs to the k-th newcomer as polled: walk them in that order.
        let polled = std::mem::take(&mut self.newcomers);
        let mut waiting = Vec::with_capacity(polled.len());
        for (k, (conn, deadline)) in polled.into_iter().enumerate() {
            if !ready.get(k).copied().unwrap_or(false) {
                if now < deadline {
                    waiting.push((conn, deadline));
                } else {
                    tracing::warn!("a control connection said nothing in time; closed");
                }
                continue;
            }
            match recv(conn.as_fd(), true) {
                Ok(Some(m)) if m.kind == Kind::Hello => self.welcome_judge(conn),
                Ok(Some(m)) if m.kind == Kind::Takeover => {
                    if self.hand_over_to_successor(conn) {
                        return Ok(true);
                    }
                }
                Ok(Some(m)) => {
                    tracing::warn!(kind = ?m.kind, "unexpected first message on the control socket")
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => waiting.push((conn, deadline)),
                Err(e) => tracing::warn!(error = %e, "bad first message on the control socket"),
            }
        }
        waiting.append(&mut self.newcomers);
        self.newcomers = waiting;
        Ok(false)
    }

    fn welcome_judge(&mut self, conn: OwnedFd) {
        if let Some(old) = self.judge.take() {
            let _ = send(old.as_fd(), Kind::Replaced, 0, &[], &[]);
            tracing::info!("a new judge connected; the previous one was told to stop");
        }
        if let Err(e) = set_send_timeout(conn.as_fd(), Duration::from_secs(2)) {
            tracing::warn!(error = %e, "cannot set a send timeout on the judge connection");
        }
        self.judge = Some(conn);
        let ids: Vec<u64> = self.entries.keys().copied().collect();
        for id in ids {
            if self.judge.is_none() {
                return;
            }
            let fds: Vec<OwnedFd> = match self.entries[&id]
                .fds
                .iter()
                .map(|f| f.try_clone())
                .collect()
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot duplicate a held fd");
                    continue;
                }
            };
            let payload = self.entries[&id].payload.clone();
            self.forward(id, &fds, &payload);
        }
        if let Some(j) = &self.judge {
            let count = self.entries.len() as u64;
            if send(j.as_fd(), Kind::SyncDone, 0, &count.to_be_bytes(), &[]).is_err() {
                self.judge = None;
            } else {
                tracing::info!(entries = count, "judge connected and synchronized");
            }
        }
    }

    /// Old side of an upgrade. Returns true when the successor confirmed it has everything.
    fn hand_over_to_successor(&mut self, conn: OwnedFd) -> bool {
        // Finish handovers already in flight so none is lost in between.
        let deadline = Instant::now() + self.cfg.handover_timeout;
        while !self.handovers.is_empty() && Instant::now() < deadline {
            let all = vec![true; self.handovers.len()];
            self.progress_handovers(&all);
            std::thread::sleep(Duration::from_millis(2));
        }
        let result = (|| -> io::Result<()> {
            set_send_timeout(conn.as_fd(), Duration::from_secs(5))?;
            set_recv_timeout(conn.as_fd(), Duration::from_secs(30))?;
            send(
                conn.as_fd(),
                Kind::Listeners,
                0,
                &[],
                &[self.runc_listener.as_fd(), self.control_listener.as_fd()],
            )?;
            for (id, e) in &self.entries {
                let fds: Vec<BorrowedFd<'_>> = e.fds.iter().map(|f| f.as_fd()).collect();
                send(conn.as_fd(), Kind::Entry, *id, &e.payload, &fds)?;
            }
            send(conn.as_fd(), Kind::SyncDone, 0, &[], &[])?;
            match recv(conn.as_fd(), false)? {
                Some(m) if m.kind == Kind::SyncDone => Ok(()),
                _ => Err(io::Error::other("successor did not confirm")),
            }
        })();
        match result {
            Ok(()) => {
                tracing::info!(
                    entries = self.entries.len(),
                    "handed everything over to the successor holder; exiting"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "handover to a successor holder failed; keeping everything");
                false
            }
        }
    }
}
