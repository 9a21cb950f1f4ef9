//! The listener socket that runc and crun hand seccomp listener fds to.
//!
//! Per connection: check the peer (only uid 0), read the JSON `ContainerProcessState` until EOF
//! together with the `SCM_RIGHTS` fds (the JSON may come in several messages), match the
//! `fds` names to the fds, and adopt the one named `seccompFd`. One thread polls all
//! connections in progress, each under its own deadline, so a peer that connects and stalls
//! delays nobody. Anything wrong closes every fd received and drops the connection with a
//! clear error.
//!
//! The socket is only one producer: [`crate::monitor::MonitorHandle::adopt`] takes an fd and
//! the raw payload from anywhere (e.g. a process that kept the fds across an agent restart).

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::identity::ContainerIdentity;
use crate::verdict::WatchedContainer;

use super::notify::Engine;
use super::stats::bump;
use super::AdoptError;

/// Name of the listener fd in the payload's `fds`.
pub const SECCOMP_FD_NAME: &str = oci_spec::runtime::SECCOMP_FD_NAME;

/// Most fds one handover may carry (runc and crun send one).
const MAX_FDS: usize = 8;

/// Why a payload cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("handover payload is empty")]
    Empty,
    #[error("handover payload exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("handover payload is not a ContainerProcessState: {0}")]
    Json(#[from] serde_json::Error),
    #[error("handover payload names no {SECCOMP_FD_NAME:?} among its fds {names:?}")]
    NoSeccompFd { names: Vec<String> },
    #[error("handover payload names {names} fds but {received} arrived")]
    FdCountMismatch { names: usize, received: usize },
}

/// Why a handover connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("peer pid {pid} uid {uid} is not root: refused")]
    PeerNotRoot { pid: i32, uid: u32 },
    #[error("cannot read the peer's credentials: {0}")]
    PeerCred(#[source] io::Error),
    #[error("peer sent nothing complete within {0:?}")]
    Deadline(Duration),
    #[error("reading the handover failed: {0}")]
    Read(#[source] io::Error),
    #[error("peer sent more than {MAX_FDS} fds")]
    TooManyFds,
    #[error("peer sent no fd")]
    NoFd,
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Adopt(#[from] AdoptError),
}

/// Why the listener socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot create directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another process is serving {path}")]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot restrict {path} to root: {source}")]
    Chmod { path: PathBuf, source: io::Error },
}

/// The runtime's `ContainerProcessState`, read leniently: `ociVersion` is not checked (crun
/// sends "0.2.0"), every field may be missing, unknown fields are ignored. (oci-spec's type
/// rejects status values it does not know, and losing a handover breaks the container's
/// execs, so we keep our own.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProcessState {
    pub oci_version: String,
    pub fds: Vec<String>,
    /// The process the runtime set up (the init, or the `runc exec` process).
    pub pid: i32,
    pub metadata: Option<String>,
    pub state: ContainerState,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    /// The container's init.
    pub pid: i32,
    pub bundle: String,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Parse a payload (at most `limit` bytes).
pub fn parse_payload(bytes: &[u8], limit: usize) -> Result<ProcessState, PayloadError> {
    if bytes.len() > limit {
        return Err(PayloadError::TooLarge { limit });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    Ok(serde_json::from_slice(bytes)?)
}

impl ProcessState {
    /// The container this state describes, with identity from its CRI annotations.
    pub fn watched_container(&self) -> WatchedContainer {
        let empty = BTreeMap::new();
        let annotations = self.state.annotations.as_ref().unwrap_or(&empty);
        WatchedContainer {
            container_id: self.state.id.clone(),
            identity: ContainerIdentity::from_cri_annotations(&self.state.id, annotations),
            init_pid: self.state.pid,
            metadata: self.metadata.clone().unwrap_or_default(),
        }
    }

    /// Pick the listener fd out of the received ones by its name; the rest are closed.
    pub fn take_seccomp_fd(&self, fds: Vec<OwnedFd>) -> Result<OwnedFd, PayloadError> {
        if fds.len() != self.fds.len() {
            return Err(PayloadError::FdCountMismatch {
                names: self.fds.len(),
                received: fds.len(),
            });
        }
        let index = self
            .fds
            .iter()
            .position(|n| n == SECCOMP_FD_NAME)
            .ok_or_else(|| PayloadError::NoSeccompFd {
                names: self.fds.clone(),
            })?;
        Ok(fds
            .into_iter()
            .nth(index)
            .expect("index checked against the fd count"))
    }
}

/// Create the listener socket: parent directory (mode 0700 if we create it), stale socket
/// removed (unless something still answers on it), socket mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BindError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| BindError::Stale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        BindError::Chmod {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Settings of the acceptor.
#[derive(Debug, Clone)]
pub(crate) struct AcceptorConfig {
    pub deadline: Duration,
    pub max_payload: usize,
    /// Connections read at once; more wait in the listen backlog (runc then waits in
    /// connect), which is better than refusing them: a refused fd breaks its container.
    pub max_connections: usize,
}

/// One connection being read.
struct Pending {
    stream: UnixStream,
    deadline: Instant,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

enum Progress {
    /// More to read later.
    Waiting,
    /// EOF: the handover is complete.
    Done,
}

/// Serve the socket until it is shut down: one thread, one `poll` over the listening socket
/// and every connection in progress, each under its own deadline. A peer that stalls holds
/// only its own slot; one that trickles bytes is cut at its deadline.
pub(crate) fn accept_loop(
    listener: Arc<UnixListener>,
    engine: Arc<Engine>,
    cfg: AcceptorConfig,
    stop: Arc<AtomicBool>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot make the listener socket non-blocking; handovers stopped");
        return;
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Set before the owner shuts the socket down, which wakes the poll below.
        if stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let nearest = pending.iter().map(|p| p.deadline).min();
        let timeout = match nearest {
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis().min(60_000) as u16;
                PollTimeout::from(ms.saturating_add(1))
            }
            None => PollTimeout::NONE,
        };
        let accepting = pending.len() < cfg.max_connections;
        let (listener_ready, ready): (bool, Vec<bool>) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(pending.len() + 1);
            if accepting {
                fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            }
            fds.extend(
                pending
                    .iter()
                    .map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the listener socket failed; handovers stopped");
                    return;
                }
            }
            let flags: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            if accepting {
                (flags[0], flags[1..].to_vec())
            } else {
                (false, flags)
            }
        };

        // Read what arrived; finish or drop connections.
        let mut i = 0;
        let mut ready = ready.into_iter();
        while i < pending.len() {
            let is_ready = ready.next().unwrap_or(false);
            let outcome = if is_ready {
                read_available(&mut pending[i], &mut buf, cfg.max_payload)
            } else if Instant::now() >= pending[i].deadline {
                Err(HandoverError::Deadline(cfg.deadline))
            } else {
                Ok(Progress::Waiting)
            };
            match outcome {
                Ok(Progress::Waiting) => i += 1,
                Ok(Progress::Done) => {
                    let p = pending.swap_remove(i);
                    if let Err(e) = finish(p, &engine, cfg.max_payload) {
                        refuse(&engine, &e);
                    }
                    // swap_remove moved the last (unpolled this round) entry to `i`: its
                    // readiness flag is the last one, which we simply revisit next round.
                    ready = Vec::new().into_iter();
                }
                Err(e) => {
                    drop(pending.swap_remove(i));
                    refuse(&engine, &e);
                    ready = Vec::new().into_iter();
                }
            }
        }

        if listener_ready {
            loop {
                if pending.len() >= cfg.max_connections {
                    break;
                }
                match listener.accept() {
                    Ok((stream, _)) => match admit(stream, cfg.deadline) {
                        Ok(p) => pending.push(p),
                        Err(e) => refuse(&engine, &e),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A listening socket that was shut down: the monitor is stopping.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) =>
                    {
                        tracing::error!(error = %e, "cannot accept a handover: out of fds");
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "accept on the listener socket failed; handovers stopped");
                        return;
                    }
                }
            }
        }
    }
}

fn refuse(engine: &Engine, e: &HandoverError) {
    bump(&engine.counters.handovers_refused);
    tracing::warn!(error = %e, "seccomp listener handover refused");
}

/// Check the peer before reading anything from it.
fn admit(stream: UnixStream, deadline: Duration) -> Result<Pending, HandoverError> {
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| HandoverError::PeerCred(e.into()))?;
    if cred.uid.as_raw() != 0 {
        return Err(HandoverError::PeerNotRoot {
            pid: cred.pid.as_raw_nonzero().get(),
            uid: cred.uid.as_raw(),
        });
    }
    stream.set_nonblocking(true).map_err(HandoverError::Read)?;
    Ok(Pending {
        stream,
        deadline: Instant::now() + deadline,
        payload: Vec::new(),
        fds: Vec::new(),
    })
}

/// Read everything available now.
fn read_available(
    p: &mut Pending,
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Progress, HandoverError> {
    loop {
        let r = match crate::fdpass::recv_with_fds(p.stream.as_fd(), buf, true) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Waiting),
            Err(e) => return Err(HandoverError::Read(e)),
        };
        p.fds.extend(r.fds);
        if r.truncated || p.fds.len() > MAX_FDS {
            return Err(HandoverError::TooManyFds);
        }
        if r.len == 0 {
            return Ok(Progress::Done);
        }
        p.payload.extend_from_slice(&buf[..r.len]);
        if p.payload.len() > max_payload {
            return Err(PayloadError::TooLarge { limit: max_payload }.into());
        }
    }
}

/// A complete handover: parse, pick the listener fd, adopt it.
fn finish(p: Pending, engine: &Engine, max_payload: usize) -> Result<u64, HandoverError> {
    if p.fds.is_empty() {
        return Err(HandoverError::NoFd);
    }
    let state = parse_payload(&p.payload, max_payload)?;
    let container = state.watched_container();
    let fd = state.take_seccomp_fd(p.fds)?;
    tracing::debug!(container_id = %container.container_id, status = %state.state.status, pid = state.pid, "handover received");
    Ok(engine.adopt(fd, container)?)
}

/// The runtime's side of the handover: send `payload` with `fds` attached to the first
/// message, as runc does. For tests, benchmarks and a future fd holder.
pub fn send_handover(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one handover",
        ));
    }
    let mut sent = 0;
    while sent < payload.len() || (sent == 0 && !fds.is_empty()) {
        let iov = [io::IoSlice::new(&payload[sent..])];
        let n = rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)?;
        // The fds travel with the first message only.
        control = SendAncillaryBuffer::default();
        sent += n;
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Connect to `socket` and hand over `fd` with `payload`, then close, like runc.
pub fn hand_over(socket: &Path, fd: impl AsFd, payload: &[u8]) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    send_handover(&stream, payload, &[fd.as_fd()])
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_PAYLOAD: &str = r#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":10673,"metadata":"rce-guard/v1","state":{"ociVersion":"1.0.2-dev","id":"2d1dfd42","status":"creating","pid":10673,"bundle":"/run/containerd/io.containerd.runtime.v2.task/k8s.io/2d1dfd42","annotations":{"io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"web-7d9","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.image-name":"nginx:1.27","io.kubernetes.cri.container-type":"container"}}}"#;

    const CRUN_EXEC_PAYLOAD: &str = r#"{
  "ociVersion": "0.2.0",
  "fds": [
    "seccompFd"
  ],
  "pid": 0,
  "state": {
    "ociVersion": "0.2.0",
    "id": "abc",
    "status": "paused-or-something-new",
    "pid": 77,
    "bundle": ".",
    "annotations": {}
  }
}"#;

    #[test]
    fn runc_payload_gives_identity() {
        let s = parse_payload(RUNC_PAYLOAD.as_bytes(), 64 * 1024).unwrap();
        let c = s.watched_container();
        assert_eq!(c.container_id, "2d1dfd42");
        assert_eq!(c.init_pid, 10673);
        assert_eq!(c.metadata, "rce-guard/v1");
        assert_eq!(c.identity.pod_namespace, "shop");
        assert_eq!(c.identity.pod_name, "web-7d9");
        assert_eq!(c.identity.container_name, "web");
        assert_eq!(c.identity.image, "nginx:1.27");
        assert_eq!(c.identity.container_id, "2d1dfd42");
    }

    #[test]
    fn crun_pretty_exec_payload_is_accepted() {
        let s = parse_payload(CRUN_EXEC_PAYLOAD.as_bytes(), 64 * 1024).unwrap();
        assert_eq!(s.pid, 0);
        assert_eq!(s.state.bundle, ".");
        assert_eq!(s.watched_container().init_pid, 77);
        assert_eq!(s.watched_container().metadata, "");
    }

    #[test]
    fn bad_payloads_are_clear_errors() {
        assert!(matches!(parse_payload(b"", 100), Err(PayloadError::Empty)));
        assert!(matches!(
            parse_payload(b"{not json", 100),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_payload(b"[1,2]", 100),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_payload(b"{\"pid\":\"x\"}", 100),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_payload(&[b' '; 200], 100),
            Err(PayloadError::TooLarge { .. })
        ));
        let msg = parse_payload(b"{oops", 100).unwrap_err().to_string();
        assert!(msg.contains("not a ContainerProcessState"), "{msg}");
    }

    #[test]
    fn fds_are_matched_by_name() {
        let fd = |_: ()| -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let s = parse_payload(br#"{"fds":["other","seccompFd"]}"#, 100).unwrap();
        let a = fd(());
        let b = fd(());
        use std::os::fd::AsRawFd;
        let b_raw = b.as_raw_fd();
        let got = s.take_seccomp_fd(vec![a, b]).unwrap();
        assert_eq!(got.as_raw_fd(), b_raw);
        // One name, two fds.
        let s = parse_payload(br#"{"fds":["seccompFd"]}"#, 100).unwrap();
        assert!(matches!(
            s.take_seccomp_fd(vec![fd(()), fd(())]),
            Err(PayloadError::FdCountMismatch {
                names: 1,
                received: 2
            })
        ));
        let s = parse_payload(br#"{"fds":["x"]}"#, 100).unwrap();
        assert!(matches!(
            s.take_seccomp_fd(vec![fd(())]),
            Err(PayloadError::NoSeccompFd { .. })
        ));
    }

    #[test]
    fn bind_replaces_stale_socket_and_refuses_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/monitor.sock");
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(bind(&path), Err(BindError::InUse { .. })));
        drop(first);
        // The file is left behind, nothing answers: stale, replaced.
        let _second = bind(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotASocket { .. })));
    }
}
