//! After the last task of a filter exits the kernel reports POLLHUP on its listener fd, and
//! RECV fails at once forever: a monitor that kept the fd would spin. It must drop the fd and
//! go back to idle. Alone in its binary so that the process's CPU time is the monitor's.

mod monitor_common;

use std::time::Duration;

use monitor_common::*;

/// CPU time (ns) of this process's threads whose name starts with `prefix`, from schedstat.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = entry.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// utime + stime of the whole process, in clock ticks.
fn process_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after "pid (comm) " they are at index 11 and 12.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn listener_is_dropped_on_pollhup_and_the_monitor_goes_idle() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    for i in 0..3 {
        let out = run_testee(
            mon.testee()
                .args(["--id", &format!("ctr-{i}"), "--", "spawn", "/bin/true"]),
            Duration::from_secs(30),
        );
        assert_success(&out);
    }
    assert_eq!(judge.calls_for("true").len(), 3);
    mon.wait_all_closed(Duration::from_secs(10));
    let s = mon.handle.stats();
    assert_eq!((s.listeners_adopted, s.listeners_closed), (3, 3), "{s:?}");
    assert!(mon.handle.watched().is_empty());

    let workers_before = threads_cpu_ns("rce-guard-notif");
    let ticks_before = process_cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let workers_used = threads_cpu_ns("rce-guard-notif") - workers_before;
    let ticks_used = process_cpu_ticks() - ticks_before;
    assert!(
        workers_used < 5_000_000,
        "monitor workers used {workers_used} ns of CPU in 1 s while idle"
    );
    assert!(
        ticks_used <= 3,
        "process used {ticks_used} ticks of CPU in 1 s while idle"
    );
    assert!(workers_before > 0, "worker threads were found by name");
}
