//! What the monitor does with the judge's answer (deny, kill), execs the kernel notifies twice,
//! and callers whose argv memory is hostile.

mod monitor_common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monitor_common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rce_guard::verdict::Action;

const WITHIN: Duration = Duration::from_secs(30);

/// Run `script` under /bin/sh in a testee whose stdio is a TCP connection to us; return what
/// the shell wrote.
fn shell_over_tcp(mon: &TestMonitor, id: &str, script: &str) -> (std::process::Output, String) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let out = run_testee(
        mon.testee().args([
            "--id",
            id,
            "--stdio",
            &format!("tcp:{addr}"),
            "--",
            "spawn",
            "/bin/sh",
            "-c",
            script,
        ]),
        WITHIN,
    );
    (out, rx.recv_timeout(WITHIN).expect("shell output"))
}

#[test]
fn denied_exec_fails_with_eperm_and_the_shell_survives() {
    let judge = RecordingJudge::with_rule(|e| {
        if file_name(&e.program) == "ls" {
            Action::Deny
        } else {
            Action::Allow
        }
    });
    let mon = TestMonitor::start(judge.clone());
    let (out, text) = shell_over_tcp(
        &mon,
        "ctr-deny",
        "/bin/ls /; echo \"rc=$?\"; /bin/echo survived",
    );
    assert_success(&out);
    assert!(
        text.contains("rc=126"),
        "exec must fail (126 = found but not executable): {text}"
    );
    assert!(text.contains("survived"), "{text}");
    assert!(!text.contains("bin\n"), "ls must not have run: {text}");
    assert_eq!(judge.calls_for("ls").len(), 1);
    let s = mon.handle.stats();
    assert_eq!(s.denied, 1);
    assert!(s.allowed >= 2, "{s:?}");
}

#[test]
fn kill_mode_kills_the_caller_before_it_runs_anything() {
    let judge = RecordingJudge::with_rule(|e| {
        if file_name(&e.program) == "sleep" {
            Action::Kill
        } else {
            Action::Allow
        }
    });
    let mon = TestMonitor::start(judge.clone());
    let started = Instant::now();
    let (out, text) = shell_over_tcp(
        &mon,
        "ctr-kill",
        "/bin/sleep 20; echo \"rc=$?\"; /bin/echo survived",
    );
    assert_success(&out);
    assert!(
        text.contains("rc=137"),
        "caller must die of SIGKILL (128+9): {text}"
    );
    assert!(
        !text.contains("not permitted"),
        "the killed caller must not run on after EPERM: {text}"
    );
    assert!(text.contains("survived"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "sleep must not have run"
    );
    assert_eq!(mon.handle.stats().killed, 1);
}

#[test]
fn reissued_exec_after_an_interrupted_wait_is_answered_without_judging_again() {
    // The first judgment of `true` is slow; meanwhile we stop and continue the caller, which
    // interrupts its wait: the kernel drops that notification and, when the caller resumes,
    // restarts the execve: a second notification for the same thread, path and argv (what a
    // Go runtime's signals do to runc).
    let (tid_tx, tid_rx) = mpsc::channel::<i32>();
    let tid_tx = std::sync::Mutex::new(tid_tx);
    let judge = RecordingJudge::with_rule(move |e| {
        if file_name(&e.program) == "true" {
            let _ = tid_tx.lock().unwrap().send(e.tid);
            std::thread::sleep(Duration::from_millis(600));
        }
        Action::Allow
    });
    let mon = TestMonitor::start(judge.clone());
    let stopper = std::thread::spawn(move || {
        let tid = tid_rx.recv_timeout(WITHIN).expect("judge called");
        let pid = Pid::from_raw(tid);
        kill(pid, Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        kill(pid, Signal::SIGCONT).unwrap();
    });
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-repeat", "--", "spawn", "/bin/true"]),
        WITHIN,
    );
    stopper.join().unwrap();
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("status: exit=0"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(
        judge.calls_for("true").len(),
        1,
        "judged (and so reported) once"
    );
    let s = mon.handle.stats();
    assert_eq!(s.repeats_answered, 1, "{s:?}");
    assert!(
        s.vanished >= 1,
        "the first answer found the caller gone: {s:?}"
    );
}

#[test]
fn invalid_argv_pointers_and_endless_arguments_are_bounded() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());

    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-badargv", "--", "bad-argv", "/bin/true"]),
        WITHIN,
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("errno: 14"),
        "kernel answers EFAULT: {}",
        stdout_of(&out)
    );
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-badstr", "--", "bad-argv-string", "/bin/true"]),
        WITHIN,
    );
    assert_success(&out);
    assert!(stdout_of(&out).contains("errno: 14"), "{}", stdout_of(&out));
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-huge", "--", "huge-arg", "/bin/true", "1000000"]),
        WITHIN,
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("spawn-error: errno=7"),
        "kernel answers E2BIG: {}",
        stdout_of(&out)
    );
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-many", "--", "many-args", "/bin/true", "5000"]),
        WITHIN,
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("status: exit=0"),
        "{}",
        stdout_of(&out)
    );

    let by_id = |id: &str| {
        judge
            .calls()
            .into_iter()
            .find(|(c, _)| c.container_id == id)
            .unwrap_or_else(|| panic!("{id} judged"))
            .1
    };
    let e = by_id("ctr-badargv");
    assert_eq!(e.program, "/bin/true");
    assert!(e.args.is_empty() && e.args_truncated, "{e:?}");
    let e = by_id("ctr-badstr");
    assert_eq!(e.args, ["/bin/true"]);
    assert!(e.args_truncated);
    let e = by_id("ctr-huge");
    assert_eq!(e.args.len(), 2);
    assert_eq!(e.args[1].len(), 4096);
    assert!(e.args_truncated);
    let e = by_id("ctr-many");
    assert_eq!(e.args.len(), 64);
    assert!(e.args_truncated);

    // And the monitor still serves a plain exec afterwards.
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-after", "--", "spawn", "/bin/true"]),
        WITHIN,
    );
    assert_success(&out);
    assert!(stdout_of(&out).contains("status: exit=0"));
}

#[test]
fn a_slow_judgment_in_one_container_does_not_hold_up_another() {
    // The judge takes 3 s over `sleep` in ctr-slow; ctr-quick's exec must not wait for it.
    let judge = RecordingJudge::with_rule(|e| {
        if file_name(&e.program) == "sleep" {
            std::thread::sleep(Duration::from_secs(3));
        }
        Action::Allow
    });
    let mon = TestMonitor::start(judge.clone());
    let mut slow = mon.testee();
    slow.args(["--id", "ctr-slow", "--", "spawn", "/bin/sleep", "0"]);
    let slow = std::thread::spawn(move || run_testee(&mut slow, WITHIN));
    wait_until(WITHIN, "slow exec under judgment", || {
        judge.calls_for("sleep").len() == 1
    });
    let t0 = Instant::now();
    let out = run_testee(
        mon.testee()
            .args(["--id", "ctr-quick", "--", "spawn", "/bin/true"]),
        WITHIN,
    );
    let took = t0.elapsed();
    assert_success(&out);
    assert!(
        took < Duration::from_millis(1500),
        "the quick container waited {took:?} for the other's judgment"
    );
    assert_success(&slow.join().unwrap());
}
