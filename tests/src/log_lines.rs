//! Lines read from a child process's stdout or stderr, kept in order so that a test can wait for
//! one that matches, or look at everything after a point in time.
//!
//! The agent writes JSON: findings on stdout, tracing-subscriber's JSON log format on stderr
//! (`{"timestamp":..,"level":"INFO","fields":{"message":..,<fields>},"target":..}`). Lines that
//! are not JSON are kept too, as `Value::Null` with their raw text.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One line of output.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the harness read the line.
    pub at: Instant,
    /// The line as written, without the newline.
    pub raw: String,
    /// The parsed JSON, or `Value::Null` if the line is not JSON.
    pub json: Value,
}

impl LogLine {
    fn new(raw: String) -> Self {
        let json = serde_json::from_str(&raw).unwrap_or(Value::Null);
        LogLine {
            at: Instant::now(),
            raw,
            json,
        }
    }

    /// The tracing message (`fields.message`), if any.
    pub fn message(&self) -> Option<&str> {
        message(&self.json)
    }

    /// A field of the log event as text (see [`field_str`]).
    pub fn field(&self, name: &str) -> Option<String> {
        field_str(&self.json, name)
    }
}

/// The tracing message of a JSON log line: `fields.message` (or a top-level `message` when the
/// event was flattened).
pub fn message(json: &Value) -> Option<&str> {
    json.get("fields")
        .and_then(|f| f.get("message"))
        .or_else(|| json.get("message"))
        .and_then(Value::as_str)
}

/// A field of a JSON log line as text: looked up in `fields`, then at the top level, then in the
/// current span. Strings come back as they are, numbers and booleans in their JSON spelling.
pub fn field_str(json: &Value, name: &str) -> Option<String> {
    let found = json
        .get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| json.get(name))
        .or_else(|| json.get("span").and_then(|s| s.get(name)))?;
    Some(match found {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Why a wait for a line ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    TimedOut,
    /// The stream was closed (the process exited) and no line matched.
    Closed,
}

#[derive(Default)]
struct Lines {
    lines: Vec<LogLine>,
    closed: bool,
}

/// The lines of one stream, filled by a reader thread.
#[derive(Clone, Default)]
pub(crate) struct LineCollector {
    shared: Arc<(Mutex<Lines>, Condvar)>,
}

impl LineCollector {
    /// Starts a thread that reads `stream` line by line into the collector until EOF. Each line
    /// is also passed to `echo` (for example to print it when a test runs with `--nocapture`).
    pub(crate) fn spawn_reader(
        &self,
        name: String,
        stream: impl Read + Send + 'static,
        echo: impl Fn(&str) + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new().name(name).spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        let text = text.trim_end_matches(['\n', '\r']).to_string();
                        echo(&text);
                        let (lock, cvar) = &*shared;
                        lock.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .lines
                            .push(LogLine::new(text));
                        cvar.notify_all();
                    }
                }
            }
            let (lock, cvar) = &*shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cvar.notify_all();
        })
    }

    /// Number of lines so far: a mark for [`LineCollector::wait_for`].
    pub(crate) fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// A copy of every line so far.
    pub(crate) fn snapshot(&self) -> Vec<LogLine> {
        self.lock().lines.clone()
    }

    /// The first line at index `from` or later that matches, waiting up to `timeout` for it.
    pub(crate) fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&LogLine) -> bool,
    ) -> Result<LogLine, WaitEnd> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = from;
        loop {
            if let Some(found) = guard.lines.iter().skip(next).find(|l| pred(l)) {
                return Ok(found.clone());
            }
            next = next.max(guard.lines.len());
            if guard.closed {
                return Err(WaitEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::TimedOut);
            }
            guard = cvar
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The last `n` raw lines, one per line, for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let guard = self.lock();
        let start = guard.lines.len().saturating_sub(n);
        guard.lines[start..]
            .iter()
            .map(|l| l.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_fields_top_level_and_span() {
        let line = LogLine::new(
            r#"{"level":"INFO","fields":{"message":"container registered","pods":3},"pid":7,"span":{"conn":"a"}}"#
                .to_string(),
        );
        assert_eq!(line.message(), Some("container registered"));
        assert_eq!(line.field("pods").as_deref(), Some("3"));
        assert_eq!(line.field("pid").as_deref(), Some("7"));
        assert_eq!(line.field("conn").as_deref(), Some("a"));
        assert_eq!(line.field("missing"), None);
    }

    #[test]
    fn non_json_lines_are_kept_raw() {
        let line = LogLine::new("panicked at src/main.rs".to_string());
        assert!(line.json.is_null());
        assert_eq!(line.message(), None);
        assert_eq!(line.raw, "panicked at src/main.rs");
    }

    #[test]
    fn wait_for_sees_lines_after_the_mark_and_reports_close() {
        let collector = LineCollector::default();
        let input = b"{\"fields\":{\"message\":\"a\"}}\n{\"fields\":{\"message\":\"b\"}}\nplain\n";
        collector
            .spawn_reader("t".into(), &input[..], |_| {})
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(collector.len(), 3);
        let b = collector
            .wait_for(0, Duration::from_secs(1), |l| l.message() == Some("b"))
            .unwrap();
        assert_eq!(b.raw, r#"{"fields":{"message":"b"}}"#);
        let after = collector.wait_for(2, Duration::from_secs(1), |l| l.message() == Some("a"));
        assert_eq!(after.unwrap_err(), WaitEnd::Closed);
        assert_eq!(collector.tail(1), "plain");
    }
}
