//! Where the runtime hands the seccomp listener fd over: `listenerPath` and `listenerMetadata`
//! of the OCI seccomp policy, checked once so that both injection paths trust the same values.

use thiserror::Error;

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_LISTENER_PATH_BYTES: usize = 107;

/// The metadata travels in the runtime's handover JSON next to the whole container state; the
/// monitor needs a container reference in it, not a document.
pub const MAX_LISTENER_METADATA_BYTES: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ListenerError {
    #[error("listener path {path:?} is not absolute")]
    PathNotAbsolute { path: String },
    #[error(
        "listener path {path:?} is {len} bytes; a unix socket path must fit in {max} bytes",
        max = MAX_LISTENER_PATH_BYTES
    )]
    PathTooLong { path: String, len: usize },
    #[error("listener {what} contains a NUL byte")]
    ContainsNul { what: &'static str },
    #[error(
        "listener metadata is {len} bytes; at most {max} are allowed",
        max = MAX_LISTENER_METADATA_BYTES
    )]
    MetadataTooLong { len: usize },
}

/// A checked listener target: absolute socket path and opaque metadata for the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyListener {
    path: String,
    metadata: String,
}

impl NotifyListener {
    pub fn new(
        path: impl Into<String>,
        metadata: impl Into<String>,
    ) -> Result<Self, ListenerError> {
        let path = path.into();
        let metadata = metadata.into();
        if !path.starts_with('/') {
            return Err(ListenerError::PathNotAbsolute { path });
        }
        if path.contains('\0') {
            return Err(ListenerError::ContainsNul { what: "path" });
        }
        if path.len() > MAX_LISTENER_PATH_BYTES {
            let len = path.len();
            return Err(ListenerError::PathTooLong { path, len });
        }
        if metadata.contains('\0') {
            return Err(ListenerError::ContainsNul { what: "metadata" });
        }
        if metadata.len() > MAX_LISTENER_METADATA_BYTES {
            return Err(ListenerError::MetadataTooLong {
                len: metadata.len(),
            });
        }
        Ok(NotifyListener { path, metadata })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn metadata(&self) -> &str {
        &self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_normal_target() {
        let l = NotifyListener::new("/run/rce-guard/seccomp.sock", "c=abc").unwrap();
        assert_eq!(l.path(), "/run/rce-guard/seccomp.sock");
        assert_eq!(l.metadata(), "c=abc");
    }

    #[test]
    fn refuses_relative_long_and_nul_paths() {
        assert!(matches!(
            NotifyListener::new("run/x.sock", ""),
            Err(ListenerError::PathNotAbsolute { .. })
        ));
        let longest = format!("/{}", "a".repeat(MAX_LISTENER_PATH_BYTES - 1));
        assert!(NotifyListener::new(longest.clone(), "").is_ok());
        assert!(matches!(
            NotifyListener::new(format!("{longest}b"), ""),
            Err(ListenerError::PathTooLong { len: 108, .. })
        ));
        assert_eq!(
            NotifyListener::new("/a\0b", ""),
            Err(ListenerError::ContainsNul { what: "path" })
        );
    }

    #[test]
    fn caps_metadata() {
        let max = "m".repeat(MAX_LISTENER_METADATA_BYTES);
        assert!(NotifyListener::new("/s", max.clone()).is_ok());
        assert_eq!(
            NotifyListener::new("/s", format!("{max}m")),
            Err(ListenerError::MetadataTooLong {
                len: MAX_LISTENER_METADATA_BYTES + 1
            })
        );
        assert_eq!(
            NotifyListener::new("/s", "a\0"),
            Err(ListenerError::ContainsNul { what: "metadata" })
        );
    }
}
