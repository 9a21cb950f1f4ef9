//! `rce-guard-runc`: an OCI runtime wrapper that containerd runs instead of runc (its
//! `BinaryName`), for runtimes that cannot take NRI's seccomp adjustment.
//!
//! On `create` and `run`, if the bundle's spec carries the plugin's
//! [`SECCOMP_NOTIFY_ANNOTATION`](crate::policy::SECCOMP_NOTIFY_ANNOTATION), the wrapper merges the
//! exec notify rule into `config.json` (the same merge as the NRI path) and rewrites it
//! atomically. Then, for every command, it replaces itself (`execv`) with the real runtime and
//! the unchanged argument list: the shim waits on this very pid.
//!
//! Synchronous and small on purpose: it sits on the path of every runtime call. Commands other
//! than `create`/`run` read nothing. A `create` whose merge fails is refused with one line on
//! stderr and in the runtime log, rather than started unmonitored.
//!
//! [`args`] reads the command line, [`real_runtime`] finds the runtime to exec, [`spec_patch`]
//! changes the spec, [`bundle`] reads and rewrites it, [`runtime_log`] writes to `--log`.

pub mod args;
pub mod bundle;
pub mod real_runtime;
pub mod runtime_log;
pub mod spec_patch;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use thiserror::Error;

use crate::policy::seccomp::HostArch;
use args::Invocation;
use runtime_log::Level;
use spec_patch::{PatchOptions, SeccompChange};

/// Path or name of the real runtime (overrides the choice by the wrapper's own name).
pub const ENV_REAL_RUNTIME: &str = "RCE_GUARD_REAL_RUNTIME";
/// Rewrite `ociVersion` on `create` (e.g. `1.0.2` for bookworm's crun 1.8.1).
pub const ENV_OCI_VERSION_OVERRIDE: &str = "RCE_GUARD_OCI_VERSION_OVERRIDE";
/// The wrapper's own help; plain `--help` belongs to the real runtime.
pub const HELP_FLAG: &str = "--rce-guard-help";

/// The environment the wrapper reads, gathered once (and built by hand in tests).
#[derive(Debug, Clone, Default)]
pub struct WrapperEnv {
    pub real_runtime: Option<OsString>,
    pub oci_version_override: Option<String>,
    pub path: Option<OsString>,
}

impl WrapperEnv {
    pub fn from_process() -> Self {
        WrapperEnv {
            real_runtime: std::env::var_os(ENV_REAL_RUNTIME),
            oci_version_override: std::env::var(ENV_OCI_VERSION_OVERRIDE)
                .ok()
                .filter(|v| !v.is_empty()),
            path: std::env::var_os("PATH"),
        }
    }
}

#[derive(Debug, Error)]
pub enum WrapperError {
    #[error(transparent)]
    RealRuntime(#[from] real_runtime::RealRuntimeError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("{path}: {source}")]
    Patch {
        path: PathBuf,
        source: spec_patch::PatchError,
    },
    #[error("cannot serialize the merged spec: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot run {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    run(std::env::args_os().collect(), &WrapperEnv::from_process())
}

/// Runs the wrapper for `argv` (including `argv[0]`). Returns only on failure or for the
/// wrapper's own help; otherwise the process becomes the real runtime.
pub fn run(argv: Vec<OsString>, env: &WrapperEnv) -> ExitCode {
    let argv0 = argv
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from("rce-guard-runc"));
    let rest = argv.get(1..).unwrap_or(&[]);
    let me = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rce-guard-runc".to_string());

    if rest.len() == 1 && rest[0] == HELP_FLAG {
        print!("{}", help_text(&me));
        return ExitCode::SUCCESS;
    }

    let inv = args::parse(rest);
    let real = match real_runtime::resolve(
        env.real_runtime.as_deref(),
        &argv0,
        env.path.as_deref(),
        real_runtime::FileId::current_exe(),
    ) {
        Ok(path) => path,
        Err(e) => return fail(&me, &inv, &e.into()),
    };

    if inv.creates_container() {
        match prepare_bundle(&inv, env) {
            Ok(None) => {}
            Ok(Some(warning)) => {
                if let Some(log) = &inv.log {
                    let msg = format!("{me}: {warning}");
                    runtime_log::append(log, inv.log_format.as_deref(), Level::Warning, &msg);
                }
            }
            Err(e) => return fail(&me, &inv, &e),
        }
    }

    let source = Command::new(&real).arg0(&real).args(rest).exec();
    fail(&me, &inv, &WrapperError::Exec { path: real, source })
}

/// Merges our rule into the bundle's spec when asked to. Returns a warning to log when the
/// container will run unmonitored although the plugin asked for monitoring.
pub fn prepare_bundle(inv: &Invocation, env: &WrapperEnv) -> Result<Option<String>, WrapperError> {
    let path = bundle::config_path(inv.bundle.as_deref(), inv.config.as_deref());
    let mut spec = bundle::read_spec(&path)?;
    let opts = PatchOptions {
        host: HostArch::current(),
        oci_version_override: env.oci_version_override.as_deref(),
    };
    let report = spec_patch::patch_spec(&mut spec, opts).map_err(|source| WrapperError::Patch {
        path: path.clone(),
        source,
    })?;
    if report.changed() {
        let bytes = serde_json::to_vec(&spec).map_err(WrapperError::Serialize)?;
        bundle::write_atomically(&path, &bytes)?;
    }
    Ok(match report.seccomp {
        SeccompChange::LeftAlone(why) => Some(format!(
            "container {} runs without the rce-guard exec monitor: {why}",
            inv.container_id.as_deref().unwrap_or("?")
        )),
        _ => None,
    })
}

/// Reports a failure on stderr and in the runtime log, and gives the exit code.
fn fail(me: &str, inv: &Invocation, err: &WrapperError) -> ExitCode {
    let msg = match (&inv.command, err) {
        (_, WrapperError::Exec { .. } | WrapperError::RealRuntime(_)) => format!("{me}: {err}"),
        (Some(cmd), _) => format!(
            "{me}: {cmd} {}: {err}; the container is not started, so that it does not run \
             without the exec monitor",
            inv.container_id.as_deref().unwrap_or("?")
        ),
        (None, _) => format!("{me}: {err}"),
    };
    eprintln!("{msg}");
    if let Some(log) = &inv.log {
        runtime_log::append(log, inv.log_format.as_deref(), Level::Error, &msg);
    }
    ExitCode::from(1)
}

fn help_text(me: &str) -> String {
    let runtime = real_runtime::runtime_name(OsStr::new(me)).unwrap_or_else(|| "runc".into());
    format!(
        "{me}: rce-guard's OCI runtime wrapper (runs {runtime} after preparing the bundle)

containerd runs it in place of {runtime}: set the runtime's BinaryName to this file (see
config/containerd/ in the rce-guard sources). On `create` and `run`, when the container's spec
carries the annotation {ann} (added by the rce-guard NRI plugin), it merges a seccomp rule
that sends execve/execveat to the rce-guard monitor into <bundle>/config.json, keeping the
container's own profile, and rewrites the file atomically. Pod sandbox containers are never
touched. Then it execs the real runtime with the same arguments. All other commands, and plain
--help/--version, go straight to the real runtime.

If the rule cannot be merged, `create` fails with one line on stderr and in the runtime's --log
file: a container the plugin asked to monitor never runs unmonitored because of the wrapper.

Environment:
  {real}   path or name of the real runtime (default: from this file's
                            name, rce-guard-runc -> runc, rce-guard-crun -> crun, looked
                            up on PATH without this file, then /usr/sbin, /usr/bin)
  {oci}   rewrite ociVersion on create (e.g. 1.0.2 for crun 1.8.1
                            with specs from containerd 2.1)
",
        ann = crate::policy::SECCOMP_NOTIFY_ANNOTATION,
        real = ENV_REAL_RUNTIME,
        oci = ENV_OCI_VERSION_OVERRIDE,
    )
}
