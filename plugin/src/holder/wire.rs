//! The holder protocol: fixed, versioned, length-checked messages over a unix SOCK_SEQPACKET
//! socket (one message per packet, fds attached to it).
//!
//! ```text
//! offset size  field
//!      0    4  magic "RGH1"
//!      4    2  version (1)
//!      6    2  kind
//!      8    8  entry id (Entry, Release; 0 otherwise)
//!     16    4  payload length (<= MAX_PAYLOAD, must equal the bytes that follow)
//!     20    4  fd count (must equal the fds attached)
//!     24    …  payload
//! ```
//! The holder never parses a payload: it is the raw bytes runc sent with the listener fd.

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"RGH1";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 24;
/// runc's state payload is a few KiB; anything near this is hostile.
pub const MAX_PAYLOAD: usize = 64 * 1024;
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_PAYLOAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// judge -> holder: "I judge execs now; send me everything".
    Hello = 1,
    /// holder -> judge: one handover from runc (listener fd(s) + runc's payload).
    Entry = 2,
    /// holder -> judge: every entry held at Hello time has been sent.
    SyncDone = 3,
    /// holder -> judge: another judge said Hello; stop receiving notifications and exit.
    Replaced = 4,
    /// judge -> holder: give this entry back to the holder (the judge got it elsewhere, e.g.
    /// re-adopting after the holder restarted). Payload = runc's bytes; fds attached.
    Adopt = 5,
    /// successor holder -> holder: hand over the listening sockets and every entry, then exit.
    Takeover = 6,
    /// holder -> successor: the listening sockets (fds: runc listener, control listener).
    Listeners = 7,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Entry,
            3 => Kind::SyncDone,
            4 => Kind::Replaced,
            5 => Kind::Adopt,
            6 => Kind::Takeover,
            7 => Kind::Listeners,
            _ => return None,
        })
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("protocol version {0}, this build speaks {VERSION}")]
    Version(u16),
    #[error("unknown message kind {0}")]
    Kind(u16),
    #[error("payload length {declared} does not match the {actual} bytes received")]
    Length { declared: usize, actual: usize },
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("{declared} fds declared but {actual} attached")]
    Fds { declared: usize, actual: usize },
    #[error("message was truncated by the kernel")]
    Truncated,
}

/// A decoded message header plus its payload slice.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    pub entry: u64,
    pub payload: &'a [u8],
}

pub fn encode(kind: Kind, entry: u64, payload: &[u8], nfds: usize) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(kind as u16).to_be_bytes());
    out.extend_from_slice(&entry.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&(nfds as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks a received packet (with `nfds` fds attached) and splits it.
pub fn decode(packet: &[u8], nfds: usize, truncated: bool) -> Result<Message<'_>, WireError> {
    if truncated {
        return Err(WireError::Truncated);
    }
    if packet.len() < HEADER_LEN {
        return Err(WireError::Short(packet.len()));
    }
    let be16 = |o: usize| u16::from_be_bytes([packet[o], packet[o + 1]]);
    let be32 = |o: usize| {
        u32::from_be_bytes([packet[o], packet[o + 1], packet[o + 2], packet[o + 3]]) as usize
    };
    let magic = [packet[0], packet[1], packet[2], packet[3]];
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    if be16(4) != VERSION {
        return Err(WireError::Version(be16(4)));
    }
    let kind = Kind::from_u16(be16(6)).ok_or(WireError::Kind(be16(6)))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&packet[8..16]);
    let declared = be32(16);
    if declared > MAX_PAYLOAD {
        return Err(WireError::TooLarge(declared));
    }
    let payload = &packet[HEADER_LEN..];
    if declared != payload.len() {
        return Err(WireError::Length {
            declared,
            actual: payload.len(),
        });
    }
    if be32(20) != nfds {
        return Err(WireError::Fds {
            declared: be32(20),
            actual: nfds,
        });
    }
    Ok(Message {
        kind,
        entry: u64::from_be_bytes(id),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = encode(Kind::Entry, 42, b"{\"x\":1}", 1).unwrap();
        let m = decode(&p, 1, false).unwrap();
        assert_eq!(
            m,
            Message {
                kind: Kind::Entry,
                entry: 42,
                payload: b"{\"x\":1}"
            }
        );
    }

    #[test]
    fn every_malformation_is_an_error() {
        let good = encode(Kind::Hello, 0, b"abc", 0).unwrap();
        assert_eq!(decode(&good[..10], 0, false), Err(WireError::Short(10)));
        let mut m = good.clone();
        m[0] = b'X';
        assert!(matches!(decode(&m, 0, false), Err(WireError::Magic(_))));
        let mut m = good.clone();
        m[5] = 9;
        assert_eq!(decode(&m, 0, false), Err(WireError::Version(9)));
        let mut m = good.clone();
        m[7] = 99;
        assert_eq!(decode(&m, 0, false), Err(WireError::Kind(99)));
        assert_eq!(
            decode(&good[..good.len() - 1], 0, false),
            Err(WireError::Length {
                declared: 3,
                actual: 2
            })
        );
        assert_eq!(
            decode(&good, 1, false),
            Err(WireError::Fds {
                declared: 0,
                actual: 1
            })
        );
        assert_eq!(decode(&good, 0, true), Err(WireError::Truncated));
        let mut m = good.clone();
        m[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&m, 0, false),
            Err(WireError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert!(encode(Kind::Entry, 1, &vec![0; MAX_PAYLOAD + 1], 1).is_err());
    }
}
