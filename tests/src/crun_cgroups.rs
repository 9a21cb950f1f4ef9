//! crun on this machine's hybrid cgroup layout: crun 1.8.1 (and 1.28) refuse to create any
//! container while a controller is still attached to the cgroup2 mount ("cgroups in hybrid mode
//! not supported, drop all controllers from cgroupv2"); here that controller is `hugetlb`,
//! which has no v1 hierarchy of its own.
//!
//! Binding hugetlb to a v1 hierarchy takes it off cgroup2. The binding is kernel-wide, but the
//! mount that keeps it need not be visible: a small helper process mounts it inside a private
//! mount namespace of its own and waits on a pipe from us. When the last user in this process
//! lets go (or this process dies and the pipe closes), the helper exits, its namespace and the
//! mount go away, and hugetlb returns to cgroup2 as it was. Nothing on the host's mount table
//! changes, so runc (which skips v1 controllers it cannot find) and other tests are unaffected.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::wait::wait_until;

const UNIFIED_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

struct Binding {
    users: usize,
    helper: Option<(Child, tempfile::TempDir)>,
}

static BINDING: Mutex<Binding> = Mutex::new(Binding {
    users: 0,
    helper: None,
});

/// Keeps crun usable while it lives. See the module docs.
pub struct CrunCgroupsFix {
    _private: (),
}

/// Controllers still attached to the hybrid layout's cgroup2 mount (none on a pure v1 or a
/// pure v2 machine).
fn unified_controllers() -> Vec<String> {
    std::fs::read_to_string(UNIFIED_CONTROLLERS)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

impl CrunCgroupsFix {
    /// Makes sure no controller sits on the cgroup2 mount of a hybrid layout, for as long as
    /// the value lives.
    pub fn acquire() -> Result<Self> {
        let mut b = BINDING.lock().unwrap_or_else(|e| e.into_inner());
        if b.helper.is_none() {
            let controllers = unified_controllers();
            if controllers.iter().any(|c| c != "hugetlb") {
                bail!(
                    "crun cannot run here: controllers {controllers:?} are on the cgroup2 mount \
                     of a hybrid layout, and only hugetlb can be moved off it by the tests"
                );
            }
            if !controllers.is_empty() {
                b.helper = Some(bind_hugetlb()?);
            }
        }
        b.users += 1;
        Ok(CrunCgroupsFix { _private: () })
    }
}

impl Drop for CrunCgroupsFix {
    fn drop(&mut self) {
        let mut b = BINDING.lock().unwrap_or_else(|e| e.into_inner());
        b.users = b.users.saturating_sub(1);
        if b.users == 0 {
            if let Some((mut child, _dir)) = b.helper.take() {
                // Closing its stdin ends it; kill it by pid in case it is stuck.
                drop(child.stdin.take());
                if wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                    child.try_wait().ok().flatten()
                })
                .is_none()
                {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// Starts the helper that holds a v1 hugetlb mount in its own mount namespace.
fn bind_hugetlb() -> Result<(Child, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("rg-hugetlb-")
        .tempdir_in("/tmp")
        .context("creating a mount point for the hugetlb hierarchy")?;
    let script = format!(
        "mount -t cgroup -o hugetlb rg-e2e-hugetlb {} || exit 1; echo mounted; read _; exit 0",
        shell_quote(dir.path())
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning unshare (util-linux) to bind hugetlb to a v1 hierarchy")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("helper stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the hugetlb helper's answer")?;
    if line.trim() != "mounted" {
        let _ = child.kill();
        let out = child.wait_with_output().ok();
        let stderr = out
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        bail!(
            "could not bind hugetlb to a v1 hierarchy for crun: {}",
            stderr.trim()
        );
    }
    if !unified_controllers().is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "hugetlb is still on the cgroup2 mount after binding it to v1: {:?}",
            unified_controllers()
        );
    }
    Ok((child, dir))
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
