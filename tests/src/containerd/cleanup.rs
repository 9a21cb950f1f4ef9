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
    let bundles = bundle_dirs(&cd.state_dir());
    // Container init processes first: killing a shim does not kill its containers.
    let inits: Vec<Pid> = bundles
        .iter()
        .filter_map(|b| read_pid(&b.join("init.pid")))
        .filter(|&p| procfs::is_alive(p))
        .collect();
    // Shims (`-address <dir>/c.sock`), and whatever else was started with a path in the
    // instance directory: an agent's fd holder (`--listener <dir>/listener.sock`) outlives the
    // agent by design, a crashed test may leave its agent.
    let mut others = procfs::pids_with_arg_under(cd.dir());
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
            "teardown of containerd {}: killing leftover container processes [{}] and \
             processes of the instance [{}]",
            cd.version().label(),
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

/// After a failed test: drop the bulky runtime directories, keep config and logs.
pub(super) fn keep_only_logs(dir: &Path) {
    for sub in ["root", "state", "nri-plugins", "nri-conf"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
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
