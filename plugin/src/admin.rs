//! The admin socket: a local, root-only unix socket where `rce-guard status` asks the running
//! agent what it watches. One request line in, one JSON document out.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Produces the status document.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source} (is `rce-guard run` running, and are you root?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad answer from the agent at {path}: {message}")]
    Answer { path: PathBuf, message: String },
}

/// Creates `path` (parent directory 0700, stale socket removed) and listens on it.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let err = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    crate::fsutil::prepare_socket_path(path).map_err(err)?;
    UnixListener::bind(path).map_err(err)
}

/// Serves status requests until the task is dropped.
pub async fn serve(listener: UnixListener, status: StatusFn) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(1024));
            let read = reader.read_line(&mut line);
            let answer = match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(_)) if line.trim() == "status" => status(),
                Ok(Ok(_)) => {
                    serde_json::json!({"error": format!("unknown request {:?}; try \"status\"", line.trim())})
                }
                _ => return,
            };
            let mut body = answer.to_string();
            body.push('\n');
            let _ = w.write_all(body.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Asks a running agent for its status (blocking; used by `rce-guard status`).
pub fn request_status(path: &Path) -> Result<serde_json::Value, AdminError> {
    let conn_err = |source| AdminError::Connect {
        path: path.to_owned(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(conn_err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(conn_err)?;
    s.write_all(b"status\n").map_err(conn_err)?;
    let mut body = String::new();
    s.take(64 << 20)
        .read_to_string(&mut body)
        .map_err(conn_err)?;
    serde_json::from_str(&body).map_err(|e| AdminError::Answer {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Renders the status document as a table for people.
pub fn render_table(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    if let Some(agent) = v.get("agent") {
        out.push_str(&format!(
            "agent {} mode={} nri={} node={}\n",
            s(&agent["version"]),
            s(&agent["mode"]),
            s(&agent["nri"]),
            s(&agent["node"])
        ));
    }
    out.push_str(&format!(
        "{:<20} {:<28} {:<20} {:<13} {:<10} {:<9} {}\n",
        "NAMESPACE", "POD", "CONTAINER", "CONTAINER-ID", "STATE", "MONITORED", "NOTE"
    ));
    for c in v["containers"].as_array().into_iter().flatten() {
        let id = s(&c["container_id"]);
        out.push_str(&format!(
            "{:<20} {:<28} {:<20} {:<13} {:<10} {:<9} {}\n",
            s(&c["pod_namespace"]),
            s(&c["pod_name"]),
            s(&c["container_name"]),
            &id[..id.len().min(13)],
            s(&c["state"]),
            if c["monitored"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "NO"
            },
            s(&c["note"]),
        ));
    }
    for (k, val) in v.as_object().into_iter().flatten() {
        if k != "agent" && k != "containers" {
            out.push_str(&format!("{k}: {val}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_round_trip_and_unknown_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.sock");
        let listener = bind(&path).unwrap();
        let status: StatusFn =
            Arc::new(|| serde_json::json!({"containers": [{"pod_name": "p", "monitored": true}]}));
        tokio::spawn(serve(listener, status));
        let p = path.clone();
        let v = tokio::task::spawn_blocking(move || request_status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v["containers"][0]["pod_name"], "p");
        assert!(render_table(&v).contains("yes"));
        // the directory is private
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let missing = dir.path().join("nope.sock");
        let err = request_status(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot reach the agent"), "{err}");
    }
}
