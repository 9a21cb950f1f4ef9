//! The product's other binaries next to the agent (the `rce-guard-runc` wrapper and the fd
//! holder), the crun flavour of the wrapper, agent config files, and `rce-guard status`.
//!
//! The injection tests run containerd with the wrapper as its runtime and an agent that starts
//! its fd holder from its own directory: all three binaries must be built from the current
//! sources, or a test would exercise stale code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::agent::{agent_binary, Agent};

/// Paths of the product's binaries, all in one directory.
#[derive(Debug, Clone)]
pub struct ProductBinaries {
    /// `rce-guard` (the agent and `rce-guard status`).
    pub agent: PathBuf,
    /// `rce-guard-runc`: containerd's runc `BinaryName`.
    pub wrapper: PathBuf,
    /// `rce-guard-holder`: started by the agent from its own directory.
    pub holder: PathBuf,
}

/// The product's binaries. Unless `$RCE_GUARD_BIN` names the agent (then its siblings are used
/// as they are), `cargo build -p rce-guard --bins` runs once per test process first: cargo
/// knows best whether anything is stale, and it is a no-op when nothing is.
pub fn product_binaries() -> Result<ProductBinaries> {
    static BUILT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let from_env = std::env::var_os("RCE_GUARD_BIN").is_some_and(|v| !v.is_empty());
    if !from_env {
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if built.is_none() {
            *built = Some(build_all_bins().map_err(|e| format!("{e:#}")));
        }
        if let Some(Err(e)) = built.as_ref() {
            bail!("building the rce-guard binaries failed: {e}");
        }
    }
    let agent = agent_binary()?;
    let dir = agent
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", agent.display()))?;
    let bins = ProductBinaries {
        wrapper: dir.join("rce-guard-runc"),
        holder: dir.join("rce-guard-holder"),
        agent: agent.clone(),
    };
    for bin in [&bins.wrapper, &bins.holder] {
        if !bin.is_file() {
            bail!(
                "{} is missing next to {} (run `cargo build -p rce-guard --bins`)",
                bin.display(),
                agent.display()
            );
        }
    }
    Ok(bins)
}

fn build_all_bins() -> Result<()> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // Test executables live in <target>/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", profile_dir.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("the tests crate has no parent directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "rce-guard", "--bins"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null());
    if profile_dir.file_name() == Some("release".as_ref()) {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("`cargo build -p rce-guard --bins` failed ({status})");
    }
    Ok(())
}

/// The wrapper as crun's `BinaryName`, in a directory of its own: a symlink named
/// `rce-guard-crun` (the wrapper picks the real runtime from its own name), and a two-line
/// script that sets `RCE_GUARD_OCI_VERSION_OVERRIDE` for this runtime handler only (bookworm's
/// crun 1.8.1 refuses the `ociVersion` containerd 2.1 writes) and execs the symlink. A shim
/// passes containerd's environment to the runtime, and containerd has no per-handler
/// environment, so the script is how one handler gets a variable the others do not.
pub struct CrunWrapper {
    dir: tempfile::TempDir,
}

impl CrunWrapper {
    pub fn new(wrapper: &Path, oci_version_override: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("rg-crun-")
            .tempdir_in("/tmp")
            .context("creating the crun wrapper directory")?;
        let link = dir.path().join("rce-guard-crun");
        std::os::unix::fs::symlink(wrapper, &link)
            .with_context(|| format!("linking {} to {}", link.display(), wrapper.display()))?;
        let script = dir.path().join("rce-guard-crun-env");
        let env = oci_version_override
            .map(|v| format!("RCE_GUARD_OCI_VERSION_OVERRIDE={v} "))
            .unwrap_or_default();
        std::fs::write(
            &script,
            format!("#!/bin/sh\n{env}exec {} \"$@\"\n", link.display()),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", script.display()))?;
        Ok(CrunWrapper { dir })
    }

    /// What to give containerd as the handler's `BinaryName`.
    pub fn binary_name(&self) -> PathBuf {
        self.dir.path().join("rce-guard-crun-env")
    }
}

/// An agent config file (TOML) in a temporary directory that lives as long as the value.
pub struct AgentConfigFile {
    dir: tempfile::TempDir,
}

impl AgentConfigFile {
    pub fn new(toml: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("rg-cfg-")
            .tempdir_in("/tmp")
            .context("creating the config directory")?;
        std::fs::write(dir.path().join("rce-guard.toml"), toml).context("writing the config")?;
        Ok(AgentConfigFile { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("rce-guard.toml")
    }
}

/// `rce-guard status --admin-socket <agent's> --json`, parsed.
pub fn agent_status(agent: &Agent) -> Result<Value> {
    let socket = agent
        .admin_socket_path()
        .ok_or_else(|| anyhow!("the agent was not started with an admin socket"))?;
    status_json(socket)
}

/// `rce-guard status --json --admin-socket <admin>`, parsed.
pub fn status_json(admin: &Path) -> Result<Value> {
    let bin = agent_binary()?;
    let out = Command::new(&bin)
        .args(["status", "--json", "--admin-socket"])
        .arg(admin)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} status", bin.display()))?;
    if !out.status.success() {
        bail!(
            "rce-guard status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "rce-guard status --json printed no JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The entry of `container_id` in a status document.
pub fn status_entry<'a>(status: &'a Value, container_id: &str) -> Option<&'a Value> {
    status["containers"]
        .as_array()?
        .iter()
        .find(|c| c["container_id"] == container_id)
}
