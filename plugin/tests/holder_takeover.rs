//! Upgrading the holder: a second holder started on the same sockets takes over the running
//! one's listening sockets (the same socket files, never unbound) and every held fd, the old
//! one exits by itself, and no runc handover is lost on the way: neither those that connect
//! during the switch nor one that was half sent when it began.

mod holder_support;

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holder_support::*;
use rce_guard::holder::HolderEvent;

#[test]
fn a_second_holder_takes_over_every_entry_and_the_sockets_without_losing_a_handover() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut old = HolderProc::start_bin(std::path::Path::new(HOLDER_BIN), dir.path(), "holder-old");
    let judge = Judge::connect(&old.control);
    judge.sync();
    let mut kept: Vec<OwnedFd> = Vec::new();
    let mut first_ids = HashSet::new();
    for i in 0..20 {
        kept.push(hand_over_pipe(
            &old.listener,
            &runc_payload(&format!("before{i}"), i, 1500),
        ));
        first_ids.insert(judge.expect_entry().id);
    }
    let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().st_ino();
    let (listener_ino, control_ino) = (inode(&old.listener), inode(&old.control));

    // A runc that keeps handing over, without pause, across the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let runc = {
        let (stop, listener) = (stop.clone(), old.listener.clone());
        std::thread::spawn(move || {
            let mut ends = Vec::new();
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (r, w) = std::io::pipe().unwrap();
                match hand_over(
                    &listener,
                    &[r.as_fd()],
                    &runc_payload(&format!("during{n}"), n, 1500),
                ) {
                    Ok(()) => ends.push(OwnedFd::from(w)),
                    Err(e) => failures.push(e.to_string()),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (ends, failures)
        })
    };
    // And one runc connection that has sent its fd and half its payload when the switch starts.
    let (half_r, half_w) = std::io::pipe().unwrap();
    let half_payload = runc_payload("half-sent", 77, 2000);
    let half = UnixStream::connect(&old.listener).unwrap();
    rce_guard::monitor::send_handover(&half, &half_payload[..500], &[half_r.as_fd()]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let t0 = Instant::now();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        rce_guard::monitor::send_handover(&half, &half_payload[500..], &[]).unwrap();
        drop(half);
        half_payload
    });
    let mut new = HolderProc::start_bin(std::path::Path::new(HOLDER_BIN), dir.path(), "holder-new");
    let switch = t0.elapsed();
    let half_payload = finisher.join().unwrap();

    // The old one hands over and exits by itself, successfully.
    let status = old.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "old holder exit status {status}");
    old.wait_log(
        "handed everything over to the successor holder",
        Duration::from_secs(1),
    );
    new.wait_log(
        "took over listener sockets and fds from the previous holder",
        Duration::from_secs(1),
    );
    // Its judge sees the connection end (after any entries it still forwarded).
    loop {
        match judge.next() {
            HolderEvent::Entry { .. } => continue,
            HolderEvent::Closed => break,
            other => panic!("old holder's judge got {}", describe(&other)),
        }
    }

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (during, failures) = runc.join().unwrap();
    assert!(
        failures.is_empty(),
        "handovers failed during the switch: {failures:?}"
    );
    assert!(
        during.len() > 50,
        "the runc loop ran across the switch ({} handovers)",
        during.len()
    );

    // The new holder has everything: the 20, every handover of the loop, the half-sent one.
    new.assert_running();
    assert_eq!(
        inode(&new.listener),
        listener_ino,
        "runc's socket file was never replaced"
    );
    assert_eq!(
        inode(&new.control),
        control_ino,
        "the control socket file was never replaced"
    );
    let judge = Judge::connect(&new.control);
    let (got, count) = judge.sync();
    assert_eq!(got.len() as u64, count);
    assert_eq!(
        count as usize,
        20 + during.len() + 1,
        "entries after the takeover"
    );
    let ids: HashSet<u64> = got.iter().map(|r| r.id).collect();
    assert!(first_ids.is_subset(&ids), "entry ids survive the takeover");
    assert!(
        got.iter().any(|r| r.payload == half_payload),
        "the half-sent handover arrived"
    );
    // And the fds are the very same pipes.
    let probe = &kept[7];
    write_all(probe, b"same");
    let before7 = got
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.payload).contains("\"before7\""))
        .unwrap();
    assert_eq!(read_some(before7.fds.into_iter().next().unwrap()), "same");
    drop(half_w);
    println!(
        "holder takeover: {} entries moved, {} handovers during the switch, new holder ready {:?} after start",
        count,
        during.len(),
        switch
    );
}

#[test]
fn a_takeover_with_nothing_held_works_and_the_successor_serves_at_once() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut old = HolderProc::start_bin(std::path::Path::new(HOLDER_BIN), dir.path(), "a");
    let new = HolderProc::start_bin(std::path::Path::new(HOLDER_BIN), dir.path(), "b");
    assert!(old.wait_exit(Duration::from_secs(10)).success());
    let judge = Judge::connect(&new.control);
    assert_eq!(judge.sync().1, 0);
    let _w = hand_over_pipe(&new.listener, &runc_payload("x", 1, 100));
    judge.expect_entry();
}
