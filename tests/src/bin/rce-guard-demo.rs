//! The README's first command (through `hack/demo.sh`): a private containerd 2.1 on this
//! machine with rce-guard plugged in over NRI and `rce-guard-runc` as its runtime, a busybox pod
//! that opens a reverse shell to a listener of ours on 127.0.0.1, a command typed into that
//! shell, and the finding rce-guard printed for it. Everything is cleaned up afterwards.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rce_guard_e2e::{
    agent_binary, AgentBuilder, ContainerSpec, Containerd, ContainerdOptions, PodSpec,
    ReverseShellListener, Version,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn run() -> Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "detect".into());
    // The agent binaries sit next to this one (target/<profile>/).
    if std::env::var_os("RCE_GUARD_BIN").is_none() {
        let here = std::env::current_exe()?;
        std::env::set_var("RCE_GUARD_BIN", here.with_file_name("rce-guard"));
    }
    let t0 = Instant::now();
    let bin_dir = agent_binary()?
        .parent()
        .context("agent binary has no directory")?
        .to_path_buf();
    let wrapper = bin_dir.join("rce-guard-runc");
    if !wrapper.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace` first",
            wrapper.display()
        );
    }

    step("starting a private containerd 2.1 (NRI on, runc BinaryName = rce-guard-runc)");
    let cd = Containerd::start_with(
        ContainerdOptions::new(Version::V2_1).runc_binary(&wrapper.to_string_lossy()),
    )?;
    println!("    containerd state under {}", cd.dir().display());

    step(&format!(
        "starting rce-guard (mode {mode}) with its fd holder"
    ));
    let agent = AgentBuilder::for_containerd(&cd)
        .mode(&mode)
        .arg("--node-name")
        .arg("demo-node")
        .spawn()?;
    agent.wait_for_message(0, "registered with runtime", &[], Duration::from_secs(10))?;
    println!("    registered with containerd over NRI");

    let mut attacker = ReverseShellListener::new()?;
    step(&format!(
        "attacker listens on {}; a pod runs `{}`",
        attacker.addr(),
        attacker.nc_command().join(" ")
    ));
    let cri = cd.cri()?;
    let pod = cri.run_pod(
        &PodSpec::new("web-7d9f")
            .namespace("shop")
            .label("app", "web"),
    )?;
    let cmd: Vec<String> = attacker.nc_command();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let container = cri.run_container(&pod, &ContainerSpec::new("frontend").command(&cmd))?;
    println!(
        "    pod shop/web-7d9f, container frontend ({})",
        &container[..12]
    );

    let peer = attacker.accept(Duration::from_secs(15))?;
    println!("    reverse shell connected from {peer}");
    step("attacker types `id; uname -a`");
    let out = attacker
        .run("id; uname -a", Duration::from_secs(10))
        .unwrap_or_else(|e| format!("(no output: {e})"));
    for line in out.lines() {
        println!("    | {line}");
    }

    step("the finding rce-guard printed on stdout (one JSON line; pretty-printed below it)");
    let finding = agent.wait_for_stdout(
        |v| v["finding"]["category"].is_string(),
        Duration::from_secs(10),
    )?;
    println!("{}\n", finding.raw);
    println!("{}", serde_json::to_string_pretty(&finding.json)?);
    println!("\ndone in {:.1} s; cleaning up", t0.elapsed().as_secs_f64());
    Ok(())
}
