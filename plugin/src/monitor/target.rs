//! The live [`Target`]: a trapped task reached through its pidfd (fds, ids), its memory
//! (`process_vm_readv`) and, for the finding's context only, /proc.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::FileType;
use rustix::net::{AddressFamily, SocketType};

use crate::exec_event::{SocketFamily, SocketProtocol, StdioKind};

use super::inspect::{ProcLink, Target};
use super::sys::{self, Notification, TaskIds};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_UDPLITE: u32 = 136;
const IPPROTO_MPTCP: u32 = 262;

/// The caller of one pending notification.
pub struct LiveTarget<'a> {
    listener: BorrowedFd<'a>,
    notif_id: u64,
    tid: i32,
    pidfd: OwnedFd,
    /// The last socket described, by (device, inode).
    last_socket: RefCell<Option<((u64, u64), StdioKind)>>,
}

impl<'a> LiveTarget<'a> {
    /// Open a pidfd for the notification's caller. `Ok(None)` when the caller is already
    /// gone. The tid could in principle belong to a newer task by now; inspection's final
    /// `still_pending` check rules that out (a pending caller never released its tid).
    pub fn attach(listener: BorrowedFd<'a>, notif: &Notification) -> io::Result<Option<Self>> {
        let tid = notif.tid as i32;
        let pidfd = match sys::pidfd_open_task(tid) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT)) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(Some(LiveTarget {
            listener,
            notif_id: notif.id,
            tid,
            pidfd,
            last_socket: RefCell::new(None),
        }))
    }

    /// The caller's pidfd (for SIGKILL in kill mode).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

impl Target for LiveTarget<'_> {
    fn tid(&self) -> i32 {
        self.tid
    }

    fn still_pending(&self) -> bool {
        sys::notif_id_valid(self.listener, self.notif_id).unwrap_or(false)
    }

    fn read_memory(&self, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
        sys::read_task_memory(self.tid, addr, buf)
    }

    fn read_memory_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> io::Result<usize> {
        sys::read_task_memory_ranges(self.tid, ranges, out)
    }

    fn stdio(&self, fd: i32) -> StdioKind {
        let copy = match sys::pidfd_getfd(self.pidfd.as_fd(), fd) {
            Ok(copy) => copy,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => return StdioKind::Closed,
            Err(_) => return StdioKind::Unknown,
        };
        let Ok(st) = rustix::fs::fstat(&copy) else {
            return StdioKind::Unknown;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
            return kind_of(st.st_mode);
        }
        // A socket on several std fds (a reverse shell's `>&` dups) is the same inode each
        // time: look it up once.
        let key = (st.st_dev, st.st_ino);
        let mut last = self.last_socket.borrow_mut();
        if let Some((k, kind)) = last.as_ref() {
            if *k == key {
                return kind.clone();
            }
        }
        let kind = describe_socket(copy.as_fd());
        *last = Some((key, kind.clone()));
        kind
    }

    fn caller_ids(&self) -> Option<TaskIds> {
        match sys::pidfd_task_ids(self.pidfd.as_fd()) {
            Ok(Some(ids)) => Some(ids),
            Ok(None) => ids_from_status(self.tid),
            Err(_) => None,
        }
    }

    fn process_ids(&self, pid: i32) -> Option<TaskIds> {
        let from_pidfd = sys::pidfd_open_task(pid)
            .ok()
            .and_then(|fd| sys::pidfd_task_ids(fd.as_fd()).ok());
        match from_pidfd {
            Some(Some(ids)) => Some(ids),
            _ => ids_from_status(pid),
        }
    }

    fn proc_link(&self, pid: i32, link: ProcLink) -> Option<String> {
        let path = match link {
            ProcLink::Exe => format!("/proc/{pid}/exe"),
            ProcLink::Cwd => format!("/proc/{pid}/cwd"),
            ProcLink::Fd(n) => format!("/proc/{pid}/fd/{n}"),
        };
        let target = rustix::fs::readlink(path.as_str(), Vec::with_capacity(128)).ok()?;
        Some(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }

    fn cmdline(&self, pid: i32, limit: usize) -> Option<Vec<u8>> {
        let file = File::open(format!("/proc/{pid}/cmdline")).ok()?;
        let mut out = Vec::with_capacity(limit.min(512));
        file.take(limit as u64).read_to_end(&mut out).ok()?;
        Some(out)
    }
}

/// tgid and ppid from `/proc/<pid>/status`, for kernels without `PIDFD_GET_INFO`.
fn ids_from_status(pid: i32) -> Option<TaskIds> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_ids(pid, &text)
}

fn parse_status_ids(pid: i32, text: &str) -> Option<TaskIds> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<i32>().ok())
    };
    Some(TaskIds {
        tid: pid,
        tgid: field("Tgid:")?,
        ppid: field("PPid:")?,
        cgroup_id: None,
    })
}

/// What an open fd is: file type from `fstat`; for sockets, family, type, protocol and both
/// addresses straight from the socket (no /proc/net scan).
pub fn describe_fd(fd: BorrowedFd<'_>) -> StdioKind {
    let Ok(st) = rustix::fs::fstat(fd) else {
        return StdioKind::Unknown;
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Socket => describe_socket(fd),
        _ => kind_of(st.st_mode),
    }
}

/// The kind of a non-socket file from its mode.
fn kind_of(mode: u32) -> StdioKind {
    match FileType::from_raw_mode(mode) {
        FileType::Fifo => StdioKind::Pipe,
        FileType::CharacterDevice => StdioKind::CharDevice,
        FileType::RegularFile => StdioKind::RegularFile,
        FileType::Socket => StdioKind::Unknown,
        _ => StdioKind::Other,
    }
}

fn describe_socket(fd: BorrowedFd<'_>) -> StdioKind {
    use rustix::net::sockopt;
    let domain = sockopt::socket_domain(fd).ok();
    let family = match domain {
        Some(AddressFamily::INET) => SocketFamily::Inet,
        Some(AddressFamily::INET6) => SocketFamily::Inet6,
        Some(AddressFamily::UNIX) => SocketFamily::Unix,
        Some(AddressFamily::VSOCK) => SocketFamily::Vsock,
        Some(AddressFamily::NETLINK) => SocketFamily::Netlink,
        Some(other) => SocketFamily::Other(other.as_raw() as i32),
        None => SocketFamily::Other(-1),
    };
    let kind = sockopt::socket_type(fd).ok();
    let proto = sockopt::socket_protocol(fd)
        .ok()
        .flatten()
        .map(|p| p.as_raw().get())
        .unwrap_or(0);
    let inet = matches!(family, SocketFamily::Inet | SocketFamily::Inet6);
    let protocol = match kind {
        // MPTCP is TCP on the wire as far as a shell on the other end is concerned.
        Some(SocketType::STREAM) if inet && matches!(proto, 0 | IPPROTO_TCP | IPPROTO_MPTCP) => {
            SocketProtocol::Tcp
        }
        Some(SocketType::DGRAM) if inet && matches!(proto, 0 | IPPROTO_UDP | IPPROTO_UDPLITE) => {
            SocketProtocol::Udp
        }
        Some(SocketType::STREAM) => SocketProtocol::Stream,
        Some(SocketType::DGRAM) => SocketProtocol::Datagram,
        Some(SocketType::SEQPACKET) => SocketProtocol::SeqPacket,
        Some(SocketType::RAW) => SocketProtocol::Raw,
        Some(other) => SocketProtocol::Other(other.as_raw() as i32),
        None => SocketProtocol::Other(-1),
    };
    let (local, peer) = if inet {
        let local = rustix::net::getsockname(fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        let peer = rustix::net::getpeername(fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        (local, peer)
    } else {
        (None, None)
    };
    StdioKind::Socket {
        family,
        protocol,
        local,
        peer,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn describes_real_fds_of_this_process() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        match describe_fd(client.as_fd()) {
            StdioKind::Socket {
                family,
                protocol,
                local,
                peer,
            } => {
                assert_eq!(family, SocketFamily::Inet);
                assert_eq!(protocol, SocketProtocol::Tcp);
                assert_eq!(peer, Some(server.local_addr().unwrap()));
                assert_eq!(local, Some(client.local_addr().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        udp.connect("[::1]:9").unwrap();
        match describe_fd(udp.as_fd()) {
            StdioKind::Socket {
                family,
                protocol,
                peer,
                ..
            } => {
                assert_eq!(family, SocketFamily::Inet6);
                assert_eq!(protocol, SocketProtocol::Udp);
                assert_eq!(peer, Some("[::1]:9".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        let (a, _b) = UnixStream::pair().unwrap();
        let unix = describe_fd(a.as_fd());
        assert_eq!(
            unix,
            StdioKind::Socket {
                family: SocketFamily::Unix,
                protocol: SocketProtocol::Stream,
                local: None,
                peer: None
            }
        );
        assert!(!unix.is_network_socket());
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(describe_fd(r.as_fd()), StdioKind::Pipe);
        let null = File::open("/dev/null").unwrap();
        assert_eq!(describe_fd(null.as_fd()), StdioKind::CharDevice);
        let file = tempfile::tempfile().unwrap();
        assert_eq!(describe_fd(file.as_fd()), StdioKind::RegularFile);
    }

    #[test]
    fn parses_status_ids() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nNgid:\t0\nPid:\t43\nPPid:\t7\n";
        let ids = parse_status_ids(43, text).unwrap();
        assert_eq!((ids.tid, ids.tgid, ids.ppid), (43, 42, 7));
        assert_eq!(parse_status_ids(1, "garbage"), None);
    }
}
