//! The rule: is this exec a possible remote command execution, how bad is it, and what do we
//! do about it. Pure logic: an [`ExecEvent`] and a [`ContainerIdentity`] in, a [`Decision`] out.

use std::collections::{BTreeMap, HashSet};

use globset::{Glob, GlobMatcher};

use crate::config::{Mode, MonitorSection, RuleConfig};
use crate::exec_event::{ExecEvent, SocketFamily, StdioKind};
use crate::identity::ContainerIdentity;
use crate::verdict::Action;

/// Pod annotation that selects the mode for one pod.
pub const MODE_ANNOTATION: &str = "rce-guard.io/mode";

/// Programs whose exec over a socket is the classic reverse shell or its first steps: shells,
/// interpreters, network tools, and the commands an intruder runs first.
pub const BUILTIN_COMMON_COMMANDS: &[&str] = &[
    // shells
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox",
    // interpreters (version suffixes like python3.11 are stripped before matching)
    "python", "perl", "ruby", "php", "lua", "node", "nodejs", "tclsh", "awk", "gawk",
    // network tools
    "nc", "ncat", "netcat", "socat", "telnet", "curl", "wget", "ssh", "scp", "openssl",
    // recon and tampering
    "id", "whoami", "uname", "hostname", "cat", "ls", "ps", "env", "printenv", "pwd", "ifconfig",
    "ip", "netstat", "ss", "ping", "find", "grep", "sed", "head", "tail", "base64", "chmod",
    "chown", "cp", "mv", "rm", "mkdir", "touch", "echo", "kill", "tar", "dd", "nslookup", "dig",
    "which", "mount", "crontab", "useradd", "passwd", "sudo", "su",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    High,
    Critical,
}

/// The outcome for one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to answer the kernel.
    pub action: Action,
    /// Whether this exec is reported.
    pub report: bool,
    pub severity: Severity,
    /// The program (by path basename or argv[0]) is in the common-commands list.
    pub common_command: bool,
    /// Which of fds 0, 1, 2 made it match.
    pub matched_fds: Vec<usize>,
    /// The exception that suppressed it, if any.
    pub exception: Option<String>,
}

impl Decision {
    fn allow() -> Self {
        Decision {
            action: Action::Allow,
            report: false,
            severity: Severity::High,
            common_command: false,
            matched_fds: Vec::new(),
            exception: None,
        }
    }
}

struct Exception {
    description: String,
    namespaces: Vec<String>,
    pod_labels: BTreeMap<String, String>,
    images: Vec<GlobMatcher>,
    programs: Vec<GlobMatcher>,
}

impl Exception {
    fn matches(&self, id: &ContainerIdentity, ev: &ExecEvent) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&id.pod_namespace))
            && self
                .pod_labels
                .iter()
                .all(|(k, v)| id.pod_labels.get(k) == Some(v))
            && (self.images.is_empty() || self.images.iter().any(|g| g.is_match(&id.image)))
            && (self.programs.is_empty() || self.programs.iter().any(|g| g.is_match(&ev.program)))
    }
}

/// The compiled rule.
pub struct Rule {
    unix_sockets: bool,
    common: HashSet<String>,
    exceptions: Vec<Exception>,
    mode: Mode,
    allow_relaxing: bool,
}

impl Rule {
    /// Builds the rule; the config was validated already, so globs compile.
    pub fn new(rule: &RuleConfig, monitor: &MonitorSection) -> Result<Rule, globset::Error> {
        let mut common: HashSet<String> = match &rule.common_commands {
            Some(list) => list.iter().cloned().collect(),
            None => BUILTIN_COMMON_COMMANDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        common.extend(rule.extra_common_commands.iter().cloned());
        let glob = |g: &String| Glob::new(g).map(|g| g.compile_matcher());
        let exceptions = rule
            .exceptions
            .iter()
            .map(|e| {
                Ok(Exception {
                    description: e.description.clone(),
                    namespaces: e.namespaces.clone(),
                    pod_labels: e.pod_labels.clone(),
                    images: e.images.iter().map(glob).collect::<Result<_, _>>()?,
                    programs: e.programs.iter().map(glob).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, globset::Error>>()?;
        Ok(Rule {
            unix_sockets: rule.unix_sockets,
            common,
            exceptions,
            mode: monitor.mode,
            allow_relaxing: monitor.allow_relaxing_by_annotation,
        })
    }

    /// The mode for a pod: the configured one, made stricter (or, when allowed, less strict)
    /// by the pod's `rce-guard.io/mode` annotation. A malformed annotation is ignored.
    pub fn mode_for(&self, id: &ContainerIdentity) -> Mode {
        match id
            .pod_annotations
            .get(MODE_ANNOTATION)
            .and_then(|v| v.parse::<Mode>().ok())
        {
            Some(m) if m > self.mode || self.allow_relaxing => m,
            _ => self.mode,
        }
    }

    fn socket_matches(&self, fd: &StdioKind) -> bool {
        match fd {
            StdioKind::Socket {
                family: SocketFamily::Unix,
                ..
            } => self.unix_sockets,
            other => other.is_network_socket(),
        }
    }

    /// True when the program (by path basename or argv[0]) is a common UNIX command.
    pub fn is_common_command(&self, ev: &ExecEvent) -> bool {
        let by_path = basename(&ev.program);
        let by_argv0 = ev.args.first().map(|a| basename(a));
        [Some(by_path), by_argv0]
            .into_iter()
            .flatten()
            .any(|name| self.common.contains(name) || self.common.contains(strip_version(name)))
    }

    /// Cheap pre-check: could any stdio fd match at all? (No identity needed.)
    pub fn stdio_may_match(&self, ev: &ExecEvent) -> bool {
        ev.stdio.iter().any(|fd| self.socket_matches(fd))
    }

    pub fn evaluate(&self, id: &ContainerIdentity, ev: &ExecEvent) -> Decision {
        let matched_fds: Vec<usize> = (0..3)
            .filter(|&i| self.socket_matches(&ev.stdio[i]))
            .collect();
        if matched_fds.is_empty() {
            return Decision::allow();
        }
        if let Some(ex) = self.exceptions.iter().find(|e| e.matches(id, ev)) {
            return Decision {
                matched_fds,
                exception: Some(ex.description.clone()),
                ..Decision::allow()
            };
        }
        let common_command = self.is_common_command(ev);
        let action = match self.mode_for(id) {
            Mode::Detect => Action::Allow,
            Mode::Block => Action::Deny,
            Mode::Kill => Action::Kill,
        };
        Decision {
            action,
            report: true,
            severity: if common_command {
                Severity::Critical
            } else {
                Severity::High
            },
            common_command,
            matched_fds,
            exception: None,
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `python3.11` -> `python`, `perl5.36` -> `perl`; names without a version stay as they are.
fn strip_version(name: &str) -> &str {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExceptionConfig;
    use crate::exec_event::{ExecAbi, ExecSyscall, ProcessInfo, SocketProtocol};

    fn tcp() -> StdioKind {
        StdioKind::Socket {
            family: SocketFamily::Inet,
            protocol: SocketProtocol::Tcp,
            local: Some("10.0.0.2:40000".parse().unwrap()),
            peer: Some("203.0.113.9:4444".parse().unwrap()),
        }
    }

    fn unix() -> StdioKind {
        StdioKind::Socket {
            family: SocketFamily::Unix,
            protocol: SocketProtocol::Stream,
            local: None,
            peer: None,
        }
    }

    fn event(program: &str, argv0: &str, stdio: [StdioKind; 3]) -> ExecEvent {
        let caller = ProcessInfo {
            pid: 10,
            parent_pid: 1,
            exe: "/bin/sh".into(),
            cmdline: vec![],
        };
        ExecEvent {
            syscall: ExecSyscall::Execve,
            abi: ExecAbi::X86_64,
            tid: 10,
            pid: 10,
            parent_pid: 1,
            program: program.into(),
            args: vec![argv0.into()],
            args_truncated: false,
            stdio,
            caller,
            ancestors: vec![],
        }
    }

    fn id(ns: &str) -> ContainerIdentity {
        ContainerIdentity {
            pod_namespace: ns.into(),
            pod_name: "p".into(),
            image: "busybox:1".into(),
            ..Default::default()
        }
    }

    fn rule(mode: Mode, f: impl FnOnce(&mut RuleConfig)) -> Rule {
        let mut rc = RuleConfig::default();
        f(&mut rc);
        let mon = MonitorSection {
            mode,
            ..Default::default()
        };
        Rule::new(&rc, &mon).unwrap()
    }

    #[test]
    fn network_socket_on_any_stdio_fd_matches() {
        let r = rule(Mode::Detect, |_| {});
        for i in 0..3 {
            let mut stdio = [StdioKind::Pipe, StdioKind::Pipe, StdioKind::Pipe];
            stdio[i] = tcp();
            let d = r.evaluate(&id("a"), &event("/bin/ls", "ls", stdio));
            assert!(d.report, "fd {i}");
            assert_eq!(d.matched_fds, vec![i]);
            assert_eq!(d.action, Action::Allow);
        }
    }

    #[test]
    fn pipes_ttys_files_and_unix_sockets_do_not_match_by_default() {
        let r = rule(Mode::Block, |_| {});
        for s in [
            StdioKind::Pipe,
            StdioKind::CharDevice,
            StdioKind::RegularFile,
            StdioKind::Closed,
            unix(),
        ] {
            let d = r.evaluate(&id("a"), &event("/bin/sh", "sh", [s.clone(), s.clone(), s]));
            assert!(!d.report);
            assert_eq!(d.action, Action::Allow);
        }
        let with_unix = rule(Mode::Block, |c| c.unix_sockets = true);
        let d = with_unix.evaluate(
            &id("a"),
            &event("/bin/sh", "sh", [unix(), StdioKind::Pipe, StdioKind::Pipe]),
        );
        assert!(d.report);
        assert_eq!(d.action, Action::Deny);
    }

    #[test]
    fn severity_follows_common_commands_including_busybox_applets_and_versions() {
        let r = rule(Mode::Detect, |_| {});
        let s = [tcp(), tcp(), tcp()];
        assert_eq!(
            r.evaluate(&id("a"), &event("/bin/sh", "sh", s.clone()))
                .severity,
            Severity::Critical
        );
        // busybox applet: path is /bin/busybox (or /proc/self/exe), argv[0] the applet
        assert_eq!(
            r.evaluate(&id("a"), &event("/proc/self/exe", "whoami", s.clone()))
                .severity,
            Severity::Critical
        );
        assert_eq!(
            r.evaluate(
                &id("a"),
                &event("/usr/bin/python3.11", "python3.11", s.clone())
            )
            .severity,
            Severity::Critical
        );
        assert_eq!(
            r.evaluate(&id("a"), &event("/srv/app/worker", "worker", s))
                .severity,
            Severity::High
        );
    }

    #[test]
    fn exceptions_need_every_criterion() {
        let r = rule(Mode::Block, |c| {
            c.exceptions.push(ExceptionConfig {
                description: "inetd".into(),
                namespaces: vec!["legacy".into()],
                programs: vec!["/usr/sbin/in.*".into()],
                ..Default::default()
            })
        });
        let s = [tcp(), tcp(), tcp()];
        let d = r.evaluate(
            &id("legacy"),
            &event("/usr/sbin/in.telnetd", "in.telnetd", s.clone()),
        );
        assert!(!d.report);
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.exception.as_deref(), Some("inetd"));
        // other namespace, or other program: still blocked
        assert_eq!(
            r.evaluate(&id("prod"), &event("/usr/sbin/in.telnetd", "x", s.clone()))
                .action,
            Action::Deny
        );
        assert_eq!(
            r.evaluate(&id("legacy"), &event("/bin/sh", "sh", s)).action,
            Action::Deny
        );
    }

    #[test]
    fn annotation_makes_stricter_but_relaxes_only_when_allowed() {
        let mut strict = id("a");
        strict
            .pod_annotations
            .insert(MODE_ANNOTATION.into(), "kill".into());
        let mut lax = id("a");
        lax.pod_annotations
            .insert(MODE_ANNOTATION.into(), "detect".into());
        let mut junk = id("a");
        junk.pod_annotations
            .insert(MODE_ANNOTATION.into(), "off".into());
        let r = rule(Mode::Block, |_| {});
        assert_eq!(r.mode_for(&strict), Mode::Kill);
        assert_eq!(r.mode_for(&lax), Mode::Block);
        assert_eq!(r.mode_for(&junk), Mode::Block);
        let rc = RuleConfig::default();
        let relaxing = Rule::new(
            &rc,
            &MonitorSection {
                mode: Mode::Block,
                allow_relaxing_by_annotation: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(relaxing.mode_for(&lax), Mode::Detect);
    }
}
