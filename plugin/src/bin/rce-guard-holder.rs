//! `rce-guard-holder`: keeps every seccomp listener fd alive across restarts and upgrades of
//! the agent. See the README section "Restarts and upgrades".

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use rce_guard::holder::server::raise_fd_limit;
use rce_guard::holder::{Holder, HolderConfig};

#[derive(Parser)]
#[command(
    name = "rce-guard-holder",
    version,
    about = "Holds seccomp listener fds so that the rce-guard agent can restart without breaking exec in containers",
    long_about = "Owns runc's listenerPath socket and a copy of every seccomp listener fd that runc \
        hands over, and forwards each to the agent (the judge) over the control socket. If the \
        agent dies, execs in monitored containers wait in the kernel until an agent connects \
        again; none fails. Starting a second holder on the same sockets takes everything over \
        from the running one (upgrade) and the old one exits. The agent starts a holder by \
        itself when none runs."
)]
struct Args {
    /// After a newer holder took everything over: exit, or wait (idle until SIGTERM; use it
    /// under Kubernetes, where an exited container is restarted and would take over back).
    #[arg(long, value_enum, default_value = "exit")]
    when_replaced: rce_guard::config::WhenReplaced,
    /// runc's listenerPath (where runc hands over listener fds).
    #[arg(long, default_value = "/run/rce-guard/monitor.sock")]
    listener: PathBuf,
    /// Control socket the agent connects to.
    #[arg(long, default_value = "/run/rce-guard/holder.sock")]
    control: PathBuf,
    /// Most listener fds held at once; handovers beyond it are refused (container creation fails).
    #[arg(long, default_value_t = 16_384)]
    max_entries: usize,
    /// Log as JSON lines on stderr.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if args.log_json {
        b.json().init();
    } else {
        b.init();
    }
    // Every held entry is an fd: keep room for the sockets and for the copies sent to a judge.
    let fd_limit = raise_fd_limit();
    let fits = usize::try_from(fd_limit.saturating_sub(64)).unwrap_or(usize::MAX);
    if fits < args.max_entries {
        tracing::warn!(
            fd_limit,
            max_entries = fits,
            "the open-file limit caps how many listener fds this holder can keep"
        );
    }
    let cfg = HolderConfig {
        listener: args.listener,
        control: args.control,
        max_entries: args.max_entries.min(fits),
        handover_timeout: Duration::from_secs(5),
    };
    match Holder::start(cfg).and_then(Holder::run) {
        Ok(()) if args.when_replaced == rce_guard::config::WhenReplaced::Wait => {
            tracing::info!("handed over to a newer holder; idle until SIGTERM");
            loop {
                std::thread::park();
            }
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rce-guard-holder: error: {e}");
            ExitCode::FAILURE
        }
    }
}
