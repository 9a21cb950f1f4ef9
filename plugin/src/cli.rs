//! The command line. Flags override the config file; the config file overrides defaults.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "rce-guard",
    version,
    about = "Catches remote command execution (reverse shells) in containers at execve time",
    long_about = "rce-guard is a containerd NRI plugin plus a seccomp user-notification monitor.\n\
        The plugin adds a seccomp rule to every container that makes execve/execveat wait for \
        the monitor; the monitor checks whether the caller's stdin/stdout/stderr are network \
        sockets, lets the exec run (detect) or fails it (block/kill), and prints a finding \
        shaped like Security Command Center's \"Execution: Possible Remote Command Execution \
        Detected\" as one JSON line on stdout. Logs go to stderr.\n\n\
        The agent must run as root in the host pid namespace (it reads other processes' fds \
        and memory through pidfd and process_vm_readv)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: NRI plugin, seccomp monitor, finding sinks, admin socket.
    Run(RunArgs),
    /// Show the running agent's containers, whether each is monitored, and its counters.
    Status(StatusArgs),
    /// Validate a config file and print the effective configuration (TOML).
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML, see config/rce-guard.toml). Without it every default applies.
    #[arg(long, short = 'c', env = "RCE_GUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// containerd's NRI socket [config: nri.socket; default /var/run/nri/nri.sock].
    #[arg(long)]
    pub nri_socket: Option<PathBuf>,
    /// Do not connect to NRI: monitor only the containers whose runtime hands us a listener
    /// fd (for runtimes configured through the wrapper alone, and for debugging).
    #[arg(long)]
    pub no_nri: bool,
    /// Seccomp listener socket, the listenerPath runc connects to
    /// [config: monitor.listener; default /run/rce-guard/monitor.sock].
    #[arg(long)]
    pub listener: Option<PathBuf>,
    /// Serve the listener socket in this process instead of through rce-guard-holder
    /// (then an agent restart breaks exec in watched containers) [config: monitor.holder].
    #[arg(long)]
    pub no_holder: bool,
    /// The holder's control socket [config: monitor.holder_socket; default /run/rce-guard/holder.sock].
    #[arg(long)]
    pub holder_socket: Option<PathBuf>,
    /// Admin socket for `rce-guard status` [config: admin.socket; default /run/rce-guard/admin.sock].
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// What to do with a matching exec: detect (allow + report), block (EPERM + report),
    /// kill (EPERM + SIGKILL the caller + report) [config: monitor.mode; default detect].
    #[arg(long)]
    pub mode: Option<Mode>,
    /// VM_Instance_Name for findings [config: node.name; default $NODE_NAME or the host name].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Also append findings to this file, rotated by size [config: sinks.file].
    #[arg(long)]
    pub findings_file: Option<PathBuf>,
    /// Log format on stderr. Filter with RUST_LOG (default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The running agent's admin socket.
    #[arg(long, default_value = "/run/rce-guard/admin.sock")]
    pub admin_socket: PathBuf,
    /// Print the raw JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Config file to check; without it the defaults are printed.
    #[arg(long, short = 'c', env = "RCE_GUARD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "rce-guard",
            "run",
            "--mode",
            "block",
            "--log-format",
            "json",
            "--listener",
            "/tmp/x.sock",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.mode, Some(Mode::Block));
        assert_eq!(a.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["rce-guard", "run", "--mode", "audit"]).is_err());
    }
}
