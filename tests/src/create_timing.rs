//! What the wrapper costs on `create`, measured on one OCI bundle without containerd in the
//! way: the same bundle created by
//!
//! - `rce-guard-runc create` with the plugin's annotation (read, merge, atomic rewrite of
//!   config.json, exec runc; runc then hands the listener fd over),
//! - `runc create` on the config.json the wrapper wrote (the same handover, no wrapper): the
//!   difference to the first is the wrapper's own cost,
//! - `runc create` on the annotated but unmerged config.json (no seccomp at all): the
//!   difference to the first is what monitoring costs a container's creation in total.
//!
//! The three alternate round by round, each on a fresh copy of its config.json, with a unique
//! container id; every container is deleted again (not timed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use rce_guard::policy::annotation::{encode_annotation, SECCOMP_NOTIFY_ANNOTATION};
use rce_guard::policy::NotifyListener;

/// The timings of one measurement, one entry per round.
#[derive(Debug, Clone, Default)]
pub struct CreateTimings {
    pub wrapper: Vec<Duration>,
    pub runc_merged: Vec<Duration>,
    pub runc_unmerged: Vec<Duration>,
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
        let runc = find_on_path("runc").ok_or_else(|| {
            anyhow!("runc is not on PATH: run `bash hack/setup.sh` as root first")
        })?;
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox is missing: run `bash hack/setup.sh` (installs busybox-static)");
        }
        let dir = tempfile::Builder::new()
            .prefix("rg-bundle-")
            .tempdir_in("/tmp")
            .context("creating the bundle directory")?;
        let state = tempfile::Builder::new()
            .prefix("rg-runc-")
            .tempdir_in("/tmp")
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

    /// `<program> --root <state> create --bundle <bundle> <id>`, timed; stdio on /dev/null (the
    /// created init keeps its stdio open until it is deleted).
    fn create(&self, program: &Path, id: &str) -> Result<Duration> {
        let started = Instant::now();
        let out = Command::new(program)
            .arg("--root")
            .arg(self.state.path())
            .args(["create", "--bundle"])
            .arg(self.dir.path())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "{} create {id} failed ({}): {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
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
        let took = self.create(program, id);
        self.delete(id);
        took
    }

    /// Runs `rounds` interleaved rounds of the three variants (see the module docs).
    pub fn measure(&self, wrapper: &Path, rounds: usize) -> Result<CreateTimings> {
        let tag = std::process::id();
        // One create through the wrapper gives the merged config.json to compare with.
        let probe = format!("rg-time-{tag}-probe");
        self.round(wrapper, &self.annotated, &probe)?;
        let merged = std::fs::read(self.config_path()).context("reading the merged spec")?;
        let merged_spec: Value = serde_json::from_slice(&merged)?;
        if merged_spec["linux"]["seccomp"]["listenerPath"]
            .as_str()
            .is_none()
        {
            bail!("the wrapper did not merge a listenerPath into the bundle: {merged_spec}");
        }
        let mut t = CreateTimings::default();
        for i in 0..rounds {
            // Rotate the order so that no variant always runs first (caches, the listener).
            for k in 0..3 {
                let id = format!("rg-time-{tag}-{i}-{k}");
                match (i + k) % 3 {
                    0 => t.wrapper.push(self.round(wrapper, &self.annotated, &id)?),
                    1 => t.runc_merged.push(self.round(&self.runc, &merged, &id)?),
                    _ => t
                        .runc_unmerged
                        .push(self.round(&self.runc, &self.annotated, &id)?),
                }
            }
        }
        Ok(t)
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
