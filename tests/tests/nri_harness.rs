//! The harness itself against real containerd 1.7 and 2.1 (no agent involved): pods and
//! containers through CRI, exec, the OCI spec on disk, a restart that keeps containers running,
//! and a teardown that leaves no process, mount or directory behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rce_guard_e2e::{cri_api, ContainerSpec, Containerd, PodSpec, Seccomp, Version};

macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v1_7 {
            $( #[test] fn $name() { super::$name(super::Version::V1_7) } )*
        }
        mod v2_1 {
            $( #[test] fn $name() { super::$name(super::Version::V2_1) } )*
        }
    };
}

on_both_versions!(
    pods_containers_and_exec_work_through_cri,
    restart_keeps_containers_running,
    drop_leaves_nothing_behind,
    a_panicking_test_still_cleans_up_and_keeps_the_log,
    an_instance_whose_test_process_died_is_swept_by_the_next_start,
    a_container_reverse_shell_reaches_the_listener,
);

fn pods_containers_and_exec_work_through_cri(v: Version) {
    let t0 = Instant::now();
    let cd = Containerd::start(v).expect("start containerd");
    let started = t0.elapsed();
    let cri = cd.cri().expect("CRI client");
    let version = cri.version().expect("CRI Version");
    println!(
        "containerd {}: runtime {} {} (CRI {}), up with images in {started:?}",
        v.label(),
        version.runtime_name,
        version.runtime_version,
        version.runtime_api_version
    );
    assert_eq!(version.runtime_name, "containerd");
    let images = cri.list_images().expect("ListImages");
    for image in [rce_guard_e2e::BUSYBOX_IMAGE, rce_guard_e2e::PAUSE_IMAGE] {
        assert!(
            images.iter().any(|i| i == image),
            "{image} not in {images:?}"
        );
    }

    let t = Instant::now();
    let pod = cri
        .run_pod(
            &PodSpec::new("harness")
                .namespace("e2e")
                .label("app", "harness"),
        )
        .expect("RunPodSandbox");
    let pod_time = t.elapsed();
    let t = Instant::now();
    let id = cri
        .run_container(
            &pod,
            &ContainerSpec::sleeper("worker")
                .seccomp(Seccomp::RuntimeDefault)
                .env("GREETING", "hi"),
        )
        .expect("create+start container");
    let ctr_time = t.elapsed();
    println!("RunPodSandbox {pod_time:?}, CreateContainer+StartContainer {ctr_time:?}");

    let t = Instant::now();
    let out = cri
        .exec_sync(
            &id,
            &["sh", "-c", "echo $GREETING; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .expect("ExecSync");
    println!("ExecSync {:?}", t.elapsed());
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "hi\n", "err\n")
    );

    // The spec containerd handed to runc: our command, CRI annotations, RuntimeDefault seccomp.
    let spec = cd.oci_config(&id).expect("config.json");
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["sleep", "3600"])
    );
    let ann = &spec["annotations"];
    assert_eq!(ann["io.kubernetes.cri.container-name"], "worker");
    assert_eq!(ann["io.kubernetes.cri.sandbox-name"], "harness");
    assert_eq!(ann["io.kubernetes.cri.sandbox-namespace"], "e2e");
    assert_eq!(ann["io.kubernetes.cri.sandbox-uid"], pod.spec.uid.as_str());
    assert_eq!(
        ann["io.kubernetes.cri.image-name"],
        rce_guard_e2e::BUSYBOX_IMAGE
    );
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    let sandbox_spec = cd.oci_config(&pod.id).expect("sandbox config.json");
    assert_eq!(
        sandbox_spec["annotations"]["io.kubernetes.cri.container-type"],
        "sandbox"
    );

    let listed = cri.list_containers().expect("ListContainers");
    assert!(
        listed
            .iter()
            .any(|c| c.id == id && c.pod_sandbox_id == pod.id),
        "{listed:?}"
    );

    // A container that exits by itself.
    let quick = cri
        .run_container(
            &pod,
            &ContainerSpec::new("quick").command(&["sh", "-c", "exit 7"]),
        )
        .expect("run quick container");
    let status = cri
        .wait_container_exit(&quick, Duration::from_secs(10))
        .expect("quick container exits");
    assert_eq!(status.exit_code, 7);

    let t = Instant::now();
    cri.stop_container(&id, Duration::from_secs(1))
        .expect("StopContainer");
    let stopped = cri.container_status(&id).expect("ContainerStatus");
    assert_eq!(
        stopped.state,
        cri_api::ContainerState::ContainerExited as i32
    );
    cri.remove_container(&id).expect("RemoveContainer");
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    println!("stop+remove container and pod {:?}", t.elapsed());
    assert!(cri.list_pods().expect("ListPodSandbox").is_empty());
}

fn restart_keeps_containers_running(v: Version) {
    let mut cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    let pod = cri
        .run_pod(&PodSpec::new("survivor"))
        .expect("RunPodSandbox");
    let id = cri
        .run_container(&pod, &ContainerSpec::sleeper("sleeper"))
        .expect("run container");
    let pid_before = cri
        .exec_sync(&id, &["cat", "/proc/1/stat"], Duration::from_secs(5))
        .expect("exec before restart")
        .stdout;
    let old_pid = cd.pid();

    let t = Instant::now();
    cd.restart().expect("restart containerd");
    println!("containerd {} restart took {:?}", v.label(), t.elapsed());
    assert_ne!(cd.pid(), old_pid);

    let cri = cd.cri().expect("CRI client after restart");
    let status = cri
        .container_status(&id)
        .expect("ContainerStatus after restart");
    assert_eq!(
        status.state,
        cri_api::ContainerState::ContainerRunning as i32
    );
    let pid_after = cri
        .exec_sync(&id, &["cat", "/proc/1/stat"], Duration::from_secs(5))
        .expect("exec after restart")
        .stdout;
    assert_eq!(
        pid_before, pid_after,
        "the container's init process changed across restart"
    );
}

fn drop_leaves_nothing_behind(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let dir: PathBuf = cd.dir().to_path_buf();
    let grpc = cd.grpc_socket().to_string_lossy().into_owned();
    let cri = cd.cri().expect("CRI client");
    for i in 0..2 {
        let pod = cri
            .run_pod(&PodSpec::new(&format!("left-{i}")))
            .expect("RunPodSandbox");
        cri.run_container(&pod, &ContainerSpec::sleeper("sleeper"))
            .expect("run container");
    }
    let daemon = cd.pid().expect("daemon pid");
    let shims = processes_with_arg(&grpc);
    assert!(!shims.is_empty(), "no shim found with -address {grpc}");
    assert!(
        mount_count_under(&dir) > 0,
        "no rootfs mounts under {}",
        dir.display()
    );
    drop(cri);

    drop(cd);
    assert!(
        !PathBuf::from(format!("/proc/{daemon}")).exists(),
        "containerd {daemon} still alive"
    );
    let left = processes_with_arg(&grpc);
    assert!(left.is_empty(), "shims left behind: {left:?}");
    assert_eq!(
        mount_count_under(&dir),
        0,
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

fn a_panicking_test_still_cleans_up_and_keeps_the_log(v: Version) {
    // The "test" runs in its own thread so that its panic can be observed here.
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let cd = Containerd::start(v).expect("start containerd");
        let cri = cd.cri().expect("CRI client");
        let pod = cri.run_pod(&PodSpec::new("doomed")).expect("RunPodSandbox");
        cri.run_container(&pod, &ContainerSpec::sleeper("sleeper"))
            .expect("run container");
        tx.send((cd.dir().to_path_buf(), cd.grpc_socket())).unwrap();
        panic!("deliberate failure with a pod running");
    })
    .join();
    assert!(result.is_err(), "the thread was meant to panic");
    let (dir, grpc) = rx.recv().expect("the thread got as far as running a pod");
    let left = processes_with_arg(&grpc.to_string_lossy());
    assert!(left.is_empty(), "shims left behind: {left:?}");
    assert_eq!(
        mount_count_under(&dir),
        0,
        "mounts left under {}",
        dir.display()
    );
    let log = dir.join("containerd.log");
    assert!(log.is_file(), "{} not kept after a failure", log.display());
    assert!(
        !dir.join("root").exists(),
        "bulky root dir kept in {}",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn an_instance_whose_test_process_died_is_swept_by_the_next_start(v: Version) {
    let orphan = Containerd::start(v).expect("start containerd");
    let cri = orphan.cri().expect("CRI client");
    let pod = cri.run_pod(&PodSpec::new("orphan")).expect("RunPodSandbox");
    let id = cri
        .run_container(&pod, &ContainerSpec::sleeper("sleeper"))
        .expect("run container");
    drop(cri);
    let dir = orphan.dir().to_path_buf();
    let grpc = orphan.grpc_socket().to_string_lossy().into_owned();
    let container_pids: Vec<String> = [&id, &pod.id]
        .iter()
        .map(|i| std::fs::read_to_string(orphan.bundle_dir(i).join("init.pid")).unwrap())
        .collect();
    // Pretend the owning test process was killed: hand the instance to a process that has
    // exited, and skip its teardown.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(dir.join("owner"), format!("{gone_pid} 1")).unwrap();
    std::mem::forget(orphan);
    assert!(
        !processes_with_arg(&grpc).is_empty(),
        "shim should still run"
    );

    let next = Containerd::start(v).expect("start the next containerd");
    let left = processes_with_arg(&grpc);
    assert!(left.is_empty(), "orphan's shims left: {left:?}");
    for pid in container_pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty()
                || stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
            "orphan's container process {pid} still alive: {stat}"
        );
    }
    assert_eq!(mount_count_under(&dir), 0, "orphan's mounts left");
    assert!(
        dir.join("containerd.log").is_file(),
        "orphan's log not kept"
    );
    assert!(!dir.join("root").exists(), "orphan's root not removed");
    assert!(
        !dir.join("owner").exists(),
        "a swept dir has no owner any more"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop(next);
}

fn a_container_reverse_shell_reaches_the_listener(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    let pod = cri
        .run_pod(&PodSpec::new("attacked"))
        .expect("RunPodSandbox");
    let mut listener = rce_guard_e2e::ReverseShellListener::new().expect("listener");
    let nc = listener.nc_command();
    let nc: Vec<&str> = nc.iter().map(String::as_str).collect();
    let id = cri
        .run_container(&pod, &ContainerSpec::new("victim").command(&nc))
        .expect("run the reverse shell container");
    let t = Instant::now();
    listener
        .accept(Duration::from_secs(10))
        .expect("the container's shell connects back");
    println!(
        "containerd {}: reverse shell accepted {:?} after StartContainer returned",
        v.label(),
        t.elapsed()
    );
    let out = listener
        .run("readlink /proc/$$/fd/0; id -u", Duration::from_secs(5))
        .expect("run a command through the reverse shell");
    // The shell's stdin is the TCP connection: what makes it a reverse shell.
    assert!(
        out.starts_with("socket:[") && out.ends_with("]\n0\n"),
        "unexpected output {out:?}"
    );
    listener.send("exit").unwrap();
    assert!(listener.wait_closed(Duration::from_secs(5)).unwrap());
    let status = cri
        .wait_container_exit(&id, Duration::from_secs(10))
        .expect("the container exits with its shell");
    assert_eq!(status.exit_code, 0);
}

fn processes_with_arg(arg: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn mount_count_under(dir: &std::path::Path) -> usize {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .count()
}
