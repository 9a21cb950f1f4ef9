//! Messages into the runtime's own log file (`--log`).
//!
//! During `create` the runtime's stdout and stderr are usually the container's stdio, so the
//! wrapper writes nothing there on success. containerd reads the last `error` entry of this log
//! file when a runtime call fails and puts it into its error message; warnings stay in the file
//! for the operator. Lines follow runc's formats (logrus JSON or text).

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warning,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One log line in runc's `format` (`json`; anything else is text).
pub fn format_line(format: Option<&str>, level: Level, msg: &str, now: SystemTime) -> String {
    let time = rfc3339_utc(now);
    if format == Some("json") {
        let line = serde_json::json!({"level": level.as_str(), "msg": msg, "time": time});
        format!("{line}\n")
    } else {
        let quoted = serde_json::Value::String(msg.to_string());
        format!("time=\"{time}\" level={} msg={quoted}\n", level.as_str())
    }
}

/// Appends one line; a log that cannot be written is not worth failing the call for.
pub fn append(log: &Path, format: Option<&str>, level: Level, msg: &str) {
    let line = format_line(format, level, msg, SystemTime::now());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time after the epoch.
fn rfc3339_utc(t: SystemTime) -> String {
    crate::timefmt::rfc3339_secs(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339_utc(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn json_line_is_what_containerd_parses() {
        let line = format_line(Some("json"), Level::Error, "bad \"thing\"", UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "bad \"thing\"");
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn text_line_quotes_the_message() {
        let line = format_line(None, Level::Warning, "a \"b\"", UNIX_EPOCH);
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:00Z\" level=warning msg=\"a \\\"b\\\"\"\n"
        );
    }

    #[test]
    fn append_adds_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log.json");
        append(&log, Some("json"), Level::Warning, "one");
        append(&log, Some("json"), Level::Error, "two");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"msg\":\"two\""));
    }
}
