//! One private containerd per test: its own root, state, gRPC socket, NRI socket and log file
//! under a short temporary directory (`/tmp/rg-XXXXXX`, so that unix socket paths stay far below
//! the 108-byte limit). Instances are independent, so tests in one binary may run in parallel.

mod cleanup;
mod config;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cri::Cri;
use crate::env::{image_archives, require_setup, BUSYBOX_IMAGE, PAUSE_IMAGE};
use crate::wait::wait_until;

/// The containerd versions the tests cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// containerd 1.7.24 (Debian trixie): NRI api 0.6.1, config schema 2, NRI off by default.
    V1_7,
    /// containerd 2.1.9 (Debian sid): NRI api 0.8.0, config schema 3.
    V2_1,
}

impl Version {
    /// Both versions, for tests that loop over them.
    pub const ALL: [Version; 2] = [Version::V1_7, Version::V2_1];

    /// Directory holding this version's `containerd`, `containerd-shim-runc-v2` and `ctr`.
    pub fn bin_dir(self) -> PathBuf {
        crate::env::e2e_root().join(self.dir_name()).join("usr/bin")
    }

    /// Short name for messages: "1.7" or "2.1".
    pub fn label(self) -> &'static str {
        match self {
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Version::V1_7 => "containerd-1.7",
            Version::V2_1 => "containerd-2.1",
        }
    }
}

/// A runtime handler a pod can select with CRI `runtime_handler` (always the runc v2 shim; the
/// OCI runtime binary is `binary_name`).
#[derive(Debug, Clone)]
pub struct RuntimeHandler {
    pub name: String,
    /// `BinaryName` of the shim: `runc`, `crun`, or a wrapper's absolute path.
    pub binary_name: String,
    /// Pod annotations (globs) that containerd passes into the OCI spec.
    pub pod_annotations: Vec<String>,
    /// Container annotations (globs) that containerd passes into the OCI spec.
    pub container_annotations: Vec<String>,
}

impl RuntimeHandler {
    pub fn new(name: &str, binary_name: &str) -> Self {
        RuntimeHandler {
            name: name.to_string(),
            binary_name: binary_name.to_string(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
        }
    }

    pub fn pod_annotation(mut self, glob: &str) -> Self {
        self.pod_annotations.push(glob.to_string());
        self
    }

    pub fn container_annotation(mut self, glob: &str) -> Self {
        self.container_annotations.push(glob.to_string());
        self
    }
}

/// How to configure an instance. `ContainerdOptions::new(version)` gives the defaults: runc,
/// NRI enabled with containerd's default timeouts, log level info.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    pub version: Version,
    /// `BinaryName` of the default `runc` handler.
    pub runc_binary: String,
    pub extra_handlers: Vec<RuntimeHandler>,
    pub nri: bool,
    pub nri_registration_timeout: Option<Duration>,
    pub nri_request_timeout: Option<Duration>,
    /// containerd's `[debug] level`: "info", "debug", ...
    pub log_level: String,
}

impl ContainerdOptions {
    pub fn new(version: Version) -> Self {
        ContainerdOptions {
            version,
            runc_binary: "runc".to_string(),
            extra_handlers: Vec::new(),
            nri: true,
            nri_registration_timeout: None,
            nri_request_timeout: None,
            log_level: "info".to_string(),
        }
    }

    pub fn runc_binary(mut self, binary: &str) -> Self {
        self.runc_binary = binary.to_string();
        self
    }

    pub fn handler(mut self, handler: RuntimeHandler) -> Self {
        self.extra_handlers.push(handler);
        self
    }

    pub fn nri(mut self, enabled: bool) -> Self {
        self.nri = enabled;
        self
    }

    pub fn nri_registration_timeout(mut self, timeout: Duration) -> Self {
        self.nri_registration_timeout = Some(timeout);
        self
    }

    pub fn nri_request_timeout(mut self, timeout: Duration) -> Self {
        self.nri_request_timeout = Some(timeout);
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }
}

/// How long containerd gets to bring its CRI service up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private containerd. Dropping it cleans up everything it started.
pub struct Containerd {
    opts: ContainerdOptions,
    /// The temporary directory; `None` once it is kept for inspection.
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    started_at: Instant,
}

impl Containerd {
    /// Starts an instance of `version` with default options and imports the test images.
    pub fn start(version: Version) -> Result<Self> {
        Self::start_with(ContainerdOptions::new(version))
    }

    /// Starts an instance configured by `opts` and imports the test images.
    pub fn start_with(opts: ContainerdOptions) -> Result<Self> {
        require_setup(opts.version)?;
        cleanup::sweep_orphans(Path::new("/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("rg-")
            .tempdir_in("/tmp")
            .context("creating the instance directory under /tmp")?;
        let dir_path = dir.path().to_path_buf();
        let mut cd = Containerd {
            opts,
            dir: Some(dir),
            dir_path,
            child: None,
            started_at: Instant::now(),
        };
        cleanup::write_owner(&cd.dir_path).context("writing the instance's owner file")?;
        for sub in ["root", "state", "nri-plugins", "nri-conf", "pods"] {
            std::fs::create_dir_all(cd.dir_path.join(sub))
                .with_context(|| format!("creating {sub} in {}", cd.dir_path.display()))?;
        }
        let paths = config::InstancePaths {
            root: &cd.root_dir(),
            state: &cd.state_dir(),
            grpc_socket: &cd.grpc_socket(),
            nri_socket: &cd.nri_socket(),
            nri_plugin_dir: &cd.dir_path.join("nri-plugins"),
            nri_config_dir: &cd.dir_path.join("nri-conf"),
        };
        let text = config::render(&cd.opts, &paths);
        std::fs::write(cd.config_path(), text).context("writing containerd config")?;
        cd.spawn()?;
        cd.import_images()?;
        Ok(cd)
    }

    /// Stops containerd gracefully (SIGTERM, as a service manager restarts it) and starts it
    /// again on the same directories. Only the daemon goes: shims and containers keep running.
    /// Returns when the new CRI service answers; the instant is when the new daemon was spawned.
    pub fn restart(&mut self) -> Result<Instant> {
        self.stop_daemon();
        self.respawn()
    }

    /// Like [`Containerd::restart`], but the old daemon dies by SIGKILL (a crash): no graceful
    /// shutdown of its NRI connections.
    pub fn crash_and_restart(&mut self) -> Result<Instant> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.respawn()
    }

    fn respawn(&mut self) -> Result<Instant> {
        // Sockets of the old daemon: the new one must create its own.
        for sock in [self.grpc_socket(), self.ttrpc_socket(), self.nri_socket()] {
            let _ = std::fs::remove_file(sock);
        }
        self.spawn()?;
        Ok(self.started_at)
    }

    /// When the current daemon was started (by `start` or the latest `restart`).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    pub fn version(&self) -> Version {
        self.opts.version
    }

    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// The instance's temporary directory (short: safe for more unix sockets).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir_path.join("root")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir_path.join("state")
    }

    pub fn grpc_socket(&self) -> PathBuf {
        self.dir_path.join("c.sock")
    }

    fn ttrpc_socket(&self) -> PathBuf {
        self.dir_path.join("c.sock.ttrpc")
    }

    /// The socket NRI plugins connect to.
    pub fn nri_socket(&self) -> PathBuf {
        self.dir_path.join("nri.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir_path.join("config.toml")
    }

    /// containerd's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir_path.join("containerd.log")
    }

    /// Directory for pod logs (each pod gets a subdirectory).
    pub fn pod_log_root(&self) -> PathBuf {
        self.dir_path.join("pods")
    }

    /// Pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The whole log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Current log size in bytes: a mark for [`Containerd::wait_for_log_after`].
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_after(0, needle, timeout)
    }

    /// Waits until a line that starts at or after byte `mark` contains `needle`.
    pub fn wait_for_log_after(&self, mark: u64, needle: &str, timeout: Duration) -> Result<String> {
        let found = wait_until(timeout, Duration::from_millis(50), || {
            let bytes = std::fs::read(self.log_path()).ok()?;
            let start = usize::try_from(mark).ok()?.min(bytes.len());
            String::from_utf8_lossy(&bytes[start..])
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        });
        found.ok_or_else(|| {
            anyhow!(
                "containerd {} did not log {needle:?} within {timeout:?}; log tail:\n{}",
                self.opts.version.label(),
                self.log_tail(40)
            )
        })
    }

    /// A CRI client connected to this instance.
    pub fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.grpc_socket(), &self.pod_log_root())
            .with_context(|| self.context_tail("connecting the CRI client"))
    }

    /// The OCI spec (config.json) the runtime got for a container or sandbox.
    pub fn oci_config(&self, id: &str) -> Result<serde_json::Value> {
        let path = self.bundle_dir(id).join("config.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The runtime bundle of a container or sandbox task.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(id)
    }

    /// Keeps the instance directory (config, log) after drop, and says where it is.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.dir_path.clone()
    }

    /// "<what>; containerd log tail: ..." for error contexts.
    pub(crate) fn context_tail(&self, what: &str) -> String {
        format!(
            "{what} (containerd {}, log {}); log tail:\n{}",
            self.opts.version.label(),
            self.log_path().display(),
            self.log_tail(30)
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = self.opts.version.bin_dir();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the containerd log")?;
        let log_err = log.try_clone().context("duplicating the log fd")?;
        // The shim is looked up on PATH: this version's shim must come first.
        let path = match std::env::var_os("PATH") {
            Some(rest) => {
                let mut dirs = vec![bin.clone()];
                dirs.extend(std::env::split_paths(&rest));
                std::env::join_paths(dirs).context("building PATH")?
            }
            None => bin.clone().into_os_string(),
        };
        // setsid: its own session, so nothing of ours (terminal signals, process group kills)
        // reaches it, as with a daemon started by an init system.
        let child = Command::new("setsid")
            .arg(bin.join("containerd"))
            .arg("--config")
            .arg(self.config_path())
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .context("spawning setsid containerd (is util-linux's setsid installed?)")?;
        self.started_at = Instant::now();
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the gRPC socket exists and the CRI service answers Version.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = None;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(self.context_tail(&format!("containerd exited during start ({status})")));
                }
            }
            if self.grpc_socket().exists() {
                match Cri::connect(&self.grpc_socket(), &self.pod_log_root())
                    .and_then(|cri| cri.version())
                {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = Some(e),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(self.context_tail(&format!(
            "containerd's CRI service did not answer within {START_TIMEOUT:?} (last error: {last_err:?})"
        )))
    }

    fn import_images(&self) -> Result<()> {
        let ctr = self.opts.version.bin_dir().join("ctr");
        for archive in image_archives() {
            let out = Command::new(&ctr)
                .arg("-a")
                .arg(self.grpc_socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", ctr.display()))?;
            if !out.status.success() {
                bail!(self.context_tail(&format!(
                    "ctr images import {} failed ({}): {}",
                    archive.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        // The CRI image service learns about imported images from events, a moment later;
        // until then a pod could not find its sandbox image.
        let cri = self.cri()?;
        let wanted = [PAUSE_IMAGE, BUSYBOX_IMAGE];
        let seen = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
            let images = cri.list_images().ok()?;
            wanted
                .iter()
                .all(|w| images.iter().any(|i| i == w))
                .then_some(())
        });
        if seen.is_none() {
            bail!(self.context_tail(&format!(
                "CRI does not list the imported images {wanted:?} after {START_TIMEOUT:?}"
            )));
        }
        Ok(())
    }

    /// Stops the daemon: SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            cleanup::terminate(&mut child, Duration::from_secs(10));
        }
    }
}

/// One step of tearing an instance down.
type TeardownStep = fn(&mut Containerd);

impl Drop for Containerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- containerd {} log tail ({}):\n{}\n---",
                self.opts.version.label(),
                self.log_path().display(),
                self.log_tail(40)
            );
        }
        // Each step runs even if an earlier one panics: a panic here would abort the test
        // binary and leave the daemon and its containers behind.
        let steps: [(&str, TeardownStep); 4] = [
            ("removing pods", |cd| cleanup::remove_all_pods(cd)),
            ("stopping containerd", |cd| cd.stop_daemon()),
            ("killing leftovers", |cd| cleanup::kill_leftovers(cd)),
            ("unmounting", |cd| {
                crate::procfs::unmount_all_under(&cd.dir_path)
            }),
        ];
        for (what, step) in steps {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(self)));
            if result.is_err() {
                let v = self.opts.version.label();
                eprintln!("teardown of containerd {v}: {what} panicked");
            }
        }
        if panicking {
            cleanup::keep_only_logs(&self.dir_path);
            let kept = self.keep_dir();
            eprintln!("containerd log kept in {}", kept.display());
        } else if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("could not remove {}: {e}", self.dir_path.display());
            }
        }
    }
}
