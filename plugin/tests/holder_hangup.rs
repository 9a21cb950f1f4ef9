//! The holder drops a held fd when the kernel reports POLLHUP on it: for a seccomp listener,
//! once every task using the filter has exited (its container is gone). Nothing else is
//! dropped, and no judge is needed for it.

mod holder_support;

use std::time::Duration;

use holder_support::*;

#[test]
fn an_entry_whose_fd_hangs_up_is_dropped_and_the_others_stay() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let mut kept: Vec<_> = (0..3)
        .map(|i| hand_over_pipe(&holder.listener, &runc_payload(&format!("pipe{i}"), i, 400)))
        .collect();
    wait_held(&holder.control, 3, Duration::from_secs(5));
    // The other end of one pipe goes away: its held read end hangs up.
    drop(kept.remove(1));
    holder.wait_log("hung up", Duration::from_secs(5));
    wait_held(&holder.control, 2, Duration::from_secs(5));
    // The remaining two are the ones still open.
    let judge = Judge::connect(&holder.control);
    let (got, _) = judge.sync();
    let names: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert!(names.iter().any(|p| p.contains("\"pipe0\"")));
    assert!(names.iter().any(|p| p.contains("\"pipe2\"")));
    assert!(!names.iter().any(|p| p.contains("\"pipe1\"")));
}

#[test]
fn a_real_seccomp_listener_is_dropped_once_its_last_task_exits() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let container = FakeContainer::start(&holder.listener, "seccomp1");
    wait_held(&holder.control, 1, Duration::from_secs(5));
    // The filter's tasks still live: the entry stays.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(held_entries(&holder.control), 1);
    assert_eq!(holder.log_count("hung up"), 0);
    // The only task with the filter (the thread) ends: POLLHUP.
    drop(container);
    holder.wait_log("hung up", Duration::from_secs(5));
    wait_held(&holder.control, 0, Duration::from_secs(5));
}
