//! Preconditions of the real-runtime tests: root, and the runtimes and images that
//! `hack/setup.sh` puts under the e2e root. Each check fails with a sentence that says what to do.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::containerd::Version;

/// Image reference of the busybox test image (built by `hack/build-images.sh`).
pub const BUSYBOX_IMAGE: &str = "rce-guard.test/busybox:1";
/// Image reference of the pause image, used as the pod sandbox image.
pub const PAUSE_IMAGE: &str = "rce-guard.test/pause:1";

/// Where `hack/setup.sh` unpacks the runtimes and images: `$RCE_GUARD_E2E_ROOT`, else
/// `/opt/rce-guard-e2e`.
pub fn e2e_root() -> PathBuf {
    std::env::var_os("RCE_GUARD_E2E_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/rce-guard-e2e"))
}

/// The image archives that every containerd instance imports.
pub(crate) fn image_archives() -> [PathBuf; 2] {
    let dir = e2e_root().join("images");
    [dir.join("pause.tar"), dir.join("busybox.tar")]
}

/// Fails unless the process runs as root (containerd, runc and mounts need it).
pub fn require_root() -> Result<()> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        bail!(
            "the rce-guard e2e tests need root (running as uid {uid}): they start a real \
             containerd and runc. Run them as root on a machine prepared by `bash hack/setup.sh`."
        );
    }
    Ok(())
}

/// Fails unless root, the given containerd version, runc and the test images are in place.
pub fn require_setup(version: Version) -> Result<()> {
    require_root()?;
    let bin = version.bin_dir();
    for exe in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        require_file(&bin.join(exe), "containerd")?;
    }
    for archive in image_archives() {
        require_file(&archive, "test image")?;
    }
    if which("runc").is_none() {
        bail!("runc is not on PATH: run `bash hack/setup.sh` as root first");
    }
    Ok(())
}

fn require_file(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{what} missing at {} (e2e root {}): run `bash hack/setup.sh` as root first, or point \
             RCE_GUARD_E2E_ROOT at a prepared directory",
            path.display(),
            e2e_root().display()
        );
    }
    Ok(())
}

/// First executable named `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
