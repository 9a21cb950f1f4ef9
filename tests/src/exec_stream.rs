//! An interactive exec session as `kubectl exec -i` opens one: CRI `Exec` gives a URL on
//! containerd's streaming server, and the client speaks the Kubernetes channel protocol
//! (`v4.channel.k8s.io`) over a WebSocket to it. Each binary message starts with a channel
//! byte: 0 stdin, 1 stdout, 2 stderr, 3 the exit status (a JSON `Status`).
//!
//! The process in the container gets the shim's pipes as stdio (no tty), which is what a
//! kubectl exec with piped input looks like to the exec monitor.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Endpoint, Uri};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;

/// WebSocket opcodes (RFC 6455).
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Asks containerd (CRI `Exec` on `grpc_socket`) for a streaming exec of `cmd` in
/// `container_id` with stdin, stdout and stderr attached and no tty; returns the URL.
pub fn exec_url(grpc_socket: &Path, container_id: &str, cmd: &[&str]) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime for CRI Exec")?;
    let socket = grpc_socket.to_path_buf();
    let request = api::ExecRequest {
        container_id: container_id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    };
    rt.block_on(async move {
        let channel = Endpoint::try_from("http://[::1]:0")?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await?;
        let mut client = RuntimeServiceClient::new(channel);
        let call = client.exec(request);
        let response = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .map_err(|_| anyhow!("CRI Exec timed out"))?
            .map_err(|s| anyhow!("CRI Exec failed: {:?}: {}", s.code(), s.message()))?;
        anyhow::Ok(response.into_inner().url)
    })
}

/// How an exec session ended.
#[derive(Debug, Clone)]
pub struct ExecSessionEnd {
    pub stdout: String,
    pub stderr: String,
    /// The JSON status from channel 3 (`{"status":"Success",...}`), if one came.
    pub status: Option<serde_json::Value>,
}

impl ExecSessionEnd {
    /// True when the status says the command exited 0.
    pub fn succeeded(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s["status"] == "Success")
    }
}

/// One open session.
pub struct ExecSession {
    stream: TcpStream,
    /// Bytes read from the socket, not yet parsed into frames.
    inbox: Vec<u8>,
    /// A message whose frames are still arriving.
    partial: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Vec<u8>,
    closed: bool,
    mask_seed: u32,
}

impl ExecSession {
    /// Starts `cmd` in the container through CRI Exec and connects to its stream.
    pub fn start(grpc_socket: &Path, container_id: &str, cmd: &[&str]) -> Result<Self> {
        let url = exec_url(grpc_socket, container_id, cmd)?;
        Self::connect(&url).with_context(|| format!("connecting to the exec stream {url}"))
    }

    /// Opens the WebSocket to a streaming URL (`http://host:port/exec/<token>`).
    pub fn connect(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("unexpected streaming URL {url:?} (want http://)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut stream = TcpStream::connect(authority)
            .with_context(|| format!("connecting to the streaming server {authority}"))?;
        stream.set_nodelay(true).ok();
        // The key is any 16 bytes in base64; the server's answer to it is not checked.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: cmNlLWd1YXJkLWUyZS10ZXN0\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .context("sending the upgrade request")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let body_start = loop {
            if let Some(pos) = find(&head, b"\r\n\r\n") {
                break pos + 4;
            }
            let n = stream
                .read(&mut buf)
                .context("reading the upgrade answer")?;
            if n == 0 {
                bail!(
                    "streaming server closed during the upgrade: {:?}",
                    String::from_utf8_lossy(&head)
                );
            }
            head.extend_from_slice(&buf[..n]);
        };
        let status_line = String::from_utf8_lossy(&head[..body_start]).into_owned();
        if !status_line.starts_with("HTTP/1.1 101") {
            bail!("the streaming server refused the WebSocket upgrade: {status_line:?}");
        }
        Ok(ExecSession {
            stream,
            inbox: head[body_start..].to_vec(),
            partial: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: Vec::new(),
            closed: false,
            mask_seed: std::process::id() ^ 0x5a5a_1234,
        })
    }

    /// Writes `data` to the process's stdin.
    pub fn send_stdin(&mut self, data: &str) -> Result<()> {
        let mut payload = Vec::with_capacity(data.len() + 1);
        payload.push(STDIN);
        payload.extend_from_slice(data.as_bytes());
        self.write_frame(OP_BINARY, &payload)
    }

    /// Waits until stdout contains `pattern`; returns stdout so far.
    pub fn wait_stdout(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if find(&self.stdout, pattern.as_bytes()).is_some() {
                return Ok(String::from_utf8_lossy(&self.stdout).into_owned());
            }
            if self.closed || Instant::now() >= deadline {
                bail!(
                    "no {pattern:?} on the exec session's stdout (closed: {}); stdout {:?}, \
                     stderr {:?}",
                    self.closed,
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr)
                );
            }
            self.pump(deadline)?;
        }
    }

    /// Waits for the server to end the session (after the process exited).
    pub fn wait_end(mut self, timeout: Duration) -> Result<ExecSessionEnd> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if Instant::now() >= deadline {
                bail!(
                    "exec session still open after {timeout:?}; stdout {:?}, stderr {:?}",
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr)
                );
            }
            self.pump(deadline)?;
        }
        let status = (!self.status.is_empty())
            .then(|| serde_json::from_slice(&self.status).ok())
            .flatten();
        Ok(ExecSessionEnd {
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            status,
        })
    }

    /// Reads from the socket once (bounded by `deadline`) and handles every complete frame.
    fn pump(&mut self, deadline: Instant) -> Result<()> {
        while let Some((fin, opcode, payload)) = self.next_frame()? {
            self.handle_frame(fin, opcode, payload)?;
        }
        if self.closed {
            return Ok(());
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(200));
        self.stream.set_read_timeout(Some(wait)).ok();
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => self.closed = true,
            Err(e) => return Err(e).context("reading the exec stream"),
        }
        while let Some((fin, opcode, payload)) = self.next_frame()? {
            self.handle_frame(fin, opcode, payload)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) -> Result<()> {
        match opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                self.partial.extend_from_slice(&payload);
                if fin {
                    let message = std::mem::take(&mut self.partial);
                    if let Some((&channel, data)) = message.split_first() {
                        match channel {
                            STDOUT => self.stdout.extend_from_slice(data),
                            STDERR => self.stderr.extend_from_slice(data),
                            STATUS => self.status.extend_from_slice(data),
                            _ => {}
                        }
                    }
                }
            }
            OP_CLOSE => {
                let _ = self.write_frame(OP_CLOSE, &[]);
                self.closed = true;
            }
            OP_PING => self.write_frame(OP_PONG, &payload)?,
            _ => {}
        }
        Ok(())
    }

    /// Parses one complete frame off the inbox: (fin, opcode, unmasked payload).
    fn next_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>> {
        let b = &self.inbox;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            short => (u64::from(short), 2),
        };
        let len = usize::try_from(len).context("frame too large")?;
        if len > 64 << 20 {
            bail!("exec stream frame of {len} bytes: not a sane server");
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i % 4];
            }
        }
        self.inbox.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }

    /// Sends one frame; a client must mask what it sends.
    fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_103_515_245)
            .wrapping_add(12_345);
        let mask = self.mask_seed.to_be_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .write_all(&frame)
            .context("writing to the exec stream")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
