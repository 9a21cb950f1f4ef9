//! Tearing an instance down so that nothing outlives the test: pods removed through CRI (the
//! clean way: shims exit by themselves), then whatever is left killed by hand (container
//! processes, shims), then mounts and runtime state removed.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Containerd;
use crate::procfs;

/// Per-call timeout while tearing down: a hung containerd must not hang the test.
const CRI_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Stops and removes every pod sandbox (and so every container) through CRI.
pub(super) fn remove_all_pods(cd: &Containerd) {
    if cd.child.is_none() {
        return;
    }
    let cri = match crate::cri::Cri::connect(&cd.grpc_socket(), &cd.pod_log_root()) {
        Ok(cri) => cri.with_timeout(CRI_TEARDOWN_TIMEOUT),
        Err(e) => {
            eprintln!("teardown: no CRI connection ({e:#}); killing leftovers instead");
            return;
        }
    };
    let pods = match cri.list_pods() {
        Ok(pods) => pods,
        Err(e) => {
            eprintln!("teardown: ListPodSandbox failed ({e:#}); killing leftovers instead");
            return;
        }
    };
    for pod in pods {
        if let Err(e) = cri.stop_pod(&pod.id).and_then(|()| cri.remove_pod(&pod.id)) {
            eprintln!("teardown: removing pod {} failed: {e:#}", pod.id);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps the child.
pub(super) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills container processes and shims that still belong to this instance, and removes the
/// runtime state they leave behind outside the instance directory.
pub(super) fn kill_leftovers(cd: &Containerd) {
    let what = format!("containerd {}", cd.version().label());
    kill_instance_processes(cd.dir(), &what);
}

/// [`kill_leftovers`] for the instance in `dir` (its state directory is `dir/state`).
fn kill_instance_processes(dir: &Path, what: &str) {
    let bundles = bundle_dirs(&dir.join("state"));
    // Container init processes first: killing a shim does not kill its containers.
    let inits: Vec<Pid> = bundles
        .iter()
        .filter_map(|b| read_pid(&b.join("init.pid")))
        .filter(|&p| procfs::is_alive(p))
        .collect();
    // Shims (`-address <dir>/c.sock`), and whatever else was started with a path in the
    // instance directory: an agent's fd holder (`--listener <dir>/listener.sock`) outlives the
    // agent by design, a crashed test may leave its agent.
    let mut others = procfs::pids_with_arg_under(dir);
    others.extend(
        bundles
            .iter()
            .filter_map(|b| read_pid(&b.join("shim.pid")))
            .filter(|&p| procfs::is_alive(p)),
    );
    others.sort();
    others.dedup();
    if inits.is_empty() && others.is_empty() {
        return;
    }
    let describe = |pids: &[Pid]| {
        pids.iter()
            .map(|p| format!("{p} {}", procfs::command_name(*p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // An agent's holder is expected to be there; anything else is worth a word.
    let unexpected = !inits.is_empty()
        || others
            .iter()
            .any(|&p| !procfs::command_name(p).starts_with("rce-guard-hold"));
    if unexpected {
        eprintln!(
            "teardown of {what}: killing leftover container processes [{}] and processes of \
             the instance [{}]",
            describe(&inits),
            describe(&others)
        );
    }
    procfs::kill_and_wait(&inits);
    procfs::kill_and_wait(&others);
    // A killed shim leaves its socket in /run/containerd/s and the OCI runtime's state in
    // /run/containerd/runc/k8s.io (shared by every instance, so only remove our own ids).
    for bundle in &bundles {
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            let socket = address.trim().trim_start_matches("unix://");
            if socket.starts_with("/run/containerd/s/") {
                let _ = std::fs::remove_file(socket);
            }
        }
        if let Some(id) = bundle.file_name() {
            let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc/k8s.io").join(id));
        }
    }
}

/// After a failed test: drop the bulky runtime directories, keep config and logs. The
/// directory then has no owner any more (the sweeper leaves it alone).
pub(super) fn keep_only_logs(dir: &Path) {
    for sub in ["root", "state", "nri-plugins", "nri-conf"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    let _ = std::fs::remove_file(dir.join(OWNER_FILE));
}

/// File in an instance directory naming the test process that owns it: `<pid> <start time>`
/// (the start time tells a reused pid apart).
const OWNER_FILE: &str = "owner";

/// Marks `dir` as owned by this process.
pub(super) fn write_owner(dir: &Path) -> std::io::Result<()> {
    let me = process_identity(std::process::id()).unwrap_or_default();
    std::fs::write(dir.join(OWNER_FILE), me)
}

/// Cleans up instances whose test process died without running their teardown (killed by a
/// timeout, aborted): their containerd, shims, containers, agent and holder would otherwise
/// live on. Only directories with an owner file whose owner is gone are touched.
pub(super) fn sweep_orphans(parent: &Path) {
    // One sweep at a time per test process.
    static SWEEPING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for dir in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let is_instance = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rg-"));
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        if !is_instance || owner_alive(&owner) {
            continue;
        }
        eprintln!(
            "sweeping {}: its test process ({}) is gone",
            dir.display(),
            owner.trim()
        );
        kill_instance_processes(&dir, &format!("orphaned instance {}", dir.display()));
        procfs::unmount_all_under(&dir);
        keep_only_logs(&dir);
    }
}

fn owner_alive(owner: &str) -> bool {
    let Some(pid) = owner.split_whitespace().next().and_then(|p| p.parse().ok()) else {
        return false;
    };
    process_identity(pid).is_some_and(|now| now.trim() == owner.trim())
}

/// `<pid> <start time in clock ticks since boot>` of a live process.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, starttime field 22.
    let (_, rest) = stat.rsplit_once(')')?;
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

fn bundle_dirs(state: &Path) -> Vec<PathBuf> {
    let tasks = state.join("io.containerd.runtime.v2.task/k8s.io");
    std::fs::read_dir(tasks)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn read_pid(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    (pid > 0).then(|| Pid::from_raw(pid))
}
