//! Finds the real OCI runtime that the wrapper hands over to.
//!
//! `RCE_GUARD_REAL_RUNTIME` (a path, or a name looked up on `PATH`) wins. Otherwise the name
//! comes from the wrapper's own file name: `rce-guard-runc` runs `runc`, `rce-guard-crun` runs
//! `crun`, and a wrapper installed under the runtime's own name (`runc` earlier on `PATH`) runs
//! the next `runc`. The wrapper itself is never chosen: that would exec in a loop.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Prefix of the wrapper's file names.
pub const WRAPPER_PREFIX: &str = "rce-guard-";

/// Where a runtime is looked for when `PATH` does not have it.
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/usr/bin"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RealRuntimeError {
    #[error("cannot tell which runtime to run from the wrapper's name {0:?}; set RCE_GUARD_REAL_RUNTIME")]
    NoName(OsString),
    #[error("RCE_GUARD_REAL_RUNTIME={0:?} is the wrapper itself")]
    IsTheWrapper(PathBuf),
    #[error("RCE_GUARD_REAL_RUNTIME={0:?} is not an executable file")]
    NotExecutable(PathBuf),
    #[error("no {name:?} other than the wrapper on PATH or in /usr/sbin, /usr/bin; set RCE_GUARD_REAL_RUNTIME")]
    NotFound { name: String },
}

/// A file's identity, to recognise the wrapper under any path or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file `path` resolves to.
    pub fn of(path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The running executable.
    pub fn current_exe() -> Option<FileId> {
        FileId::of(Path::new("/proc/self/exe"))
    }
}

/// The runtime name the wrapper stands in for, from its own file name.
pub fn runtime_name(argv0: &OsStr) -> Option<String> {
    let file = Path::new(argv0).file_name()?.to_str()?;
    let name = file.strip_prefix(WRAPPER_PREFIX).unwrap_or(file);
    (!name.is_empty()).then(|| name.to_string())
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn usable(path: &Path, wrapper: Option<FileId>) -> bool {
    is_executable_file(path) && (wrapper.is_none() || FileId::of(path) != wrapper)
}

/// Searches `name` in `path_var` then the fallback directories, skipping the wrapper.
fn search(name: &str, path_var: Option<&OsStr>, wrapper: Option<FileId>) -> Option<PathBuf> {
    let from_path = path_var
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .filter(|dir| dir.is_absolute());
    from_path
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| usable(candidate, wrapper))
}

/// Resolves the real runtime. `wrapper` is the identity of the running wrapper binary.
pub fn resolve(
    override_var: Option<&OsStr>,
    argv0: &OsStr,
    path_var: Option<&OsStr>,
    wrapper: Option<FileId>,
) -> Result<PathBuf, RealRuntimeError> {
    if let Some(wanted) = override_var.filter(|v| !v.is_empty()) {
        let wanted_path = Path::new(wanted);
        if wanted_path.components().count() > 1 || wanted_path.is_absolute() {
            if !is_executable_file(wanted_path) {
                return Err(RealRuntimeError::NotExecutable(wanted_path.to_path_buf()));
            }
            if wrapper.is_some() && FileId::of(wanted_path) == wrapper {
                return Err(RealRuntimeError::IsTheWrapper(wanted_path.to_path_buf()));
            }
            return Ok(wanted_path.to_path_buf());
        }
        let name = wanted.to_string_lossy().into_owned();
        return search(&name, path_var, wrapper).ok_or(RealRuntimeError::NotFound { name });
    }
    let name = runtime_name(argv0).ok_or_else(|| RealRuntimeError::NoName(argv0.to_owned()))?;
    search(&name, path_var, wrapper).ok_or(RealRuntimeError::NotFound { name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn names_from_the_wrapper_file_name() {
        assert_eq!(
            runtime_name(OsStr::new("/usr/local/bin/rce-guard-runc")).as_deref(),
            Some("runc")
        );
        assert_eq!(
            runtime_name(OsStr::new("rce-guard-crun")).as_deref(),
            Some("crun")
        );
        assert_eq!(
            runtime_name(OsStr::new("/opt/bin/runc")).as_deref(),
            Some("runc")
        );
        assert_eq!(runtime_name(OsStr::new("rce-guard-")), None);
        assert_eq!(runtime_name(OsStr::new("")), None);
    }

    #[test]
    fn path_search_skips_the_wrapper_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("first");
        let second = tmp.path().join("second");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        // The wrapper installed as "runc" early on PATH, the real one later.
        exe(&first.join("runc"));
        exe(&second.join("runc"));
        let wrapper = FileId::of(&first.join("runc"));
        let path_var = std::env::join_paths([&first, &second]).unwrap();
        let found = resolve(None, OsStr::new("runc"), Some(&path_var), wrapper).unwrap();
        assert_eq!(found, second.join("runc"));

        // A symlink to the wrapper is the wrapper too.
        symlink(first.join("runc"), second.join("crun")).unwrap();
        let real_crun = tmp.path().join("third");
        std::fs::create_dir_all(&real_crun).unwrap();
        exe(&real_crun.join("crun"));
        let path_var = std::env::join_paths([&second, &real_crun]).unwrap();
        let found = resolve(None, OsStr::new("rce-guard-crun"), Some(&path_var), wrapper).unwrap();
        assert_eq!(found, real_crun.join("crun"));
    }

    #[test]
    fn override_by_path_and_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("my-runc");
        exe(&real);
        let wrapper_path = tmp.path().join("rce-guard-runc");
        exe(&wrapper_path);
        let wrapper = FileId::of(&wrapper_path);

        let found = resolve(
            Some(real.as_os_str()),
            OsStr::new("rce-guard-runc"),
            None,
            wrapper,
        );
        assert_eq!(found.unwrap(), real);
        let by_name = resolve(
            Some(OsStr::new("my-runc")),
            OsStr::new("x"),
            Some(tmp.path().as_os_str()),
            wrapper,
        );
        assert_eq!(by_name.unwrap(), real);
        assert_eq!(
            resolve(
                Some(wrapper_path.as_os_str()),
                OsStr::new("x"),
                None,
                wrapper
            ),
            Err(RealRuntimeError::IsTheWrapper(wrapper_path.clone()))
        );
        let missing = tmp.path().join("nope");
        assert_eq!(
            resolve(Some(missing.as_os_str()), OsStr::new("x"), None, wrapper),
            Err(RealRuntimeError::NotExecutable(missing))
        );
    }

    #[test]
    fn unknown_runtime_is_an_error_not_a_guess() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve(
            None,
            OsStr::new("rce-guard-no-such-runtime-here"),
            Some(tmp.path().as_os_str()),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RealRuntimeError::NotFound {
                name: "no-such-runtime-here".into()
            }
        );
    }
}
