//! The judge's side of the holder protocol.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::server::{connect_control, recv, send};
use super::wire::Kind;

/// What the holder tells a judge.
pub enum HolderEvent {
    /// A listener handover: runc's fds and raw payload, under the holder's entry id.
    Entry {
        id: u64,
        fds: Vec<OwnedFd>,
        payload: Vec<u8>,
    },
    /// Every entry held at connect time has been sent.
    SyncDone { entries: u64 },
    /// Another judge connected: stop judging.
    Replaced,
    /// The holder is gone (died, or handed over to a successor: reconnect to find out).
    Closed,
}

pub struct HolderLink {
    conn: OwnedFd,
}

impl HolderLink {
    /// Connects to the holder's control socket and announces a judge.
    pub fn connect(control: &Path) -> io::Result<HolderLink> {
        let conn = connect_control(control)?;
        send(conn.as_fd(), Kind::Hello, 0, &[], &[])?;
        Ok(HolderLink { conn })
    }

    /// Bounds how long [`HolderLink::next_event`] blocks (`None`: for ever); when it runs out,
    /// `next_event` fails with `WouldBlock`.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_timeout(
            &self.conn,
            rustix::net::sockopt::Timeout::Recv,
            timeout,
        )?)
    }

    /// The holder's process id (from the connection's peer credentials).
    pub fn holder_pid(&self) -> io::Result<i32> {
        crate::fdpass::peer_pid(&self.conn)
    }

    /// Blocks for the next event.
    pub fn next_event(&self) -> io::Result<HolderEvent> {
        loop {
            let Some(m) = recv(self.conn.as_fd(), false)? else {
                return Ok(HolderEvent::Closed);
            };
            match m.kind {
                Kind::Entry if !m.fds.is_empty() => {
                    return Ok(HolderEvent::Entry {
                        id: m.entry,
                        fds: m.fds,
                        payload: m.payload,
                    })
                }
                Kind::SyncDone => {
                    let entries = m
                        .payload
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    return Ok(HolderEvent::SyncDone { entries });
                }
                Kind::Replaced => return Ok(HolderEvent::Replaced),
                other => {
                    tracing::warn!(kind = ?other, "unexpected message from the holder; ignored")
                }
            }
        }
    }

    /// Gives the holder a copy of an entry it does not have (after the holder itself was
    /// restarted), so that the judge's own restart stays harmless.
    pub fn adopt(&self, id: u64, fds: &[BorrowedFd<'_>], payload: &[u8]) -> io::Result<()> {
        send(self.conn.as_fd(), Kind::Adopt, id, payload, fds)
    }
}
