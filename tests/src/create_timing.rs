//! What the wrapper costs on `create`, measured on one OCI bundle without containerd in the
//! way.
//!
//! The wrapper's own cost, precisely: `rce-guard-runc create` with the plugin's annotation
//! (start, read, merge, atomic rewrite of config.json, exec) handing over to `/bin/true`
//! instead of runc, against `/bin/true` run directly with the same arguments. No container is
//! made, so runc's own variance (tens of milliseconds here) does not drown the difference.
//!
//! In context, the same bundle created for real by
//! - `rce-guard-runc create` (runc then hands the listener fd over),
//! - `runc create` on the config.json the wrapper wrote (the same handover, no wrapper),
//! - `runc create` on the annotated but unmerged config.json (no seccomp at all): the
//!   difference to the first is what monitoring costs a container's creation in total.
//!
//! Variants alternate round by round, each on a fresh copy of its config.json, with a unique
//! container id; every container is deleted again (not timed). runc 1.1.5 now and then fails
//! a create under load ("resulting devices cgroup doesn't precisely match target"): such a
//! round is repeated once and counted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use rce_guard::policy::annotation::{encode_annotation, SECCOMP_NOTIFY_ANNOTATION};
use rce_guard::policy::NotifyListener;

/// Stands in for the real runtime when only the wrapper is timed.
const TRUE: &str = "/bin/true";

/// The timings of one measurement, one entry per round.
#[derive(Debug, Clone, Default)]
pub struct CreateTimings {
    /// The wrapper with `/bin/true` as its real runtime.
    pub wrapper_to_true: Vec<Duration>,
    /// `/bin/true` with the same arguments.
    pub true_alone: Vec<Duration>,
    pub wrapper: Vec<Duration>,
    pub runc_merged: Vec<Duration>,
    pub runc_unmerged: Vec<Duration>,
    /// Real creates that failed once and were repeated.
    pub retried: usize,
}

/// Median of a set of durations (`Duration::ZERO` for none).
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 0.5)
}

/// The `q` quantile (nearest rank) of a set of durations.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// A busybox bundle for `create` timing, annotated to be monitored through `listener`.
pub struct TimingBundle {
    dir: tempfile::TempDir,
    /// runc's `--root` (container state), private to this bundle.
    state: tempfile::TempDir,
    runc: PathBuf,
    annotated: Vec<u8>,
}

impl TimingBundle {
    /// Builds the bundle: a rootfs with the host's static busybox, `runc spec`, an entrypoint
    /// that would sleep, and the annotation the NRI plugin adds (`listener`, `metadata`).
    pub fn new(listener: &Path, metadata: &str) -> Result<Self> {
        Self::new_in(Path::new("/tmp"), listener, metadata)
    }

    /// Like [`TimingBundle::new`], with the bundle and runc's state under `parent`: the
    /// wrapper syncs config.json and its directory, which costs milliseconds on a disk and
    /// nothing on tmpfs (where containerd's state lives on a real node: /run).
    pub fn new_in(parent: &Path, listener: &Path, metadata: &str) -> Result<Self> {
        let runc = find_on_path("runc").ok_or_else(|| {
            anyhow!("runc is not on PATH: run `bash hack/setup.sh` as root first")
        })?;
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox is missing: run `bash hack/setup.sh` (installs busybox-static)");
        }
        let dir = tempfile::Builder::new()
            .prefix("rg-bundle-")
            .tempdir_in(parent)
            .context("creating the bundle directory")?;
        let state = tempfile::Builder::new()
            .prefix("rg-runc-")
            .tempdir_in(parent)
            .context("creating runc's state directory")?;
        let rootfs = dir.path().join("rootfs");
        for sub in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).context("creating the rootfs")?;
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).context("copying busybox")?;
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .context("linking a busybox applet")?;
        }
        let out = Command::new(&runc)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .context("running runc spec")?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let config = dir.path().join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&config)?)
            .context("parsing the config.json runc spec wrote")?;
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["/bin/sleep", "60"]);
        let listener = NotifyListener::new(listener.to_string_lossy(), metadata)
            .map_err(|e| anyhow!("listener {}: {e}", listener.display()))?;
        spec["annotations"] = json!({ SECCOMP_NOTIFY_ANNOTATION: encode_annotation(&listener) });
        let annotated = serde_json::to_vec_pretty(&spec)?;
        Ok(TimingBundle {
            dir,
            state,
            runc,
            annotated,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// `<program> --root <state> --log <file> create --bundle <bundle> <id>`, timed. The
    /// created init inherits the runtime's stdio and keeps it until it is deleted: stdio goes
    /// to /dev/null (a pipe would never reach EOF), errors are read from runc's log file.
    fn create(&self, program: &Path, id: &str, real_runtime: Option<&Path>) -> Result<Duration> {
        let log = self.state.path().join("runc.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(program);
        match real_runtime {
            Some(real) => cmd.env("RCE_GUARD_REAL_RUNTIME", real),
            None => cmd.env_remove("RCE_GUARD_REAL_RUNTIME"),
        };
        cmd.env_remove("RCE_GUARD_OCI_VERSION_OVERRIDE");
        let started = Instant::now();
        let status = cmd
            .arg("--root")
            .arg(self.state.path())
            .arg("--log")
            .arg(&log)
            .args(["create", "--bundle"])
            .arg(self.dir.path())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        let took = started.elapsed();
        if !status.success() {
            bail!(
                "{} create {id} failed ({status}); runtime log: {}",
                program.display(),
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(took)
    }

    fn delete(&self, id: &str) {
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(self.state.path())
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// One create through `program` on `config`; the container is deleted again.
    fn round(&self, program: &Path, config: &[u8], id: &str) -> Result<Duration> {
        std::fs::write(self.config_path(), config).context("writing config.json")?;
        let took = self.create(program, id, None);
        self.delete(id);
        took
    }

    /// [`TimingBundle::round`], repeated once (with another id) if runc fails.
    fn real_round(
        &self,
        program: &Path,
        config: &[u8],
        id: &str,
        retried: &mut usize,
    ) -> Result<Duration> {
        match self.round(program, config, id) {
            Ok(took) => Ok(took),
            Err(first) => {
                *retried += 1;
                self.round(program, config, &format!("{id}-again"))
                    .with_context(|| format!("failed twice; the first time: {first:#}"))
            }
        }
    }

    /// `program create` on the annotated config, with `/bin/true` as the wrapper's runtime.
    fn round_to_true(&self, program: &Path, id: &str) -> Result<Duration> {
        std::fs::write(self.config_path(), &self.annotated).context("writing config.json")?;
        self.create(program, id, Some(Path::new(TRUE)))
    }

    /// Runs `exec_rounds` interleaved rounds of wrapper-to-true vs true, then `rounds`
    /// interleaved rounds of the three real creates (see the module docs).
    pub fn measure(
        &self,
        wrapper: &Path,
        exec_rounds: usize,
        rounds: usize,
    ) -> Result<CreateTimings> {
        let tag = std::process::id();
        let mut t = CreateTimings::default();
        for i in 0..exec_rounds {
            let id = format!("rg-time-{tag}-true-{i}");
            if i % 2 == 0 {
                t.wrapper_to_true.push(self.round_to_true(wrapper, &id)?);
                t.true_alone.push(self.round_to_true(Path::new(TRUE), &id)?);
            } else {
                t.true_alone.push(self.round_to_true(Path::new(TRUE), &id)?);
                t.wrapper_to_true.push(self.round_to_true(wrapper, &id)?);
            }
        }
        // The wrapper really merged (the last write above was true's copy of the original).
        self.round_to_true(wrapper, &format!("rg-time-{tag}-check"))?;
        let merged = std::fs::read(self.config_path()).context("reading the merged spec")?;
        let merged_spec: Value = serde_json::from_slice(&merged)?;
        if merged_spec["linux"]["seccomp"]["listenerPath"]
            .as_str()
            .is_none()
        {
            bail!("the wrapper did not merge a listenerPath into the bundle: {merged_spec}");
        }
        let mut retried = 0;
        for i in 0..rounds {
            // Rotate the order so that no variant always runs first (caches, the listener).
            for k in 0..3 {
                let id = format!("rg-time-{tag}-{i}-{k}");
                match (i + k) % 3 {
                    0 => t.wrapper.push(self.real_round(
                        wrapper,
                        &self.annotated,
                        &id,
                        &mut retried,
                    )?),
                    1 => t.runc_merged.push(self.real_round(
                        &self.runc,
                        &merged,
                        &id,
                        &mut retried,
                    )?),
                    _ => t.runc_unmerged.push(self.real_round(
                        &self.runc,
                        &self.annotated,
                        &id,
                        &mut retried,
                    )?),
                }
            }
        }
        t.retried = retried;
        Ok(t)
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Drop for TimingBundle {
    /// Deletes whatever container is still in this bundle's runc root (a round that failed
    /// half-way), so that no `runc init` outlives the test.
    fn drop(&mut self) {
        let listed = Command::new(&self.runc)
            .arg("--root")
            .arg(self.state.path())
            .args(["list", "-q"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                self.delete(id);
            }
        }
    }
}
