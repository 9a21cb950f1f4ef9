//! Taking over the connection a runtime hands to a plugin it launched itself.
//!
//! containerd starts plugins found in its plugin directory with an already connected
//! socket and says which descriptor it is in `NRI_PLUGIN_SOCKET` (normally 3), together
//! with `NRI_PLUGIN_NAME` and `NRI_PLUGIN_IDX`.
//!
//! Turning a bare descriptor number into an owned socket normally takes `unsafe`. We
//! instead duplicate it through a pidfd of our own process (`pidfd_getfd`, Linux >= 5.6,
//! always permitted on oneself), which yields an `OwnedFd` in safe code. The inherited
//! descriptor itself stays open; it is one descriptor for the life of the process.

use tokio::net::UnixStream;

use rustix::net::SocketType;
use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};

use super::stub::StubError;

/// Environment variable naming the inherited connection's descriptor.
pub const ENV_PLUGIN_SOCKET: &str = "NRI_PLUGIN_SOCKET";
/// Environment variable with the plugin name the runtime derived from the file name.
pub const ENV_PLUGIN_NAME: &str = "NRI_PLUGIN_NAME";
/// Environment variable with the plugin index the runtime derived from the file name.
pub const ENV_PLUGIN_IDX: &str = "NRI_PLUGIN_IDX";

/// Takes over the connected stream socket whose descriptor number is `value`. Must be
/// called within a tokio runtime.
pub fn take_inherited_socket(value: &str) -> Result<UnixStream, StubError> {
    let fd: i32 = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| StubError::InvalidLaunchSocket {
            value: value.to_owned(),
        })?;
    let inherit_err = |source: rustix::io::Errno| StubError::InheritSocket {
        fd,
        source: source.into(),
    };
    let me = pidfd_open(getpid(), PidfdFlags::empty()).map_err(inherit_err)?;
    let owned = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()).map_err(inherit_err)?;
    let kind = rustix::net::sockopt::socket_type(&owned).map_err(inherit_err)?;
    if kind != SocketType::STREAM {
        return Err(StubError::InheritSocket {
            fd,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a stream socket"),
        });
    }
    let stream = std::os::unix::net::UnixStream::from(owned);
    stream
        .set_nonblocking(true)
        .map_err(|source| StubError::InheritSocket { fd, source })?;
    UnixStream::from_std(stream).map_err(|source| StubError::InheritSocket { fd, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_inherited_socket_is_taken_over_by_number() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut taken = take_inherited_socket(&ours.as_raw_fd().to_string()).unwrap();
        taken.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn bad_descriptor_values_are_clear_errors() {
        assert!(matches!(
            take_inherited_socket("three"),
            Err(StubError::InvalidLaunchSocket { .. })
        ));
        assert!(matches!(
            take_inherited_socket("-1"),
            Err(StubError::InvalidLaunchSocket { .. })
        ));
        let file = tempfile::tempfile().unwrap();
        let err = take_inherited_socket(&file.as_raw_fd().to_string()).unwrap_err();
        assert!(matches!(err, StubError::InheritSocket { .. }), "{err}");
        // A number that is not an open descriptor.
        let err = take_inherited_socket("1000000").unwrap_err();
        assert!(matches!(err, StubError::InheritSocket { .. }), "{err}");
    }
}
