//! Passing file descriptors over unix sockets (SCM_RIGHTS), safely: received fds arrive as
//! [`OwnedFd`]s, so none can leak or be closed twice, and a message that carried more fds than
//! we asked for is reported (the kernel closes what did not fit).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Most fds one message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 8;

/// One `recvmsg`: the bytes read, the fds that came with them, and whether the kernel cut
/// anything (data past `buf` on a datagram/seqpacket socket, or fds past our space).
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = recvmsg(sock, &mut iov, &mut control, flags)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    let truncated = msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

/// Sends `bytes` with `fds` attached in one `sendmsg`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fds do not fit the control buffer",
        ));
    }
    Ok(sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// The uid of the process at the other end of a unix socket.
pub fn peer_uid(sock: impl AsFd) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?.uid.as_raw())
}

/// The pid of the process at the other end of a unix socket.
pub fn peer_pid(sock: impl AsFd) -> io::Result<i32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?
        .pid
        .as_raw_nonzero()
        .get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_and_bytes_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pr, pw) = std::io::pipe().unwrap();
        send_with_fds(a.as_fd(), b"hello", &[pw.as_fd()]).unwrap();
        drop(pw);
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.fds.len(), 1);
        assert!(!r.truncated);
        // The received fd is the pipe's write end: writing through it reaches the read end.
        let w: std::fs::File = r.fds.into_iter().next().unwrap().into();
        std::io::Write::write_all(&mut &w, b"x").unwrap();
        drop(w);
        let mut s = String::new();
        pr.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        assert_eq!(
            peer_uid(&a).unwrap(),
            nix::unistd::Uid::effective().as_raw()
        );
    }

    #[test]
    fn too_many_fds_are_refused_before_sending() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fds: Vec<_> = (0..MAX_FDS_PER_MESSAGE + 1).map(|_| a.as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &fds).is_err());
    }
}
