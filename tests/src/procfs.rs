//! What cleanup needs from /proc: the processes that belong to one containerd instance, and the
//! mounts under its directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait::wait_until;

/// Pids of processes whose command line contains `needle` as one whole argument (for example a
/// shim's `-address <grpc socket>`), excluding ourselves.
#[cfg(test)]
pub(crate) fn pids_with_arg(needle: &str) -> Vec<Pid> {
    pids_where(|arg| arg == needle.as_bytes())
}

/// Pids of processes with an argument that is a path inside `dir` (`<dir>/...`), excluding
/// ourselves: everything started for one instance names a file in its directory.
pub(crate) fn pids_with_arg_under(dir: &Path) -> Vec<Pid> {
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(b'/');
    pids_where(|arg| arg.starts_with(&prefix))
}

fn pids_where(matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| cmdline.split(|&b| b == 0).any(&matches))
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .filter(|&pid| is_alive(pid))
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The command name of a process (`comm`), for messages.
pub(crate) fn command_name(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// Sends SIGKILL to each pid and waits (briefly) until they are gone.
pub(crate) fn kill_and_wait(pids: &[Pid]) {
    for &pid in pids {
        let _ = kill(pid, Signal::SIGKILL);
    }
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        pids.iter().all(|&p| !is_alive(p)).then_some(())
    });
}

/// Mount points at or under `dir`, deepest first (the order to unmount them in).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mount_path(escaped)))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts everything at or under `dir`; mounts may be stacked, so repeat a few times.
pub(crate) fn unmount_all_under(dir: &Path) {
    for _ in 0..4 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for mount_point in mounts {
            let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }

    #[test]
    fn finds_our_own_process_by_argument_except_ourselves() {
        let mut child = std::process::Command::new("sleep")
            .arg("31.4159")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Right after fork the child still has our command line: wait for the exec.
        let found = wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            Some(pids_with_arg("31.4159")).filter(|p| !p.is_empty())
        });
        assert_eq!(found, Some(vec![pid]));
        assert!(is_alive(pid));
        kill_and_wait(&[pid]);
        let _ = child.wait();
        assert!(!is_alive(pid));
        assert!(pids_with_arg("31.4159").is_empty());
    }

    #[test]
    fn finds_processes_by_a_path_argument_under_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.sock");
        // `sh -c SCRIPT NAME`: the path is an argument that changes nothing (and the script is
        // not one simple command, so sh does not exec into sleep and lose its arguments).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5; exit 0"])
            .arg(&file)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let found = wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            Some(pids_with_arg_under(dir.path())).filter(|p| !p.is_empty())
        });
        assert_eq!(found, Some(vec![pid]));
        // A sibling directory that shares the prefix is not "under" it.
        let sibling = PathBuf::from(format!("{}x", dir.path().display()));
        assert!(pids_with_arg_under(&sibling).is_empty());
        kill_and_wait(&[pid]);
        let _ = child.wait();
    }
}
