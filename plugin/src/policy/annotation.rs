//! The contract between the NRI plugin and the runtime wrapper.
//!
//! Runtimes with NRI < 0.10 cannot take a seccomp adjustment, but every NRI version can add an
//! annotation. The plugin adds [`SECCOMP_NOTIFY_ANNOTATION`] to the container's OCI spec with a
//! small versioned JSON value, and the wrapper, seeing it on `create`, merges the notify rule
//! into the bundle's `config.json`:
//!
//! ```json
//! {"v":1,"listenerPath":"/run/rce-guard/seccomp.sock","listenerMetadata":"..."}
//! ```
//!
//! Both sides use this module, so the value is built and checked by the same code.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::listener::{ListenerError, NotifyListener};

/// OCI annotation key set by the plugin and read by the wrapper.
pub const SECCOMP_NOTIFY_ANNOTATION: &str = "rce-guard.io/seccomp-notify";

/// The only value version this build understands.
pub const ANNOTATION_VERSION: u64 = 1;

/// Longer values are refused before parsing; a valid one is far shorter.
pub const MAX_ANNOTATION_BYTES: usize = 4096;

#[derive(Debug, Error)]
pub enum AnnotationError {
    #[error(
        "annotation {SECCOMP_NOTIFY_ANNOTATION} is {len} bytes (at most {MAX_ANNOTATION_BYTES})"
    )]
    TooLong { len: usize },
    #[error("annotation {SECCOMP_NOTIFY_ANNOTATION} is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("annotation {SECCOMP_NOTIFY_ANNOTATION} has no numeric \"v\" field")]
    MissingVersion,
    #[error(
        "annotation {SECCOMP_NOTIFY_ANNOTATION} has version {found}; this build understands \
         version {ANNOTATION_VERSION} only (plugin and wrapper versions differ)"
    )]
    UnsupportedVersion { found: u64 },
    #[error("annotation {SECCOMP_NOTIFY_ANNOTATION}: {0}")]
    Listener(#[from] ListenerError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireV1 {
    v: u64,
    listener_path: String,
    #[serde(default)]
    listener_metadata: String,
}

/// The annotation value asking for `listener`.
pub fn encode_annotation(listener: &NotifyListener) -> String {
    let wire = WireV1 {
        v: ANNOTATION_VERSION,
        listener_path: listener.path().to_string(),
        listener_metadata: listener.metadata().to_string(),
    };
    serde_json::to_string(&wire).expect("a struct of strings always serializes")
}

/// Parses and checks an annotation value.
pub fn decode_annotation(value: &str) -> Result<NotifyListener, AnnotationError> {
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(AnnotationError::TooLong { len: value.len() });
    }
    let raw: serde_json::Value = serde_json::from_str(value).map_err(AnnotationError::Json)?;
    let version = raw
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .ok_or(AnnotationError::MissingVersion)?;
    if version != ANNOTATION_VERSION {
        return Err(AnnotationError::UnsupportedVersion { found: version });
    }
    let wire: WireV1 = serde_json::from_value(raw).map_err(AnnotationError::Json)?;
    Ok(NotifyListener::new(
        wire.listener_path,
        wire.listener_metadata,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_shape() {
        let l = NotifyListener::new("/run/rce-guard/seccomp.sock", "cid=abc").unwrap();
        let value = encode_annotation(&l);
        assert_eq!(
            value,
            r#"{"v":1,"listenerPath":"/run/rce-guard/seccomp.sock","listenerMetadata":"cid=abc"}"#
        );
        assert_eq!(decode_annotation(&value).unwrap(), l);
    }

    #[test]
    fn metadata_may_be_absent() {
        let l = decode_annotation(r#"{"v":1,"listenerPath":"/s.sock"}"#).unwrap();
        assert_eq!(l.metadata(), "");
    }

    #[test]
    fn refuses_bad_values() {
        let cases = [
            ("", "not valid JSON"),
            ("[1]", "no numeric"),
            (r#"{"listenerPath":"/s"}"#, "no numeric"),
            (r#"{"v":"1","listenerPath":"/s"}"#, "no numeric"),
            (r#"{"v":2,"listenerPath":"/s"}"#, "version 2"),
            (r#"{"v":1}"#, "listenerPath"),
            (r#"{"v":1,"listenerPath":"/s","extra":1}"#, "unknown field"),
            (r#"{"v":1,"listenerPath":"relative.sock"}"#, "not absolute"),
        ];
        for (value, expected) in cases {
            let err = decode_annotation(value).unwrap_err().to_string();
            assert!(err.contains(expected), "{value:?}: {err}");
        }
        let huge = format!(
            r#"{{"v":1,"listenerPath":"/s","listenerMetadata":"{}"}}"#,
            "x".repeat(MAX_ANNOTATION_BYTES)
        );
        assert!(matches!(
            decode_annotation(&huge),
            Err(AnnotationError::TooLong { .. })
        ));
    }
}
