//! Hostile and broken peers on both of the holder's sockets: each is refused or dropped, and
//! the holder keeps serving (the judge still gets the next real handover, nothing held is
//! lost, the process stays up).

mod holder_support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use holder_support::*;
use rce_guard::holder::server::{connect_control, recv, send};
use rce_guard::holder::wire::{self, Kind, MAX_PAYLOAD};
use rce_guard::holder::HolderEvent;

/// A holder with one judge connected and synced, and one held entry.
struct Served {
    holder: HolderProc,
    judge: Judge,
    /// Write ends of the pipes handed over: while kept, the holder's copies stay open.
    held: Vec<OwnedFd>,
    _dir: tempfile::TempDir,
}

fn served() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let judge = Judge::connect(&holder.control);
    judge.sync();
    let held = hand_over_pipe(&holder.listener, &runc_payload("held", 1, 800));
    judge.expect_entry();
    Served {
        holder,
        judge,
        held: vec![held],
        _dir: dir,
    }
}

impl Served {
    /// The holder is up, its judge was neither replaced nor dropped, and a real handover
    /// still reaches it.
    fn still_serves(&mut self, tag: &str) {
        self.holder.assert_running();
        let payload = runc_payload(tag, 2, 600);
        self.held
            .push(hand_over_pipe(&self.holder.listener, &payload));
        let e = self.judge.expect_entry();
        assert_eq!(
            e.payload, payload,
            "after {tag}: the next handover reaches the judge"
        );
    }
}

/// The holder closes this control connection within `within` (a read sees EOF or a reset).
fn closed_by_holder(conn: &OwnedFd, within: Duration) -> bool {
    rustix::net::sockopt::set_socket_timeout(
        conn,
        rustix::net::sockopt::Timeout::Recv,
        Some(within),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    match rustix::net::recv(conn, &mut buf, rustix::net::RecvFlags::empty()) {
        Ok((0, _)) => true,
        Ok(_) => false,
        Err(rustix::io::Errno::CONNRESET) => true,
        Err(_) => false,
    }
}

#[test]
fn garbage_on_the_control_socket_is_dropped_and_the_judge_stays() {
    require_root();
    let mut s = served();
    let hello = wire::encode(Kind::Hello, 0, &[], 0).unwrap();
    let mut bad_magic = hello.clone();
    bad_magic[..4].copy_from_slice(b"XXXX");
    let mut bad_version = hello.clone();
    bad_version[4..6].copy_from_slice(&2u16.to_be_bytes());
    let mut bad_kind = hello.clone();
    bad_kind[6..8].copy_from_slice(&99u16.to_be_bytes());
    let mut long_length = wire::encode(Kind::Hello, 0, b"abc", 0).unwrap();
    long_length[16..20].copy_from_slice(&10u32.to_be_bytes());
    let mut huge_length = hello.clone();
    huge_length[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut claims_fds = hello.clone();
    claims_fds[20..24].copy_from_slice(&3u32.to_be_bytes());
    let oversized = vec![0x41u8; MAX_PAYLOAD + 4096];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"hello holder, please give me every fd".to_vec()),
        ("short", b"RGH1".to_vec()),
        ("bad magic", bad_magic),
        ("bad version", bad_version),
        ("unknown kind", bad_kind),
        ("length longer than the packet", long_length),
        ("length over the limit", huge_length),
        ("fds declared, none attached", claims_fds),
        ("oversized packet", oversized),
        (
            "an Entry as first message",
            wire::encode(Kind::Entry, 7, b"{}", 0).unwrap(),
        ),
        (
            "Replaced as first message",
            wire::encode(Kind::Replaced, 0, &[], 0).unwrap(),
        ),
    ];
    for (what, bytes) in &cases {
        let conn = connect_control(&s.holder.control).unwrap();
        rustix::net::send(&conn, bytes, rustix::net::SendFlags::NOSIGNAL).unwrap();
        assert!(
            closed_by_holder(&conn, Duration::from_secs(3)),
            "{what}: the holder closes the connection"
        );
    }
    // A Hello with an fd attached (fd count says 0): refused too.
    let conn = connect_control(&s.holder.control).unwrap();
    let (r, _w) = std::io::pipe().unwrap();
    rce_guard::fdpass::send_with_fds(conn.as_fd(), &hello, &[r.as_fd()]).unwrap();
    assert!(
        closed_by_holder(&conn, Duration::from_secs(3)),
        "Hello with an undeclared fd"
    );
    // None of that replaced or disturbed the judge.
    s.judge.expect_nothing(Duration::from_millis(200));
    s.still_serves("after-control-garbage");
    assert_eq!(s.holder.log_count("the previous one was told to stop"), 0);
}

#[test]
fn a_judge_that_sends_garbage_is_dropped_and_a_new_judge_gets_everything() {
    require_root();
    let mut s = served();
    // An fd-less Adopt is ignored, not fatal.
    s.judge.link.adopt(5, &[], b"no fd").unwrap();
    s.holder.wait_log(
        "unexpected message from the judge; ignored",
        Duration::from_secs(5),
    );
    s.still_serves("after-fdless-adopt");

    // A judge on a raw connection: Hello, its sync, then garbage.
    let conn = connect_control(&s.holder.control).unwrap();
    send(conn.as_fd(), Kind::Hello, 0, &[], &[]).unwrap();
    let mut entries = 0;
    loop {
        let m = recv(conn.as_fd(), false)
            .unwrap()
            .expect("sync from the holder");
        match m.kind {
            Kind::Entry => entries += 1,
            Kind::SyncDone => break,
            other => panic!("unexpected {other:?} during the sync"),
        }
    }
    assert_eq!(entries, s.held.len());
    assert!(matches!(s.judge.next(), HolderEvent::Replaced));
    rustix::net::send(
        &conn,
        b"\x00garbage from a judge",
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert!(
        closed_by_holder(&conn, Duration::from_secs(3)),
        "garbage judge dropped"
    );
    s.holder.wait_log(
        "bad message from the judge; disconnecting it",
        Duration::from_secs(5),
    );

    // The next judge gets every entry.
    s.judge = Judge::connect(&s.holder.control);
    let (got, count) = s.judge.sync();
    assert_eq!(count as usize, s.held.len());
    assert_eq!(got.len(), s.held.len());
    s.still_serves("after-garbage-judge");
}

#[test]
fn oversized_and_fdless_and_overfull_handovers_are_dropped() {
    require_root();
    let mut s = served();

    // Over the payload limit (with an fd).
    let (r, _w) = std::io::pipe().unwrap();
    let big = vec![b' '; MAX_PAYLOAD + 10];
    let _ = hand_over(&s.holder.listener, &[r.as_fd()], &big);
    s.holder.wait_log(
        "listener handover too large; dropped",
        Duration::from_secs(5),
    );

    // No fd at all.
    hand_over(&s.holder.listener, &[], &runc_payload("nofd", 3, 300)).unwrap();
    s.holder.wait_log(
        "listener handover without an fd; dropped",
        Duration::from_secs(5),
    );

    // More fds than a handover carries, in one message: the kernel can only deliver what
    // fits the holder's control buffer and flags the rest as cut off.
    let pipes: Vec<_> = (0..9).map(|_| std::io::pipe().unwrap()).collect();
    let fds: Vec<_> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
    let stream = UnixStream::connect(&s.holder.listener).unwrap();
    send_fds_raw(&stream, b"{\"fds\":[]}", &fds);
    drop(stream);
    // (Whether the kernel cuts at 8 or the holder counts 9 depends on the control buffer's
    // rounding; dropped it is, either way.)
    let refused = |h: &HolderProc| {
        h.log_count("listener handover with too many fds; dropped")
            + h.log_count("listener handover too large; dropped")
    };
    wait_for(Duration::from_secs(5), || {
        (refused(&s.holder) >= 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "9 fds in one message not refused; log:\n{}",
            s.holder.log_text()
        )
    });
    // The same 9 fds over two messages (8 + 1): over the limit once added up.
    let stream = UnixStream::connect(&s.holder.listener).unwrap();
    send_fds_raw(&stream, b"{\"fds\":", &fds[..8]);
    send_fds_raw(&stream, b"[]}", &fds[8..]);
    drop(stream);
    wait_for(Duration::from_secs(5), || {
        (refused(&s.holder) >= 3).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "9 fds in two messages not refused; log:\n{}",
            s.holder.log_text()
        )
    });

    // Empty connection: connect and close.
    drop(UnixStream::connect(&s.holder.listener).unwrap());

    s.judge.expect_nothing(Duration::from_millis(300));
    s.still_serves("after-bad-handovers");
}

/// One `sendmsg` with `fds` attached, however many (up to the kernel's own limit of 253).
fn send_fds_raw(stream: &UnixStream, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
}

#[test]
fn a_stalled_or_trickling_runc_peer_is_dropped_at_the_deadline_and_blocks_nobody() {
    require_root();
    let mut s = served();
    let t0 = Instant::now();

    // Connects, sends the fd and half a payload, then says nothing.
    let (r, _w) = std::io::pipe().unwrap();
    let mut stalled = UnixStream::connect(&s.holder.listener).unwrap();
    rce_guard::monitor::send_handover(&stalled, b"{\"ociVersion\":", &[r.as_fd()]).unwrap();
    // Sends one byte every 300 ms, for ever: always readable, never complete.
    let mut trickler = UnixStream::connect(&s.holder.listener).unwrap();
    let trickle = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(12) {
            if trickler.write_all(b" ").is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    });

    // Meanwhile real handovers go through at once.
    for i in 0..3 {
        let t = Instant::now();
        s.still_serves(&format!("while-stalled-{i}"));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a stalled peer delayed a handover"
        );
    }

    // Both are dropped at the 5 s deadline.
    s.holder
        .wait_log_count("not complete in time", 2, Duration::from_secs(10));
    let mut buf = [0u8; 8];
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        stalled.read(&mut buf).unwrap_or(0),
        0,
        "stalled peer's connection closed"
    );
    let cut_after = trickle.join().unwrap();
    let cut_after = cut_after.expect("the trickling peer was never cut off");
    assert!(
        cut_after < Duration::from_secs(9),
        "trickling peer cut after {cut_after:?}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(5));
    s.judge.expect_nothing(Duration::from_millis(200));
    s.still_serves("after-stalls");
}

#[test]
fn silent_control_connections_time_out_and_a_flood_of_them_does_not_lock_judges_out() {
    require_root();
    let mut s = served();
    let silent = connect_control(&s.holder.control).unwrap();
    // A flood of silent connections, more than the holder keeps waiting.
    let flood: Vec<OwnedFd> = (0..40)
        .map(|_| connect_control(&s.holder.control).unwrap())
        .collect();
    // A real judge still gets in (and replaces the first, as any new judge does).
    let judge2 = Judge::connect(&s.holder.control);
    let (got, count) = judge2.sync();
    assert_eq!(count as usize, s.held.len());
    assert_eq!(got.len(), s.held.len());
    s.judge = judge2;
    // The silent one is closed after the 5 s deadline.
    assert!(
        closed_by_holder(&silent, Duration::from_secs(8)),
        "silent control connection not closed"
    );
    drop(flood);
    s.still_serves("after-silent-flood");
}

/// Runs `f` on a thread whose credentials are uid/gid 65534 (nobody); the rest of the process
/// stays root. SO_PEERCRED records the connecting thread's credentials.
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let nobody = rustix::process::Uid::from_raw(65534);
        let nogroup = rustix::process::Gid::from_raw(65534);
        rustix::thread::set_thread_res_gid(nogroup, nogroup, nogroup).unwrap();
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        assert_eq!(rustix::process::geteuid().as_raw(), 65534);
        f()
    })
    .join()
    .unwrap()
}

fn open_to_everyone(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn non_root_peers_are_refused_on_both_sockets() {
    require_root();
    let mut s = served();
    // Take the file permissions away as a defence, to test the credential check behind them.
    let dir = s.holder.listener.parent().unwrap().to_path_buf();
    open_to_everyone(&dir, 0o755);
    open_to_everyone(&s.holder.listener, 0o777);
    open_to_everyone(&s.holder.control, 0o777);

    let listener = s.holder.listener.clone();
    let handed = as_nobody(move || {
        let (r, w) = std::io::pipe().unwrap();
        let sent = hand_over(&listener, &[r.as_fd()], &runc_payload("nobody", 9, 300));
        (sent.map_err(|e| e.to_string()), OwnedFd::from(w))
    });
    // The file is open to all, so connecting and sending work; the holder refuses anyway.
    // (The holder may close it before the send: EPIPE. Not EACCES: the connect worked.)
    assert!(
        handed.0.is_ok()
            || handed
                .0
                .as_ref()
                .is_err_and(|e| e.contains("Broken pipe") || e.contains("reset")),
        "nobody could not even connect: {:?}",
        handed.0
    );
    s.holder.wait_log(
        "refused a listener handover from a non-root peer",
        Duration::from_secs(5),
    );

    let control = s.holder.control.clone();
    let judged = as_nobody(
        move || match rce_guard::holder::HolderLink::connect(&control) {
            Ok(link) => {
                link.set_timeout(Some(Duration::from_secs(3))).unwrap();
                match link.next_event() {
                    Ok(rce_guard::holder::HolderEvent::Closed) => "closed".to_string(),
                    Ok(e) => format!("got {}", describe(&e)),
                    Err(e) => format!("error {e}"),
                }
            }
            Err(e) => format!("connect failed: {e}"),
        },
    );
    assert!(
        // Its Hello may already find the connection closed (EPIPE), or a reset.
        judged == "closed" || judged.contains("Broken pipe") || judged.contains("reset"),
        "a non-root judge is cut off without a word: {judged}"
    );
    s.holder.wait_log(
        "refused a control connection from a non-root peer",
        Duration::from_secs(5),
    );
    s.judge.expect_nothing(Duration::from_millis(300));
    s.still_serves("after-non-root");
    assert_eq!(s.holder.log_count("the previous one was told to stop"), 0);
}
