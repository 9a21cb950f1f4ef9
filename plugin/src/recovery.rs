//! Recovering execs that a dead judge had received but not answered.
//!
//! The kernel hands each exec notification to one receiver. If the judge dies between
//! receiving and answering, the notification stays "sent" on the listener (which the holder
//! keeps open), and its task would wait forever: no later judge can see it. A ptrace
//! interrupt wakes such a task out of its wait without any signal reaching it; the kernel
//! drops the stale notification and transparently restarts the execve, which the new judge
//! then receives like any other. Kicking a task whose exec was not stuck is harmless for the
//! same reason (the syscall restarts), so after a restart we kick every task of the watched
//! containers that sits in execve/execveat waiting for a seccomp answer (its wchan says so;
//! tasks in execve for other reasons are left alone). `tests/holder_exec.rs` shows a stuck
//! exec recovered this way.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Syscall numbers of execve/execveat as /proc/<tid>/syscall shows them, per ABI
/// (x86_64, i386 compat, x32 compat with its marker bit).
const EXEC_SYSCALL_NUMBERS: &[i64] = &[59, 322, 11, 358, 0x4000_0000 + 520, 0x4000_0000 + 545];

/// The pid namespace of a process, as the inode link text (`pid:[4026531836]`).
fn pid_ns(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The syscall a task is blocked in, from /proc/<pid>/task/<tid>/syscall ("59 0x..." or
/// "running"/"-1 ...").
fn blocked_syscall(pid: i32, tid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Whether a task sleeps waiting for a seccomp user-notification answer (wchan
/// `seccomp_do_user_notification`, or wherever a kernel inlined it). Keeps the kick away from
/// tasks that sit in execve for other reasons, which matters when a watched container shares
/// the host's pid namespace. Where the kernel hides symbol names (wchan "0" or unreadable),
/// every task in an exec syscall counts: kicking one more is harmless, missing one is not.
fn waits_for_seccomp_answer(pid: i32, tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")) {
        Ok(w) if !w.is_empty() && w != "0" => w.contains("seccomp"),
        _ => true,
    }
}

/// Tasks in the pid namespaces of `init_pids` that sit in an exec syscall, waiting for a
/// seccomp answer.
pub fn tasks_in_exec(init_pids: &[i32]) -> Vec<i32> {
    let namespaces: HashSet<String> = init_pids.iter().filter_map(|p| pid_ns(*p)).collect();
    if namespaces.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if !pid_ns(pid).is_some_and(|ns| namespaces.contains(&ns)) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task"))
        else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if blocked_syscall(pid, tid).is_some_and(|nr| EXEC_SYSCALL_NUMBERS.contains(&nr))
                && waits_for_seccomp_answer(pid, tid)
            {
                found.push(tid);
            }
        }
    }
    found
}

/// Interrupts one task's blocking syscall through ptrace and lets it go again; the syscall
/// restarts. Returns whether the task was stopped and released.
pub fn kick(tid: i32) -> nix::Result<bool> {
    let pid = Pid::from_raw(tid);
    ptrace::seize(pid, ptrace::Options::empty())?;
    ptrace::interrupt(pid)?;
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Ok(WaitStatus::StillAlive) => {
                // Not stopped in time (uninterruptible sleep): our exit detaches it anyway.
                return Ok(false);
            }
            Ok(WaitStatus::PtraceEvent(..))
            | Ok(WaitStatus::Stopped(..))
            | Ok(WaitStatus::PtraceSyscall(..)) => {
                ptrace::detach(pid, None)?;
                return Ok(true);
            }
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => return Ok(false),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Kicks every task of the given containers that sits in an exec syscall. Returns how many
/// were kicked.
pub fn recover_unanswered_execs(init_pids: &[i32]) -> usize {
    let mut kicked = 0;
    for tid in tasks_in_exec(init_pids) {
        match kick(tid) {
            Ok(true) => kicked += 1,
            Ok(false) => {}
            Err(e) => tracing::debug!(tid, error = %e, "could not kick a task waiting in exec"),
        }
    }
    kicked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    #[test]
    fn kick_interrupts_a_blocked_syscall_which_restarts_transparently() {
        // A shell blocked in read(2) on a pipe: if the kick let EINTR through, `read` would fail
        // and the shell would print "got:" with nothing after it.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read x; echo got:$x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while blocked_syscall(pid, pid) != Some(0) {
            assert!(Instant::now() < deadline, "shell never blocked in read");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            kick(pid),
            Ok(true),
            "the blocked task was stopped and released"
        );
        // Still (again) blocked in read, not gone.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(blocked_syscall(pid, pid), Some(0));
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(out.trim(), "got:hello");
    }

    #[test]
    fn finds_tasks_in_exec_only_in_the_given_namespaces() {
        // Our own pid namespace holds no task blocked in exec right now except possibly
        // unrelated ones; an unknown init pid yields nothing at all.
        assert!(tasks_in_exec(&[i32::MAX]).is_empty());
    }
}
