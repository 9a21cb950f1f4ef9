//! The NRI connection multiplexer.
//!
//! NRI runs two ttrpc connections over one unix socket (the "trunk"). Every frame on the
//! trunk is `[u32 BE conn id][u32 BE payload length]` followed by the payload; conn id 0
//! is reserved. [`Mux::start`] turns the trunk into in-memory byte streams, one per
//! logical connection, that ttrpc can use as if they were sockets.
//!
//! Inbound, any framing is accepted (a ttrpc message may be split over frames or several
//! messages packed into one frame); frames for connections nobody opened are dropped.
//!
//! Outbound, the framing is chosen for the Go side's sake: it reads every frame into the
//! caller's buffer and fails the whole trunk when a frame does not fit, and its ttrpc reads
//! through a 4096-byte buffer. So each outgoing ttrpc message is cut at its own boundaries
//! (parsed from the 10-byte ttrpc header): its first frame holds at most 4096 bytes, the
//! rest go in frames of at most 4 MiB + 10, and no frame carries bytes of two messages.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// A logical connection id on the trunk.
pub type ConnId = u32;

/// Conn id 0 is reserved by the protocol.
pub const RESERVED_CONN_ID: ConnId = 0;
/// The runtime calls the plugin's `Plugin` service on this connection.
pub const PLUGIN_SERVICE_CONN: ConnId = 1;
/// The plugin calls the runtime's `Runtime` service on this connection.
pub const RUNTIME_SERVICE_CONN: ConnId = 2;

/// Size of the trunk frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Size of the ttrpc message header: `[u32 BE length][u32 BE stream id][u8 type][u8 flags]`.
pub const TTRPC_HEADER_LEN: usize = 10;
/// Largest frame that may start a ttrpc message (the Go reader's buffer size).
pub const FIRST_FRAME_MAX: usize = 4096;
/// Largest frame for the remainder of a message (the Go side's per-frame limit).
pub const LATER_FRAME_MAX: usize = TTRPC_HEADER_LEN + (4 << 20);
/// Largest inbound frame accepted. NRI 0.6.1 runtimes send a whole message in one frame,
/// and their ttrpc allows 16 MiB messages.
pub const MAX_INBOUND_FRAME: usize = TTRPC_HEADER_LEN + (16 << 20);
/// Largest outgoing ttrpc message body; our ttrpc stops at 4 MiB, this is a sanity cap.
pub const MAX_OUTBOUND_MESSAGE: usize = 16 << 20;

/// Frames queued per logical connection before the trunk reader waits (as on the Go side).
const INBOUND_QUEUE_FRAMES: usize = 256;
/// Buffer of each in-memory stream between ttrpc and the multiplexer.
const DUPLEX_BUFFER: usize = 256 << 10;
/// Distinct unknown conn ids we remember (to log each once) before we stop logging them.
const MAX_REMEMBERED_UNKNOWN_IDS: usize = 64;

/// Errors of the multiplexer.
#[derive(Debug, Error)]
pub enum MuxError {
    #[error("NRI conn id 0 is reserved and cannot be opened")]
    ReservedConnId,
    #[error("NRI conn id {0} opened twice")]
    DuplicateConnId(ConnId),
    #[error("NRI frame for conn {conn} announces {len} bytes, more than the {max}-byte limit")]
    FrameTooLarge {
        conn: ConnId,
        len: usize,
        max: usize,
    },
    #[error("NRI trunk closed in the middle of a frame {part}: got {got} of {want} bytes")]
    Truncated {
        part: &'static str,
        got: usize,
        want: usize,
    },
    #[error("reading the NRI trunk failed")]
    TrunkRead(#[source] io::Error),
    #[error("writing to the NRI trunk failed (conn {conn})")]
    TrunkWrite {
        conn: ConnId,
        #[source]
        source: io::Error,
    },
    #[error("outgoing ttrpc message on conn {conn} is {len} bytes, over the {max}-byte limit")]
    OutboundTooLarge {
        conn: ConnId,
        len: usize,
        max: usize,
    },
    #[error("ttrpc on conn {conn} stopped in the middle of a message: got {got} of {want} bytes")]
    OutboundTruncated {
        conn: ConnId,
        got: usize,
        want: usize,
    },
    #[error("reading outgoing bytes of conn {conn} failed")]
    OutboundRead {
        conn: ConnId,
        #[source]
        source: io::Error,
    },
    #[error("the NRI trunk reader task ended abnormally")]
    ReaderTask(#[source] tokio::task::JoinError),
    #[error("the NRI trunk was already reported closed")]
    AlreadyClosed,
}

/// A running multiplexer. Dropping it stops all its tasks and closes the trunk.
pub struct Mux {
    reader: Option<JoinHandle<Result<(), MuxError>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Mux {
    /// Starts multiplexing `trunk` and opens the logical connections `ids`, returning one
    /// in-memory byte stream per id, in the same order. The connections are opened before
    /// the trunk is read, so no early frame is lost.
    pub fn start<T, const N: usize>(
        trunk: T,
        ids: [ConnId; N],
    ) -> Result<(Mux, [DuplexStream; N]), MuxError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        check_ids(&ids)?;
        let (trunk_read, trunk_write) = tokio::io::split(trunk);
        let trunk_write = Arc::new(Mutex::new(trunk_write));
        // Writer tasks report a dead trunk here so that `closed()` resolves.
        let (fatal_tx, fatal_rx) = mpsc::channel::<MuxError>(N.max(1));
        let mut tasks = Vec::with_capacity(2 * N);
        let mut routes = Vec::with_capacity(N);

        let streams = ids.map(|id| {
            let (user_side, mux_side) = tokio::io::duplex(DUPLEX_BUFFER);
            let (from_user, to_user) = tokio::io::split(mux_side);
            let (frame_tx, frame_rx) = mpsc::channel(INBOUND_QUEUE_FRAMES);
            routes.push((id, frame_tx));
            tasks.push(tokio::spawn(deliver_inbound(id, frame_rx, to_user)));
            tasks.push(tokio::spawn(pump_outbound(
                id,
                from_user,
                trunk_write.clone(),
                fatal_tx.clone(),
            )));
            user_side
        });
        drop(fatal_tx);

        let reader = tokio::spawn(read_trunk(trunk_read, routes, fatal_rx));
        Ok((
            Mux {
                reader: Some(reader),
                tasks,
            },
            streams,
        ))
    }

    /// Waits until the trunk is gone: `Ok(())` when the peer closed it at a frame
    /// boundary, an error for a broken or malformed trunk. The logical connections see
    /// end-of-stream at that point.
    ///
    /// Cancel-safe: dropping the future before it completes leaves the result for the
    /// next call; once it has completed, later calls give [`MuxError::AlreadyClosed`].
    pub async fn closed(&mut self) -> Result<(), MuxError> {
        let reader = self.reader.as_mut().ok_or(MuxError::AlreadyClosed)?;
        let result = reader.await;
        self.reader = None;
        result.map_err(MuxError::ReaderTask)?
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn check_ids(ids: &[ConnId]) -> Result<(), MuxError> {
    let mut seen = HashSet::new();
    for &id in ids {
        if id == RESERVED_CONN_ID {
            return Err(MuxError::ReservedConnId);
        }
        if !seen.insert(id) {
            return Err(MuxError::DuplicateConnId(id));
        }
    }
    Ok(())
}

/// How a read of an exact number of bytes ended.
enum Filled {
    Complete,
    /// End of stream before the first byte.
    Eof,
    /// End of stream after this many bytes.
    Partial(usize),
}

async fn read_exact_or_eof<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<Filled> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) if got == 0 => return Ok(Filled::Eof),
            Ok(0) => return Ok(Filled::Partial(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Filled::Complete)
}

/// Reads frames off the trunk and routes each payload to its logical connection.
async fn read_trunk<R>(
    trunk: ReadHalf<R>,
    routes: Vec<(ConnId, mpsc::Sender<Vec<u8>>)>,
    mut fatal: mpsc::Receiver<MuxError>,
) -> Result<(), MuxError>
where
    R: AsyncRead + Send,
{
    let read_loop = route_frames(trunk, routes);
    tokio::pin!(read_loop);
    tokio::select! {
        result = &mut read_loop => result,
        Some(err) = fatal.recv() => Err(err),
    }
    // Returning drops the routes, which ends each connection's stream.
}

async fn route_frames<R: AsyncRead>(
    mut trunk: ReadHalf<R>,
    routes: Vec<(ConnId, mpsc::Sender<Vec<u8>>)>,
) -> Result<(), MuxError> {
    let mut unknown_logged: HashSet<ConnId> = HashSet::new();
    let mut header = [0u8; FRAME_HEADER_LEN];
    loop {
        match read_exact_or_eof(&mut trunk, &mut header)
            .await
            .map_err(MuxError::TrunkRead)?
        {
            Filled::Complete => {}
            Filled::Eof => return Ok(()),
            Filled::Partial(got) => {
                return Err(MuxError::Truncated {
                    part: "header",
                    got,
                    want: FRAME_HEADER_LEN,
                })
            }
        }
        let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_INBOUND_FRAME {
            return Err(MuxError::FrameTooLarge {
                conn,
                len,
                max: MAX_INBOUND_FRAME,
            });
        }
        let mut payload = vec![0u8; len];
        match read_exact_or_eof(&mut trunk, &mut payload)
            .await
            .map_err(MuxError::TrunkRead)?
        {
            Filled::Complete => {}
            Filled::Eof if len == 0 => {}
            Filled::Eof => {
                return Err(MuxError::Truncated {
                    part: "payload",
                    got: 0,
                    want: len,
                })
            }
            Filled::Partial(got) => {
                return Err(MuxError::Truncated {
                    part: "payload",
                    got,
                    want: len,
                })
            }
        }
        if payload.is_empty() {
            continue;
        }
        match routes.iter().find(|(id, _)| *id == conn) {
            Some((_, route)) => {
                // A connection whose user went away just loses its bytes; the other
                // connection keeps working.
                if route.send(payload).await.is_err() {
                    tracing::debug!(conn, "dropping NRI frame for a closed connection");
                }
            }
            None => {
                if unknown_logged.len() < MAX_REMEMBERED_UNKNOWN_IDS && unknown_logged.insert(conn)
                {
                    tracing::warn!(conn, "dropping NRI frames for an unknown connection id");
                }
            }
        }
    }
}

/// Writes inbound payloads of one connection into its in-memory stream, and signals
/// end-of-stream once the trunk is gone.
async fn deliver_inbound(
    conn: ConnId,
    mut frames: mpsc::Receiver<Vec<u8>>,
    mut to_user: WriteHalf<DuplexStream>,
) {
    while let Some(payload) = frames.recv().await {
        if let Err(e) = to_user.write_all(&payload).await {
            tracing::debug!(conn, error = %e, "NRI connection user stopped reading");
            break;
        }
    }
    let _ = to_user.shutdown().await;
}

/// Cuts the bytes that ttrpc writes on one connection into ttrpc messages and sends each
/// message to the trunk in Go-friendly frames.
async fn pump_outbound<W>(
    conn: ConnId,
    mut from_user: ReadHalf<DuplexStream>,
    trunk: Arc<Mutex<WriteHalf<W>>>,
    fatal: mpsc::Sender<MuxError>,
) where
    W: AsyncWrite + Send,
{
    let result = async {
        while let Some(message) = next_outbound_message(conn, &mut from_user).await? {
            let mut trunk = trunk.lock().await;
            for range in frame_ranges(message.len()) {
                write_frame(&mut *trunk, conn, &message[range])
                    .await
                    .map_err(|source| MuxError::TrunkWrite { conn, source })?;
            }
            trunk
                .flush()
                .await
                .map_err(|source| MuxError::TrunkWrite { conn, source })?;
        }
        Ok::<(), MuxError>(())
    }
    .await;
    // A connection that cannot send any more leaves its peer waiting for replies, so
    // the whole trunk goes down and the owner reconnects.
    if let Err(err) = result {
        let _ = fatal.try_send(err);
    }
}

/// Reads one complete ttrpc message (header and body) written by our ttrpc; `None` at a
/// clean end of stream.
async fn next_outbound_message<R: AsyncRead + Unpin>(
    conn: ConnId,
    from_user: &mut R,
) -> Result<Option<Vec<u8>>, MuxError> {
    let read_err = |source| MuxError::OutboundRead { conn, source };
    let mut header = [0u8; TTRPC_HEADER_LEN];
    match read_exact_or_eof(from_user, &mut header)
        .await
        .map_err(read_err)?
    {
        Filled::Complete => {}
        Filled::Eof => return Ok(None),
        Filled::Partial(got) => {
            return Err(MuxError::OutboundTruncated {
                conn,
                got,
                want: TTRPC_HEADER_LEN,
            })
        }
    }
    let body_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if body_len > MAX_OUTBOUND_MESSAGE {
        return Err(MuxError::OutboundTooLarge {
            conn,
            len: body_len,
            max: MAX_OUTBOUND_MESSAGE,
        });
    }
    let mut message = vec![0u8; TTRPC_HEADER_LEN + body_len];
    message[..TTRPC_HEADER_LEN].copy_from_slice(&header);
    match read_exact_or_eof(from_user, &mut message[TTRPC_HEADER_LEN..])
        .await
        .map_err(read_err)?
    {
        Filled::Complete => Ok(Some(message)),
        Filled::Eof if body_len == 0 => Ok(Some(message)),
        Filled::Eof => Err(MuxError::OutboundTruncated {
            conn,
            got: TTRPC_HEADER_LEN,
            want: TTRPC_HEADER_LEN + body_len,
        }),
        Filled::Partial(got) => Err(MuxError::OutboundTruncated {
            conn,
            got: TTRPC_HEADER_LEN + got,
            want: TTRPC_HEADER_LEN + body_len,
        }),
    }
}

/// The byte ranges of one message's frames: the first at most [`FIRST_FRAME_MAX`], the
/// rest at most [`LATER_FRAME_MAX`].
pub fn frame_ranges(message_len: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let first = message_len.min(FIRST_FRAME_MAX);
    ranges.push(0..first);
    let mut start = first;
    while start < message_len {
        let end = message_len.min(start + LATER_FRAME_MAX);
        ranges.push(start..end);
        start = end;
    }
    ranges
}

/// Writes one frame (header and payload) to the trunk.
async fn write_frame<W: AsyncWrite + Unpin>(
    trunk: &mut W,
    conn: ConnId,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NRI frame over 4 GiB"))?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&conn.to_be_bytes());
    header[4..].copy_from_slice(&len.to_be_bytes());
    trunk.write_all(&header).await?;
    trunk.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(5);

    fn frame(conn: ConnId, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A ttrpc message with a body of `body_len` bytes filled with `fill`.
    fn ttrpc_message(stream_id: u32, body_len: usize, fill: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(TTRPC_HEADER_LEN + body_len);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(&[1, 0]);
        out.resize(TTRPC_HEADER_LEN + body_len, fill);
        out
    }

    /// Reads one raw frame from the far end of the trunk.
    async fn read_frame(peer: &mut DuplexStream) -> (ConnId, Vec<u8>) {
        let mut header = [0u8; FRAME_HEADER_LEN];
        timeout(T, peer.read_exact(&mut header))
            .await
            .unwrap()
            .unwrap();
        let conn = u32::from_be_bytes(header[..4].try_into().unwrap());
        let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        timeout(T, peer.read_exact(&mut payload))
            .await
            .unwrap()
            .unwrap();
        (conn, payload)
    }

    async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        timeout(T, stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn inbound_payload_split_over_many_writes_arrives_whole() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [mut c1, _c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let bytes = frame(1, b"hello, plugin");
        for byte in &bytes {
            peer.write_all(std::slice::from_ref(byte)).await.unwrap();
            peer.flush().await.unwrap();
        }
        assert_eq!(read_n(&mut c1, 13).await, b"hello, plugin");
    }

    #[tokio::test]
    async fn inbound_frames_coalesced_in_one_write_are_all_delivered() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [mut c1, _c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let mut bytes = frame(1, b"abc");
        bytes.extend(frame(1, b"def"));
        bytes.extend(frame(1, b""));
        bytes.extend(frame(1, b"ghi"));
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(read_n(&mut c1, 9).await, b"abcdefghi");
    }

    #[tokio::test]
    async fn interleaved_connections_are_kept_apart() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [mut c1, mut c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let mut bytes = Vec::new();
        for i in 0..10u8 {
            bytes.extend(frame(1, &[b'a' + i]));
            bytes.extend(frame(2, &[b'0' + i]));
        }
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(read_n(&mut c1, 10).await, b"abcdefghij");
        assert_eq!(read_n(&mut c2, 10).await, b"0123456789");
    }

    #[tokio::test]
    async fn unknown_and_reserved_conn_ids_are_dropped() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [mut c1]) = Mux::start(trunk, [1]).unwrap();
        let mut bytes = frame(7, b"nobody");
        bytes.extend(frame(0, b"reserved"));
        bytes.extend(frame(7, b"again"));
        bytes.extend(frame(1, b"mine"));
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(read_n(&mut c1, 4).await, b"mine");
    }

    #[tokio::test]
    async fn opening_reserved_or_duplicate_ids_fails() {
        let (trunk, _peer) = tokio::io::duplex(64);
        assert!(matches!(
            Mux::start(trunk, [0, 1]),
            Err(MuxError::ReservedConnId)
        ));
        let (trunk, _peer) = tokio::io::duplex(64);
        assert!(matches!(
            Mux::start(trunk, [2, 2]),
            Err(MuxError::DuplicateConnId(2))
        ));
    }

    #[tokio::test]
    async fn oversized_inbound_frame_is_rejected_without_allocating_it() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [mut c1]) = Mux::start(trunk, [1]).unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&1u32.to_be_bytes());
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        peer.write_all(&header).await.unwrap();
        let err = timeout(T, mux.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(err, MuxError::FrameTooLarge { conn: 1, len, .. } if len == u32::MAX as usize),
            "{err}"
        );
        // The logical connection ends instead of hanging.
        let mut buf = [0u8; 1];
        assert_eq!(timeout(T, c1.read(&mut buf)).await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn truncated_header_is_an_error() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [_c1]) = Mux::start(trunk, [1]).unwrap();
        peer.write_all(&[0, 0, 0, 1, 0]).await.unwrap();
        drop(peer);
        let err = timeout(T, mux.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                MuxError::Truncated {
                    part: "header",
                    got: 5,
                    want: 8
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn peer_closing_mid_message_ends_connections_with_an_error() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [mut c1, mut c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let whole = frame(1, b"0123456789");
        peer.write_all(&whole[..FRAME_HEADER_LEN + 4])
            .await
            .unwrap();
        drop(peer);
        let err = timeout(T, mux.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                MuxError::Truncated {
                    part: "payload",
                    got: 4,
                    want: 10
                }
            ),
            "{err}"
        );
        let mut rest = Vec::new();
        timeout(T, c1.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "a partial frame must not be delivered");
        timeout(T, c2.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn clean_close_at_frame_boundary_is_ok() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [mut c1]) = Mux::start(trunk, [1]).unwrap();
        peer.write_all(&frame(1, b"bye")).await.unwrap();
        drop(peer);
        timeout(T, mux.closed()).await.unwrap().unwrap();
        let mut rest = Vec::new();
        timeout(T, c1.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"bye");
        assert!(matches!(mux.closed().await, Err(MuxError::AlreadyClosed)));
    }

    #[tokio::test]
    async fn waiting_for_close_can_be_cancelled_and_resumed() {
        let (trunk, peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [_c1]) = Mux::start(trunk, [1]).unwrap();
        let early = timeout(Duration::from_millis(20), mux.closed()).await;
        assert!(early.is_err(), "the trunk is still open");
        drop(peer);
        timeout(T, mux.closed()).await.unwrap().unwrap();
    }

    #[test]
    fn frame_ranges_follow_the_go_limits() {
        assert_eq!(frame_ranges(0), vec![0..0]);
        assert_eq!(frame_ranges(100), vec![0..100]);
        assert_eq!(frame_ranges(4096), vec![0..4096]);
        assert_eq!(frame_ranges(4097), vec![0..4096, 4096..4097]);
        let big = FIRST_FRAME_MAX + LATER_FRAME_MAX + 5;
        assert_eq!(
            frame_ranges(big),
            vec![
                0..FIRST_FRAME_MAX,
                FIRST_FRAME_MAX..FIRST_FRAME_MAX + LATER_FRAME_MAX,
                FIRST_FRAME_MAX + LATER_FRAME_MAX..big
            ]
        );
    }

    #[tokio::test]
    async fn outbound_20k_message_is_framed_at_message_boundaries() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [mut c1, _c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let big = ttrpc_message(1, 20 * 1024, 0xAB);
        let small = ttrpc_message(3, 100, 0xCD);
        let empty = ttrpc_message(5, 0, 0);
        let mut all = big.clone();
        all.extend_from_slice(&small);
        all.extend_from_slice(&empty);
        // Written in odd-sized pieces that straddle the message boundaries.
        let writer = tokio::spawn(async move {
            for piece in all.chunks(3000) {
                c1.write_all(piece).await.unwrap();
            }
            c1
        });

        let mut frames = Vec::new();
        let mut received = 0;
        let total = big.len() + small.len() + empty.len();
        while received < total {
            let (conn, payload) = read_frame(&mut peer).await;
            assert_eq!(conn, 1);
            received += payload.len();
            frames.push(payload);
        }
        let _c1 = writer.await.unwrap();

        // Message 1: first frame exactly 4096 bytes, then the remaining 16 KiB + 10.
        assert_eq!(frames[0].len(), FIRST_FRAME_MAX);
        assert_eq!(frames[0][..TTRPC_HEADER_LEN], big[..TTRPC_HEADER_LEN]);
        assert_eq!(frames[1].len(), big.len() - FIRST_FRAME_MAX);
        assert_eq!([frames[0].clone(), frames[1].clone()].concat(), big);
        // Messages 2 and 3 each in a frame of their own.
        assert_eq!(frames[2], small);
        assert_eq!(frames[3], empty);
        assert_eq!(frames.len(), 4);
    }

    #[tokio::test]
    async fn outbound_frames_carry_their_conn_id() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (_mux, [_c1, mut c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let msg = ttrpc_message(1, 5, 7);
        c2.write_all(&msg).await.unwrap();
        assert_eq!(read_frame(&mut peer).await, (2, msg));
    }

    #[tokio::test]
    async fn oversized_outbound_message_closes_the_trunk() {
        let (trunk, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, [mut c1, mut c2]) = Mux::start(trunk, [1, 2]).unwrap();
        let msg = ttrpc_message(1, 3, 9);
        c2.write_all(&msg).await.unwrap();
        assert_eq!(read_frame(&mut peer).await, (2, msg));
        let mut bogus = ((MAX_OUTBOUND_MESSAGE + 1) as u32).to_be_bytes().to_vec();
        bogus.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        c1.write_all(&bogus).await.unwrap();
        let err = timeout(T, mux.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(err, MuxError::OutboundTooLarge { conn: 1, .. }),
            "{err}"
        );
        // Both connections see end-of-stream.
        let mut rest = Vec::new();
        timeout(T, c1.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        timeout(T, c2.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }
}
