//! Shared parts of the wrapper tests: a real OCI bundle with a busybox rootfs, the wrapper and
//! bookworm's runc run with a private `--root`, and a minimal seccomp listener.
//!
//! These tests need root and `/usr/sbin/runc` (hack/setup.sh installs it); they fail loudly
//! without them rather than pass without testing anything.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rce_guard::monitor::sys::{notif_recv, notif_send, Reply};
use rce_guard::policy::annotation::{encode_annotation, SECCOMP_NOTIFY_ANNOTATION};
use rce_guard::policy::NotifyListener;
use serde_json::{json, Value};

pub const RUNC: &str = "/usr/sbin/runc";
pub const WRAPPER: &str = env!("CARGO_BIN_EXE_rce-guard-runc");

/// Panics unless the machine can run containers the way these tests need.
pub fn require_root_and_runc() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the wrapper tests run real containers with runc and need root"
    );
    assert!(
        Path::new(RUNC).exists(),
        "{RUNC} is missing: run hack/setup.sh (installs bookworm's runc 1.1.5)"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: run hack/setup.sh (installs busybox-static)"
    );
}

/// A unique container id per call within this process.
pub fn container_id(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "rgw-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bundle directory with a busybox rootfs and a `runc spec` config.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    /// runc's `--root` for this test.
    pub state: tempfile::TempDir,
}

impl Bundle {
    /// Builds the bundle; `args` is the container's command line.
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("rgw-bundle")
            .tempdir()
            .unwrap();
        let state = tempfile::Builder::new()
            .prefix("rgw-state")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for sub in ["bin", "tmp", "proc", "dev", "sys"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "true", "echo", "touch", "chmod", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let out = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bundle = Bundle { dir, state };
        bundle.edit(|spec| {
            spec["process"]["terminal"] = json!(false);
            spec["process"]["args"] = json!(args);
            spec["root"]["readonly"] = json!(false);
        });
        bundle
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub fn spec(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).unwrap()).unwrap()
    }

    pub fn config_bytes(&self) -> Vec<u8> {
        std::fs::read(self.config_path()).unwrap()
    }

    /// Changes the spec and writes it back (pretty, like `runc spec`).
    pub fn edit(&self, change: impl FnOnce(&mut Value)) {
        let mut spec = self.spec();
        change(&mut spec);
        std::fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
    }

    pub fn annotate(&self, key: &str, value: &str) {
        self.edit(|spec| {
            if !spec["annotations"].is_object() {
                spec["annotations"] = json!({});
            }
            spec["annotations"][key] = json!(value);
        });
    }

    /// Adds the plugin's request for monitoring through `listener_path`.
    pub fn request_monitoring(&self, listener_path: &Path, metadata: &str) {
        let listener = NotifyListener::new(listener_path.to_str().unwrap(), metadata).unwrap();
        self.annotate(SECCOMP_NOTIFY_ANNOTATION, &encode_annotation(&listener));
    }

    /// Global flags as containerd's shim passes them.
    pub fn global_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.state.path().display().to_string(),
            "--log".into(),
            self.log_path().display().to_string(),
            "--log-format".into(),
            "json".into(),
        ]
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.path().join("log.json")
    }

    /// `<runtime> <global flags> <command...>`.
    pub fn runtime(&self, program: &str, command: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.global_args()).args(command);
        cmd.env("RCE_GUARD_REAL_RUNTIME", RUNC);
        cmd.env_remove("RCE_GUARD_OCI_VERSION_OVERRIDE");
        cmd
    }

    /// `create --bundle <bundle> <id>` through `program`.
    pub fn create(&self, program: &str, id: &str) -> Output {
        let bundle = self.path().display().to_string();
        output_via_files(&mut self.runtime(program, &["create", "--bundle", &bundle, id]))
    }

    /// `run --bundle <bundle> <id>` (foreground) through `program`.
    pub fn run(&self, program: &str, id: &str) -> Output {
        let bundle = self.path().display().to_string();
        output_via_files(&mut self.runtime(program, &["run", "--bundle", &bundle, id]))
    }

    /// Any runtime command, its output captured through files.
    pub fn call(&self, program: &str, command: &[&str]) -> Output {
        output_via_files(&mut self.runtime(program, command))
    }

    pub fn delete(&self, id: &str) {
        let _ = self.call(RUNC, &["delete", "--force", id]);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// Runs `cmd` with stdout and stderr going to files. After `create` the container's init
/// inherits the runtime's stdio and lives on: with pipes, `Command::output` would wait for it.
pub fn output_via_files(cmd: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a [`TestListener`] saw.
#[derive(Default)]
pub struct ListenerLog {
    /// The JSON state payloads, one per handover.
    pub payloads: Mutex<Vec<Value>>,
    /// Notifications answered with CONTINUE.
    pub notifications: AtomicUsize,
}

/// A minimal seccomp agent: accepts handovers on a unix socket, and answers every
/// notification of every received listener fd with CONTINUE until its tasks are gone.
pub struct TestListener {
    pub path: PathBuf,
    pub log: Arc<ListenerLog>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestListener {
    pub fn start() -> TestListener {
        let dir = tempfile::Builder::new()
            .prefix("rgw-sock")
            .tempdir()
            .unwrap();
        let path = dir.path().join("seccomp.sock");
        let socket = UnixListener::bind(&path).unwrap();
        let log = Arc::new(ListenerLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in socket.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (fd, payload) = receive_handover(conn.as_fd());
                    log.payloads.lock().unwrap().push(payload);
                    let log = log.clone();
                    std::thread::spawn(move || continue_all(fd, &log));
                }
            })
        };
        TestListener {
            path,
            log,
            stop,
            accept_thread: Some(accept_thread),
            _dir: dir,
        }
    }

    pub fn payloads(&self) -> Vec<Value> {
        self.log.payloads.lock().unwrap().clone()
    }
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one handover: the listener fd (SCM_RIGHTS, first message) and the JSON state.
///
/// Stops at the end of the JSON document, not at EOF: runc 1.1.5 never closes its end of the
/// connection (it closes only a dup of it), so EOF comes when runc exits, and a foreground
/// `runc run` exits only after the container, whose first exec waits for this listener.
fn receive_handover(conn: std::os::fd::BorrowedFd<'_>) -> (OwnedFd, Value) {
    let mut data = Vec::new();
    let mut fd = None;
    loop {
        let mut buf = [0u8; 32 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            conn,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .expect("recvmsg on the handover connection");
        for msg in control.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = msg {
                for received in fds {
                    fd.get_or_insert(received);
                }
            }
        }
        data.extend_from_slice(&buf[..got.bytes]);
        match serde_json::from_slice::<Value>(&data) {
            Ok(payload) => {
                return (fd.expect("the handover carries the listener fd"), payload);
            }
            Err(e) if e.is_eof() && got.bytes > 0 => continue,
            Err(e) => panic!(
                "bad handover payload ({e}): {}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
}

/// Answers CONTINUE to every notification until POLLHUP (every task using the filter exited).
fn continue_all(fd: OwnedFd, log: &ListenerLog) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
            continue;
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLIN) {
            if let Ok(n) = notif_recv(fd.as_fd()) {
                if notif_send(fd.as_fd(), n.id, Reply::Continue).is_ok() {
                    log.notifications.fetch_add(1, Ordering::SeqCst);
                }
            }
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        {
            return;
        }
    }
}

/// Waits up to `timeout` for `cond`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
