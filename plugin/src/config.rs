//! The agent's configuration: a TOML file (see `config/rce-guard.toml` for the documented
//! default) whose every key has a default, so the agent runs with no file at all.
//!
//! Unknown keys are errors: a typo in a security tool's config must not silently fall back to a
//! default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the monitor does with an exec that matches the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Let the exec run and report it.
    #[default]
    Detect,
    /// Fail the exec with EPERM and report it.
    Block,
    /// Fail the exec, SIGKILL the caller, and report it.
    Kill,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "detect" => Ok(Mode::Detect),
            "block" => Ok(Mode::Block),
            "kill" => Ok(Mode::Kill),
            other => Err(format!(
                "unknown mode {other:?} (expected detect, block or kill)"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Detect => "detect",
            Mode::Block => "block",
            Mode::Kill => "kill",
        })
    }
}

/// What an agent or holder does once a newer one has taken over from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WhenReplaced {
    /// Exit with status 0 (plain hosts, systemd).
    #[default]
    Exit,
    /// Stay idle until SIGTERM (Kubernetes: an exited container would be restarted).
    Wait,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub nri: NriConfig,
    pub monitor: MonitorSection,
    pub injection: InjectionConfig,
    pub rule: RuleConfig,
    pub sinks: SinksConfig,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `VM_Instance_Name` of findings. Empty: `$NODE_NAME`, else the host name.
    pub name: String,
    /// Full resource name of the cluster, e.g.
    /// `//container.googleapis.com/projects/P/locations/L/clusters/C`. Empty: omitted.
    pub cluster_resource_name: String,
    /// Project display name, copied into findings when set.
    pub project_display_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NriConfig {
    pub socket: PathBuf,
    pub plugin_name: String,
    /// Two digits; decides our order among NRI plugins.
    pub plugin_index: String,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            socket: PathBuf::from("/var/run/nri/nri.sock"),
            plugin_name: "rce-guard".into(),
            plugin_index: "10".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// Unix socket that runc/crun connect to with the seccomp listener fd (`listenerPath`).
    pub listener: PathBuf,
    /// Threads that answer notifications.
    pub workers: usize,
    /// Keep listener fds in the separate `rce-guard-holder` process, so that a crash, restart
    /// or upgrade of the agent breaks no exec. Off: the agent serves `listener` itself and its
    /// death makes every later exec in watched containers fail with ENOSYS.
    pub holder: bool,
    /// The holder's control socket.
    pub holder_socket: PathBuf,
    /// Start `rce-guard-holder` when none answers on `holder_socket`. Off where the holder runs
    /// as its own container (the DaemonSet): a holder started by the agent would die with the
    /// agent's container.
    pub start_holder: bool,
    /// When another agent takes over (upgrade): `exit`, or `wait` (stop judging and stay idle
    /// until SIGTERM, so that kubelet does not restart the old pod's agent into a fight over
    /// the holder).
    pub when_replaced: WhenReplaced,
    /// Default action for an exec that matches the rule.
    pub mode: Mode,
    /// Whether the pod annotation `rce-guard.io/mode` may make a pod *less* strict than `mode`.
    /// It can always make it stricter.
    pub allow_relaxing_by_annotation: bool,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            listener: PathBuf::from("/run/rce-guard/monitor.sock"),
            workers: 2,
            holder: true,
            holder_socket: PathBuf::from("/run/rce-guard/holder.sock"),
            start_holder: true,
            when_replaced: WhenReplaced::Exit,
            mode: Mode::Detect,
            allow_relaxing_by_annotation: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectionConfig {
    /// Pods in these namespaces get no seccomp notify rule.
    pub exclude_namespaces: Vec<String>,
    /// Whether a pod annotated `rce-guard.io/monitor: "false"` is left alone.
    pub allow_opt_out: bool,
    /// Pod label selector of the agent's own pod (never injected: it would trap itself).
    pub agent_pod_labels: BTreeMap<String, String>,
    /// Seconds after a container started by which its listener fd must have arrived.
    pub coverage_grace_secs: u64,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        InjectionConfig {
            exclude_namespaces: Vec::new(),
            allow_opt_out: true,
            agent_pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                "rce-guard".into(),
            )]),
            coverage_grace_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Also report AF_UNIX sockets on stdio (off: socketpairs are everywhere).
    pub unix_sockets: bool,
    /// Program names (basename or busybox applet name) that make a finding CRITICAL rather than
    /// HIGH: shells, interpreters, network and recon tools. Replaces the built-in list when set.
    pub common_commands: Option<Vec<String>>,
    /// Added to the built-in (or replaced) list.
    pub extra_common_commands: Vec<String>,
    /// Execs that are never reported (inetd-style services, socat EXEC:, CGI servers).
    pub exceptions: Vec<ExceptionConfig>,
    /// Identical findings within this many seconds are merged into one with a count.
    pub dedup_window_secs: u64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            unix_sockets: false,
            common_commands: None,
            extra_common_commands: Vec::new(),
            exceptions: Vec::new(),
            dedup_window_secs: 60,
        }
    }
}

/// One exception: every criterion given must match (empty criteria match everything, but an
/// exception with no criterion at all is rejected as a likely mistake).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Free text shown in logs when the exception applies.
    pub description: String,
    pub namespaces: Vec<String>,
    pub pod_labels: BTreeMap<String, String>,
    /// Globs over the image reference.
    pub images: Vec<String>,
    /// Globs over the program path inside the container.
    pub programs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// One JSON finding per line on stdout.
    pub stdout: bool,
    /// Append-only findings file (JSON lines). Empty: none.
    pub file: Option<PathBuf>,
    pub file_max_bytes: u64,
    /// Rotated files kept (`findings.jsonl.1` ...).
    pub file_keep: usize,
    /// Findings waiting for slow sinks; beyond this they are counted and logged as lost.
    pub queue: usize,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            stdout: true,
            file: None,
            file_max_bytes: 64 << 20,
            file_keep: 5,
            queue: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Local socket that `rce-guard status` talks to.
    pub socket: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("/run/rce-guard/admin.sock"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            // toml's message spans several lines with a caret; one line is what an operator
            // reading a crash-looping pod's log needs.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let idx = &self.nri.plugin_index;
        if idx.len() != 2 || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return bad(format!(
                "nri.plugin_index must be exactly two digits, got {idx:?}"
            ));
        }
        let name = &self.nri.plugin_name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
        {
            return bad(format!(
                "nri.plugin_name must be non-empty [A-Za-z0-9_.+-], got {name:?}"
            ));
        }
        for (what, p) in [
            ("monitor.listener", &self.monitor.listener),
            ("monitor.holder_socket", &self.monitor.holder_socket),
            ("admin.socket", &self.admin.socket),
            ("nri.socket", &self.nri.socket),
        ] {
            if !p.is_absolute() {
                return bad(format!(
                    "{what} must be an absolute path, got {}",
                    p.display()
                ));
            }
            // sun_path is 108 bytes including the terminating NUL.
            if p.as_os_str().len() >= 108 {
                return bad(format!(
                    "{what} is longer than a unix socket path may be (107 bytes)"
                ));
            }
        }
        if self.monitor.workers == 0 || self.monitor.workers > 64 {
            return bad(format!(
                "monitor.workers must be 1..=64, got {}",
                self.monitor.workers
            ));
        }
        if self.sinks.queue == 0 {
            return bad("sinks.queue must be at least 1".into());
        }
        if self.sinks.file.is_some() && self.sinks.file_max_bytes < 4096 {
            return bad("sinks.file_max_bytes must be at least 4096".into());
        }
        for (i, ex) in self.rule.exceptions.iter().enumerate() {
            if ex.namespaces.is_empty()
                && ex.pod_labels.is_empty()
                && ex.images.is_empty()
                && ex.programs.is_empty()
            {
                return bad(format!(
                    "rule.exceptions[{i}] has no criterion: it would disable detection everywhere"
                ));
            }
            for g in ex.images.iter().chain(&ex.programs) {
                if let Err(e) = globset::Glob::new(g) {
                    return bad(format!("rule.exceptions[{i}]: bad glob {g:?}: {e}"));
                }
            }
        }
        Ok(())
    }

    /// The node name for findings: config, else `$NODE_NAME` (set from the downward API in the
    /// DaemonSet), else the host name.
    pub fn node_name(&self) -> String {
        if !self.node.name.is_empty() {
            return self.node.name.clone();
        }
        if let Ok(n) = std::env::var("NODE_NAME") {
            if !n.is_empty() {
                return n;
            }
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_file_parses_and_equals_defaults() {
        let text = include_str!("../../config/rce-guard.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_a_clear_one_line_error() {
        let err = Config::parse("[monitor]\nmdoe = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mdoe"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("[nri]\nplugin_index = \"7\"", "two digits"),
            ("[monitor]\nmode = \"audit\"", "audit"),
            ("[monitor]\nlistener = \"rel/path.sock\"", "absolute"),
            ("[monitor]\nworkers = 0", "workers"),
            ("[[rule.exceptions]]\ndescription = \"x\"", "no criterion"),
            ("[[rule.exceptions]]\nimages = [\"[\"]", "bad glob"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    fn mode_order_is_strictness() {
        assert!(Mode::Detect < Mode::Block && Mode::Block < Mode::Kill);
        assert_eq!("BLOCK".parse::<Mode>().unwrap(), Mode::Block);
    }
}
