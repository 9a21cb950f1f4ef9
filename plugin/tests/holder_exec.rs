//! Execs through the holder with real seccomp listeners: a fake container (a thread carrying
//! the exec-notify filter) hands its listener to the holder, and judges are in-process
//! monitors fed by the agent's own holder client. Shows what the holder is for: an exec made
//! while no judge runs waits in the kernel and runs once a judge is back; one that a judge
//! took and never answered is recovered by a ptrace kick; and only when the holder is gone too
//! do execs fail with ENOSYS.

mod holder_support;

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use holder_support::*;
use rce_guard::exec_event::ExecEvent;
use rce_guard::monitor::{self, MonitorConfig, MonitorHandle};
use rce_guard::verdict::{Action, ExecJudge, WatchedContainer};

/// Records every exec it is asked about and allows it; optionally blocks first until told to
/// go on (a judge that took an exec and "died" before answering).
struct RecordingJudge {
    programs: Mutex<Vec<String>>,
    hold: Mutex<Option<mpsc::Receiver<()>>>,
}

impl RecordingJudge {
    fn new() -> Arc<Self> {
        Arc::new(RecordingJudge {
            programs: Mutex::new(Vec::new()),
            hold: Mutex::new(None),
        })
    }

    /// The next exec blocks its worker until the returned sender is used or dropped.
    fn holding() -> (Arc<Self>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        let j = Self::new();
        *j.hold.lock().unwrap() = Some(rx);
        (j, tx)
    }

    fn programs(&self) -> Vec<String> {
        self.programs.lock().unwrap().clone()
    }
}

impl ExecJudge for RecordingJudge {
    fn judge(&self, _c: &WatchedContainer, ev: &ExecEvent) -> Action {
        self.programs.lock().unwrap().push(ev.program.clone());
        let hold = self.hold.lock().unwrap().take();
        if let Some(rx) = hold {
            let _ = rx.recv();
        }
        Action::Allow
    }
}

/// An in-process judge: a monitor (one worker) fed with every entry the holder has.
struct InProcessJudge {
    monitor: MonitorHandle,
    _link: Judge,
}

fn judge_through_holder(control: &std::path::Path, judge: Arc<RecordingJudge>) -> InProcessJudge {
    let cfg = MonitorConfig {
        listener_path: PathBuf::new(),
        workers: 1,
        ..MonitorConfig::default()
    };
    let monitor = monitor::start(cfg, judge).expect("starting a monitor");
    let link = Judge::connect(control);
    let (got, count) = link.sync();
    assert_eq!(got.len() as u64, count);
    for r in got {
        let fd = r.fds.into_iter().next().unwrap();
        monitor
            .adopt(fd, &r.payload)
            .expect("adopting a held listener fd");
    }
    InProcessJudge {
        monitor,
        _link: link,
    }
}

fn assert_ok(o: &ExecOutcome, what: &str) {
    match &o.result {
        Ok(s) if s.success() => {}
        other => panic!("{what}: exec failed: {other:?}"),
    }
}

#[test]
fn an_exec_made_while_no_judge_runs_waits_and_runs_once_a_judge_is_back() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut holder = HolderProc::start(dir.path());
    let container = FakeContainer::start(&holder.listener, "waits0001");

    let first = RecordingJudge::new();
    let j1 = judge_through_holder(&holder.control, first.clone());
    assert_ok(
        &container.run(&["/bin/true"], Duration::from_secs(10)),
        "with a judge",
    );
    assert_eq!(first.programs(), vec!["/bin/true".to_string()]);

    // The judge goes away (its listener copies closed): only the holder keeps the fd.
    let InProcessJudge { monitor, _link } = j1;
    drop(monitor.shutdown());
    drop(_link);
    container.exec(&["/bin/true"]);
    assert!(
        container.outcome(Duration::from_millis(800)).is_none(),
        "an exec without any judge must wait, not run or fail"
    );
    let children = container.children();
    assert_eq!(children.len(), 1, "one child waiting in exec");
    let waiting = children[0];
    assert_eq!(
        blocked_syscall(waiting),
        Some(59),
        "the child sits in execve"
    );
    println!(
        "a task waiting for a seccomp answer: wchan {:?}",
        wchan(waiting)
    );

    // A new judge connects: the waiting exec is received and runs.
    let second = RecordingJudge::new();
    let j2 = judge_through_holder(&holder.control, second.clone());
    let o = container
        .outcome(Duration::from_secs(10))
        .expect("the waiting exec completes once a judge is back");
    assert_ok(&o, "after the judge came back");
    assert!(
        o.took >= Duration::from_millis(800),
        "it did wait ({:?})",
        o.took
    );
    assert_eq!(second.programs(), vec!["/bin/true".to_string()]);

    // Holder and judge both gone: nobody has the listener fd, the kernel fails the exec.
    holder.kill();
    let InProcessJudge { monitor, _link } = j2;
    drop(monitor.shutdown());
    drop(_link);
    let o = container.run(&["/bin/true"], Duration::from_secs(10));
    let err = o
        .result
        .expect_err("with no listener fd left the exec cannot run");
    assert!(
        err.contains("Function not implemented"),
        "the workload sees ENOSYS: {err}"
    );
}

#[test]
fn an_exec_a_dead_judge_took_but_never_answered_is_recovered_by_a_kick() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start(dir.path());
    let container = FakeContainer::start(&holder.listener, "kicked001");

    // This judge receives the exec and never answers (its only worker is stuck): as if it
    // had been SIGKILLed between receiving and answering.
    let (stuck, release) = RecordingJudge::holding();
    let j1 = judge_through_holder(&holder.control, stuck.clone());
    container.exec(&["/bin/true"]);
    wait_for(Duration::from_secs(5), || {
        (!stuck.programs().is_empty()).then_some(())
    })
    .expect("the first judge received the exec");
    drop(j1._link);

    // A new judge cannot see that notification: the exec stays stuck.
    let fresh = RecordingJudge::new();
    let _j2 = judge_through_holder(&holder.control, fresh.clone());
    assert!(container.outcome(Duration::from_millis(500)).is_none());
    assert!(fresh.programs().is_empty());

    // The recovery finds the task in execve and kicks it: the kernel drops the stale
    // notification and restarts the execve, which the new judge receives.
    let child = container.children()[0];
    let found = rce_guard::recovery::tasks_in_exec(&[container.tid()]);
    assert!(
        found.contains(&child),
        "recovery finds the waiting task ({found:?} vs {child})"
    );
    assert_eq!(rce_guard::recovery::kick(child), Ok(true));
    let o = container
        .outcome(Duration::from_secs(10))
        .expect("the kicked exec completes");
    assert_ok(&o, "after the kick");
    assert_eq!(fresh.programs(), vec!["/bin/true".to_string()]);

    // The stuck judge's late answer is for a notification that no longer exists: harmless.
    drop(release);
    std::thread::sleep(Duration::from_millis(100));
    drop(j1.monitor.shutdown());
    assert_ok(
        &container.run(&["/bin/true"], Duration::from_secs(10)),
        "afterwards",
    );
}
