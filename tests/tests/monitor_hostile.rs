//! Hostile handovers: peers that send garbage, no fd, two fds, a huge payload, a non-listener
//! fd, that connect and stall, or that are not root. Each is refused with every received fd
//! closed, while a well-behaved testee keeps being served. One test (it counts this process's
//! fds, which parallel tests would disturb).

mod monitor_common;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use monitor_common::*;
use rce_guard::monitor::send_handover;

const VALID: &[u8] = br#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":1,"state":{"id":"hostile","pid":1,"annotations":{}}}"#;

fn null() -> File {
    File::open("/dev/null").unwrap()
}

#[test]
fn hostile_handovers_are_refused_and_others_keep_being_served() {
    let judge = RecordingJudge::allowing();
    let deadline = Duration::from_secs(3);
    let mon = TestMonitor::start_with(judge.clone(), |c| c.handover_deadline = deadline);
    let fds_before = open_fds();
    let refused = || mon.handle.stats().handovers_refused;

    // Connect and stall: some with nothing, one with half a payload and an fd.
    let stalled: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&mon.socket).unwrap())
        .collect();
    let half = UnixStream::connect(&mon.socket).unwrap();
    send_handover(&half, &VALID[..20], &[null().as_fd()]).unwrap();
    let stall_started = Instant::now();

    // Finished connections with bad content.
    let send_and_close = |payload: &[u8], fds: &[&File]| {
        let s = UnixStream::connect(&mon.socket).unwrap();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        send_handover(&s, payload, &borrowed).unwrap();
    };
    send_and_close(b"this is { not json", &[&null()]);
    send_and_close(VALID, &[]);
    send_and_close(VALID, &[&null(), &null()]);
    send_and_close(
        br#"{"fds":["somethingElse"],"state":{"id":"x"}}"#,
        &[&null()],
    );
    // A valid payload with an fd that is not a seccomp listener.
    send_and_close(VALID, &[&null()]);
    // 1 MiB of valid-looking JSON: more than the 64 KiB cap (the monitor may stop reading and
    // close early, so a failed write is fine).
    {
        let s = UnixStream::connect(&mon.socket).unwrap();
        let mut huge = br#"{"fds":["seccompFd"],"pad":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', 1 << 20));
        huge.extend_from_slice(b"\"}");
        let _ = send_handover(&s, &huge, &[null().as_fd()]);
    }
    wait_until(Duration::from_secs(10), "six bad handovers refused", || {
        refused() >= 6
    });

    // A non-root peer: let it reach the socket, then the SO_PEERCRED check must refuse it.
    let run_dir = mon.socket.parent().unwrap();
    for dir in [run_dir, run_dir.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&mon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let before = refused();
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-nobody", "--user", "65534", "--", "none"]),
        Duration::from_secs(20),
    );
    // The monitor may hang up before the testee finished sending: both are a refusal.
    let said = stdout_of(&out);
    assert!(
        said.contains("handed-over") || said.contains("handover-error"),
        "{said}"
    );
    wait_until(Duration::from_secs(10), "non-root peer refused", || {
        refused() == before + 1
    });
    assert!(mon
        .handle
        .watched()
        .iter()
        .all(|w| w.container_id != "ctr-nobody"));

    // Meanwhile the stalled peers still hold their connections: a well-behaved testee is
    // served at once all the same.
    let t0 = Instant::now();
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-good", "--", "spawn", "/bin/true"]),
        Duration::from_secs(20),
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("status: exit=0"),
        "{}",
        stdout_of(&out)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "served while others stall: {:?}",
        t0.elapsed()
    );
    assert!(
        stall_started.elapsed() < deadline,
        "the check must run while the stalls are pending"
    );
    assert_eq!(judge.calls_for("true").len(), 1);

    // The stalls hit their deadline and are refused too.
    let before = refused();
    wait_until(Duration::from_secs(10), "stalled peers refused", || {
        refused() == before + 5
    });
    drop(stalled);
    drop(half);
    mon.wait_all_closed(Duration::from_secs(20));
    // Every fd the monitor received was closed again (handover threads are gone by now).
    wait_until(Duration::from_secs(5), "fds back to the baseline", || {
        open_fds() <= fds_before
    });
    assert!(judge
        .calls()
        .iter()
        .all(|(c, _)| c.container_id == "ctr-good"));
    assert_eq!(mon.handle.stats().listeners_adopted, 1);

    // A connection that writes slowly but keeps going still ends at the deadline.
    let mut slow = UnixStream::connect(&mon.socket).unwrap();
    let before = refused();
    let t0 = Instant::now();
    while t0.elapsed() < deadline + Duration::from_secs(2) {
        if slow.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until(Duration::from_secs(5), "slow writer refused", || {
        refused() == before + 1
    });
}
