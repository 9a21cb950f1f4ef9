//! Reads just enough of a runc/crun command line to find the subcommand and the bundle.
//!
//! The wrapper never changes the arguments; it only needs to know whether this is `create`
//! (or `run`), where the bundle is, and where the runtime log goes. Flags are accepted in the
//! spellings Go's flag package and argp both take (`--flag value`, `--flag=value`, `-flag
//! value`, `-b value`, `-bvalue`). A flag this parser does not know is taken as a boolean: the
//! shim passes only flags listed here, and a misread of an unknown flag costs at most a missed
//! `create` (which the agent's coverage check reports), never an altered command line.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Global flags (before the subcommand) that take a value, runc's and crun's.
const GLOBAL_VALUE_FLAGS: &[&str] = &[
    "root",
    "log",
    "log-format",
    "log-level",
    "criu",
    "rootless",
    "cgroup-manager",
];

/// `create`/`run` flags that take a value (runc 1.1-1.3 and crun).
const CREATE_VALUE_FLAGS: &[&str] = &[
    "bundle",
    "b",
    "console-socket",
    "pid-file",
    "preserve-fds",
    "pidfd-socket",
    "config",
    "f",
];

/// Short `create` flags whose value may be glued on (`-b/path`), as argp allows.
const GLUED_SHORT_FLAGS: &[u8] = b"bf";

/// What the wrapper needs to know about one invocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--log`: the runtime's log file, where containerd looks for the error of a failed call.
    pub log: Option<PathBuf>,
    /// `--log-format` (`text` or `json`).
    pub log_format: Option<String>,
    /// The subcommand (`create`, `start`, `state`, ...), if any.
    pub command: Option<String>,
    /// `--bundle`/`-b` of `create`/`run`.
    pub bundle: Option<PathBuf>,
    /// crun's `--config`/`-f` of `create`/`run` (relative to the bundle).
    pub config: Option<PathBuf>,
    /// The container id of `create`/`run`.
    pub container_id: Option<String>,
}

impl Invocation {
    /// True for the subcommands that load the bundle's `config.json`.
    pub fn creates_container(&self) -> bool {
        matches!(self.command.as_deref(), Some("create" | "run"))
    }
}

/// A token split into flag name and glued value, or `None` for a positional argument.
fn split_flag(token: &OsStr) -> Option<(&[u8], Option<&[u8]>)> {
    let bytes = token.as_bytes();
    let body = bytes
        .strip_prefix(b"--")
        .or_else(|| bytes.strip_prefix(b"-"))?;
    if body.is_empty() {
        return None; // "-" (stdin) or "--" are handled by the caller.
    }
    Some(match body.iter().position(|&b| b == b'=') {
        Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
        None => (body, None),
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Parses the arguments after `argv[0]`. Never fails: anything it does not understand is left
/// to the real runtime.
pub fn parse(args: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let mut i = 0;

    // Global flags, up to the subcommand.
    while i < args.len() {
        let token = &args[i];
        i += 1;
        if token.as_bytes() == b"--" {
            break;
        }
        let Some((name, glued)) = split_flag(token) else {
            inv.command = Some(token.to_string_lossy().into_owned());
            break;
        };
        if !GLOBAL_VALUE_FLAGS.iter().any(|f| f.as_bytes() == name) {
            continue;
        }
        let value = match glued {
            Some(v) => v,
            None => {
                let Some(v) = args.get(i) else { break };
                i += 1;
                v.as_bytes()
            }
        };
        match name {
            b"log" => inv.log = Some(path(value)),
            b"log-format" => inv.log_format = Some(text(value)),
            _ => {}
        }
    }

    if !inv.creates_container() {
        return inv;
    }

    // `create`/`run` flags and the container id (argp permutes, so flags may follow the id).
    while i < args.len() {
        let token = &args[i];
        i += 1;
        if token.as_bytes() == b"--" {
            if inv.container_id.is_none() {
                inv.container_id = args.get(i).map(|a| a.to_string_lossy().into_owned());
            }
            break;
        }
        let Some((name, glued)) = split_flag(token) else {
            if inv.container_id.is_none() {
                inv.container_id = Some(token.to_string_lossy().into_owned());
            }
            continue;
        };
        let (name, glued) = if CREATE_VALUE_FLAGS.iter().any(|f| f.as_bytes() == name) {
            (name, glued)
        } else if token.as_bytes()[1] != b'-'
            && name.len() > 1
            && GLUED_SHORT_FLAGS.contains(&name[0])
            && glued.is_none()
        {
            (&name[..1], Some(&name[1..]))
        } else {
            continue;
        };
        let value = match glued {
            Some(v) => v,
            None => {
                let Some(v) = args.get(i) else { break };
                i += 1;
                v.as_bytes()
            }
        };
        match name {
            b"bundle" | b"b" => inv.bundle = Some(path(value)),
            b"config" | b"f" => inv.config = Some(path(value)),
            _ => {}
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Invocation {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn shim_create_command_line() {
        // As containerd-shim-runc-v2 calls it.
        let inv = p(&[
            "--root",
            "/run/containerd/runc/k8s.io",
            "--log",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc",
            "--pid-file",
            "/run/x/init.pid",
            "--console-socket",
            "/tmp/pty.sock",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "2",
            "abc",
        ]);
        assert_eq!(inv.command.as_deref(), Some("create"));
        assert!(inv.creates_container());
        assert_eq!(
            inv.bundle,
            Some(PathBuf::from(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"
            ))
        );
        assert_eq!(
            inv.log,
            Some(PathBuf::from(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/log.json"
            ))
        );
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn go_and_argp_spellings() {
        let inv = p(&["-root=/r", "--debug", "run", "-b=/b1", "-d", "id1"]);
        assert_eq!(inv.command.as_deref(), Some("run"));
        assert_eq!(inv.bundle, Some(PathBuf::from("/b1")));
        assert_eq!(inv.container_id.as_deref(), Some("id1"));

        let inv = p(&["create", "-b/glued", "-fother.json", "id2"]);
        assert_eq!(inv.bundle, Some(PathBuf::from("/glued")));
        assert_eq!(inv.config, Some(PathBuf::from("other.json")));

        let inv = p(&["create", "id3", "--bundle=/after/id"]);
        assert_eq!(inv.bundle, Some(PathBuf::from("/after/id")));
        assert_eq!(inv.container_id.as_deref(), Some("id3"));
    }

    #[test]
    fn no_bundle_means_the_current_directory() {
        let inv = p(&["create", "id"]);
        assert_eq!(inv.bundle, None);
        assert_eq!(inv.container_id.as_deref(), Some("id"));
    }

    #[test]
    fn other_commands_are_not_creates() {
        for args in [
            &["--root", "/r", "state", "abc"][..],
            &["delete", "--force", "abc"],
            &["--version"],
            &["--help"],
            &[],
            &["exec", "--process", "/p.json", "abc"],
        ] {
            let inv = p(args);
            assert!(!inv.creates_container(), "{args:?}");
            assert_eq!(inv.bundle, None);
        }
        assert_eq!(
            p(&["--root", "/r", "state", "x"]).command.as_deref(),
            Some("state")
        );
    }

    #[test]
    fn a_global_value_flag_does_not_swallow_the_subcommand() {
        // "create" here is the value of --root, not the subcommand.
        let inv = p(&["--root", "create", "state", "x"]);
        assert_eq!(inv.command.as_deref(), Some("state"));
    }

    #[test]
    fn truncated_command_lines_do_not_panic() {
        for args in [
            &["--log"][..],
            &["create", "--bundle"],
            &["create", "-b"],
            &["-"],
            &["--", "create"],
            &["create", "--", "id"],
        ] {
            let _ = p(args);
        }
        assert_eq!(
            p(&["create", "--", "id"]).container_id.as_deref(),
            Some("id")
        );
    }
}
