//! `rce-guard`: the node agent's command line.

use std::process::ExitCode;

use clap::Parser;

use rce_guard::cli::{Cli, Command};
use rce_guard::config::Config;
use rce_guard::{admin, agent, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            logging::init(args.log_format);
            agent::run(args)
        }
        Command::Status(args) => admin::request_status(&args.admin_socket)
            .map(|v| {
                if args.json {
                    println!("{v:#}");
                } else {
                    print!("{}", admin::render_table(&v));
                }
            })
            .map_err(anyhow::Error::from),
        Command::CheckConfig(args) => {
            let cfg = match &args.config {
                Some(p) => Config::load(p),
                None => Ok(Config::default()),
            };
            cfg.map_err(anyhow::Error::from).and_then(|c| {
                print!("{}", toml::to_string_pretty(&c)?);
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on, not a backtrace.
            eprintln!("rce-guard: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes whose text the message already
/// contains (many of our errors name their cause themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.replace('\n', " ")
}
