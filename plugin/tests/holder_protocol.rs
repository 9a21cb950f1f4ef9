//! The real `rce-guard-holder` binary with a runc-like peer and judges (the agent's own
//! `HolderLink`): handovers reach the judge unparsed and with a working fd, are held while no
//! judge is connected and sent again to the next one, and a new judge replaces the old.

mod holder_support;

use std::os::fd::AsFd;
use std::time::Duration;

use holder_support::*;
use rce_guard::holder::HolderEvent;

#[test]
fn handover_reaches_the_judge_with_a_working_fd_and_is_resent_after_reconnect() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _holder = HolderProc::start(dir.path());

    let judge = Judge::connect(&_holder.control);
    let (got, count) = judge.sync();
    assert!(got.is_empty());
    assert_eq!(count, 0);

    let payload = runc_payload("c0ffee01", 4242, 2048);
    assert!(payload.len() >= 2000, "a real-sized payload");
    let write_end = hand_over_pipe(&_holder.listener, &payload);
    let e = judge.expect_entry();
    assert_eq!(e.payload, payload, "runc's bytes arrive unchanged");
    assert_eq!(e.fds.len(), 1);
    // The fd the judge got is the very pipe runc handed over.
    write_all(&write_end, b"ping");
    let [fd] = <[_; 1]>::try_from(e.fds).ok().unwrap();
    assert_eq!(read_some(fd), "ping");
    let first_id = e.id;

    // The judge goes away: the holder keeps the fd and sends it to the next judge.
    drop(judge);
    _holder.wait_log("judge disconnected", Duration::from_secs(5));
    let judge = Judge::connect(&_holder.control);
    let (got, count) = judge.sync();
    assert_eq!(count, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, first_id, "the same entry id across reconnects");
    assert_eq!(got[0].payload, payload);
    write_all(&write_end, b"again");
    let fd = got
        .into_iter()
        .next()
        .unwrap()
        .fds
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(read_some(fd), "again");

    // Handovers while no judge is connected are held too.
    drop(judge);
    _holder.wait_log_count("judge disconnected", 2, Duration::from_secs(5));
    let second = runc_payload("c0ffee02", 4343, 2048);
    let _w2 = hand_over_pipe(&_holder.listener, &second);
    let judge = Judge::connect(&_holder.control);
    let (got, count) = judge.sync();
    assert_eq!(count, 2);
    let payloads: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    assert!(payloads.contains(&payload.as_slice()));
    assert!(payloads.contains(&second.as_slice()));
    assert!(got.iter().all(|r| r.id != 0));
    assert_ne!(got[0].id, got[1].id);
}

#[test]
fn split_payload_with_the_fd_on_the_first_message_is_one_entry() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let judge = Judge::connect(&holder.control);
    judge.sync();

    // The spec allows the JSON in several messages, the fds with the first.
    let payload = runc_payload("5p1177ed", 77, 3000);
    let (r, _w) = std::io::pipe().unwrap();
    let stream = std::os::unix::net::UnixStream::connect(&holder.listener).unwrap();
    rce_guard::monitor::send_handover(&stream, &payload[..100], &[r.as_fd()]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    rce_guard::monitor::send_handover(&stream, &payload[100..], &[]).unwrap();
    drop(stream);
    let e = judge.expect_entry();
    assert_eq!(e.payload, payload);
    assert_eq!(e.fds.len(), 1);
}

#[test]
fn a_new_judge_replaces_the_connected_one() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let first = Judge::connect(&holder.control);
    first.sync();
    let _w = hand_over_pipe(&holder.listener, &runc_payload("aaaa", 1, 500));
    let e = first.expect_entry();

    let second = Judge::connect(&holder.control);
    let (got, count) = second.sync();
    assert_eq!(count, 1);
    assert_eq!(got[0].id, e.id);
    // The first is told to stop, then its connection ends.
    assert!(matches!(first.next(), HolderEvent::Replaced));
    assert!(matches!(first.next(), HolderEvent::Closed));
    holder.wait_log("the previous one was told to stop", Duration::from_secs(5));

    // New handovers go to the new judge.
    let _w2 = hand_over_pipe(&holder.listener, &runc_payload("bbbb", 2, 500));
    let e2 = second.expect_entry();
    assert_ne!(e2.id, e.id);
}

#[test]
fn a_judge_can_give_an_entry_back_and_a_later_judge_gets_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let judge = Judge::connect(&holder.control);
    assert_eq!(judge.sync().1, 0);
    // As after a holder restart: the agent gives back what it kept.
    let (r, w) = std::io::pipe().unwrap();
    let payload = runc_payload("ad0p7ed", 99, 1500);
    judge.link.adopt(123_456, &[r.as_fd()], &payload).unwrap();
    drop(r);
    // Adopting the same id twice keeps one entry.
    let (r2, _w2) = std::io::pipe().unwrap();
    judge.link.adopt(123_456, &[r2.as_fd()], &payload).unwrap();
    drop(judge);
    holder.wait_log("judge disconnected", Duration::from_secs(5));

    let judge = Judge::connect(&holder.control);
    let (got, count) = judge.sync();
    assert_eq!(count, 1);
    assert_eq!(got[0].id, 123_456);
    assert_eq!(got[0].payload, payload);
    write_all(&w.into(), b"mine");
    let fd = got
        .into_iter()
        .next()
        .unwrap()
        .fds
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(
        read_some(fd),
        "mine",
        "the first adopted fd is the one kept"
    );

    // New ids stay clear of adopted ones.
    let _w3 = hand_over_pipe(&holder.listener, &runc_payload("n3w", 5, 200));
    let e = judge.expect_entry();
    assert_ne!(e.id, 123_456);
}
