//! Findings as JSON lines on stdout (the agent's logs go to stderr), for `kubectl logs` and
//! Cloud Logging.

use std::io::Write;

use super::Sink;

pub struct StdoutSink;

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        // One write per line under the lock, so lines never interleave with other writers.
        let mut out = std::io::stdout().lock();
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        out.write_all(&buf)?;
        out.flush()
    }
}
