//! A monitor restart or upgrade never breaks a container (issue 5), shown with real containerd
//! (1.7 and 2.1), real runc through the `rce-guard-runc` wrapper, the real agent and its fd
//! holder. Busybox pods run exec loops that count their own execs, failures and delays (see
//! `rce_guard_e2e::restart`) while:
//! - chaos: the agent (the judge) is SIGKILLed and restarted at random moments, and a reverse
//!   shell is started while it is dead;
//! - upgrade: a second agent takes over from the first, then a second holder from the first;
//! - holder loss: the holder is SIGKILLed (detected, counted, replaced), then the agent; and
//!   finally both at once, to show what workloads then see (ENOSYS).
//!
//! The numbers are printed: run with `--nocapture` to see them. `RCE_GUARD_CHAOS_SEED`
//! replays a chaos schedule.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rce_guard_e2e::restart::{
    agent_bin_dir, container_status, holder_pids, sigkill, start_exec_loops, status_json,
    total_stats, wait_gone, wait_progress, Chaos, ExecLoop, KillProcessesUnder, LoopStats,
};
use rce_guard_e2e::{
    field_str, message, require_root, Agent, AgentBuilder, ContainerSpec, Containerd,
    ContainerdOptions, Cri, PodSpec, ReverseShellListener, Version,
};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v1_7 {
            $( #[test] fn $name() { super::$name(super::Version::V1_7) } )*
        }
        mod v2_1 {
            $( #[test] fn $name() { super::$name(super::Version::V2_1) } )*
        }
    };
}

on_both_versions!(
    sigkilled_agent_at_random_moments_breaks_no_exec_and_a_shell_from_a_gap_is_reported_once,
    a_new_agent_and_a_new_holder_take_over_without_a_failed_exec,
    holder_loss_is_reported_and_repaired_and_losing_both_breaks_exec,
);

/// A private containerd whose runc is the wrapper, the agent's arguments for it, and a reaper
/// for the holders (they outlive agents by design).
struct Setup {
    cri: Cri,
    builder: AgentBuilder,
    bin_dir: PathBuf,
    admin: PathBuf,
    listener: PathBuf,
    holder_socket: PathBuf,
    cd: Containerd,
    _reaper: KillProcessesUnder,
}

fn setup(v: Version) -> Setup {
    require_root().unwrap();
    let bin_dir = agent_bin_dir().unwrap();
    let wrapper = bin_dir.join("rce-guard-runc");
    let cd =
        Containerd::start_with(ContainerdOptions::new(v).runc_binary(&wrapper.to_string_lossy()))
            .unwrap();
    let reaper = KillProcessesUnder(cd.dir().to_path_buf());
    let builder = AgentBuilder::for_containerd(&cd);
    Setup {
        cri: cd.cri().unwrap(),
        builder,
        bin_dir,
        admin: cd.dir().join("admin.sock"),
        listener: cd.dir().join("listener.sock"),
        holder_socket: cd.dir().join("holder.sock"),
        cd,
        _reaper: reaper,
    }
}

impl Setup {
    fn spawn_agent(&self) -> Agent {
        self.builder.clone().spawn().unwrap()
    }

    /// Every container in `ids` is monitored (has a listener fd) per `rce-guard status`.
    fn wait_monitored(&self, ids: &[&str]) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let status = status_json(&self.admin);
            if let Ok(s) = &status {
                let all = ids
                    .iter()
                    .all(|id| container_status(s, id).is_some_and(|c| c["monitored"] == true));
                if all {
                    return status.unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "not every container is monitored: {status:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The agent registered with containerd and synchronized with the fd holder.
fn wait_ready(agent: &Agent, mark: usize) {
    agent
        .wait_for_message(mark, "synchronized with the fd holder", &[], READY_TIMEOUT)
        .unwrap();
    agent
        .wait_for_message(mark, "registered with runtime", &[], READY_TIMEOUT)
        .unwrap();
}

fn ids(loops: &[ExecLoop]) -> Vec<&str> {
    loops.iter().map(|l| l.container_id.as_str()).collect()
}

/// Waits for the loops' next STATS lines (twice a second) and sums them.
fn settled_stats(loops: &[ExecLoop]) -> LoopStats {
    std::thread::sleep(Duration::from_millis(1200));
    total_stats(loops).unwrap()
}

fn assert_no_failures(total: &LoopStats) {
    assert_eq!(
        total.failed, 0,
        "failed execs: {total}; lines: {:?}",
        total.failure_lines
    );
    assert!(
        total.failure_lines.is_empty(),
        "the loops logged errors: {:?}",
        total.failure_lines
    );
}

/// Findings (stdout lines) of all these agents about a reverse shell to `port`.
fn findings_for_port(agents: &[Agent], port: u16) -> Vec<(u32, Value)> {
    agents
        .iter()
        .flat_map(|a| {
            a.stdout_lines().into_iter().filter_map(move |l| {
                let dst = &l.json["finding"]["sourceProperties"]
                    ["Reverse_Shell_Stdin_Redirection_Dst_Port"];
                (dst.as_u64() == Some(u64::from(port))).then(|| (a.pid(), l.json.clone()))
            })
        })
        .collect()
}

fn kill_agent(agent: &Agent) {
    agent.signal(Signal::SIGKILL).unwrap();
    agent.wait_exit(Duration::from_secs(10)).unwrap();
}

fn sigkilled_agent_at_random_moments_breaks_no_exec_and_a_shell_from_a_gap_is_reported_once(
    v: Version,
) {
    const KILLS: usize = 6;
    const SHELL_ROUND: usize = 2;
    let s = setup(v);
    let mut agents = vec![s.spawn_agent()];
    wait_ready(&agents[0], 0);
    let (_pods, loops) = start_exec_loops(&s.cri, &s.cd, "chaos", 4).unwrap();
    let victim_pod = s
        .cri
        .run_pod(&PodSpec::new("victim").namespace("chaos"))
        .unwrap();
    let victim = s
        .cri
        .run_container(&victim_pod, &ContainerSpec::sleeper("victim"))
        .unwrap();
    wait_progress(&loops, 50, PROGRESS_TIMEOUT).unwrap();
    let mut watched = ids(&loops);
    watched.push(&victim);
    s.wait_monitored(&watched);

    // The steady rate, with the agent up.
    let before = total_stats(&loops).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let steady = total_stats(&loops).unwrap();
    let rate = (steady.execs - before.execs) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "[{}] steady exec rate over 4 monitored pods: {rate:.0} execs/s",
        v.label()
    );
    assert!(
        rate >= 100.0,
        "the loops must make hundreds of execs per second ({rate:.0}/s)"
    );

    let mut chaos = Chaos::from_env_or_clock();
    println!(
        "[{}] chaos seed {} (RCE_GUARD_CHAOS_SEED={} to replay)",
        v.label(),
        chaos.seed,
        chaos.seed
    );
    let mut attacker = ReverseShellListener::new().unwrap();
    let port = attacker.port();
    // Meanwhile `runc exec` after `runc exec` (CRI ExecSync, as exec probes do): each hands a
    // new listener fd to the holder, whichever judge runs or restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let execsync = {
        let (cri, id, stop) = (
            s.cd.cri().unwrap(),
            loops[0].container_id.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut longest) = (0u64, Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match cri.exec_sync(&id, &["/bin/true"], Duration::from_secs(60)) {
                    Ok(r) if r.exit_code == 0 => ok += 1,
                    Ok(r) => failed.push(format!("exit {}: {}", r.exit_code, r.stderr)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
                longest = longest.max(t.elapsed());
            }
            (ok, failed, longest)
        })
    };
    let chaos_start = total_stats(&loops).unwrap();
    let chaos_t0 = Instant::now();
    let mut gaps = Vec::new();
    for round in 0..KILLS {
        // Up for a random while: sometimes mid-start, sometimes long after its sync.
        std::thread::sleep(chaos.between(Duration::from_millis(200), Duration::from_millis(2500)));
        kill_agent(agents.last().unwrap());
        let killed = Instant::now();
        let shell = if round == SHELL_ROUND {
            // While no judge runs: runc exec hands its listener fd to the holder, and the
            // shell's execs wait in the kernel.
            let cri = s.cd.cri().unwrap();
            let cmd = attacker.nc_command().join(" ");
            let id = victim.clone();
            let t = std::thread::spawn(move || {
                cri.exec_sync(&id, &["sh", "-c", &cmd], Duration::from_secs(120))
            });
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                attacker.accept(Duration::from_millis(100)).is_err(),
                "the reverse shell connected while no judge ran"
            );
            Some(t)
        } else {
            std::thread::sleep(chaos.between(Duration::ZERO, Duration::from_millis(700)));
            None
        };
        agents.push(s.spawn_agent());
        gaps.push(killed.elapsed());
        if let Some(t) = shell {
            let agent = agents.last().unwrap();
            attacker.accept(Duration::from_secs(30)).unwrap();
            let out = attacker
                .run("echo pwned-$((6*7))", Duration::from_secs(10))
                .unwrap();
            assert!(out.contains("pwned-42"), "shell output {out:?}");
            agent
                .wait_for_stdout(
                    |j| {
                        j["finding"]["sourceProperties"]["Reverse_Shell_Stdin_Redirection_Dst_Port"]
                            .as_u64()
                            == Some(u64::from(port))
                    },
                    Duration::from_secs(20),
                )
                .unwrap();
            attacker.send("exit").unwrap();
            let r = t.join().unwrap().unwrap();
            println!(
                "[{}] reverse shell started in gap {round}: ExecSync exit {}",
                v.label(),
                r.exit_code
            );
        }
    }
    let last = agents.last().unwrap();
    wait_ready(last, 0);
    wait_progress(&loops, 100, PROGRESS_TIMEOUT).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (execsync_ok, execsync_failed, execsync_longest) = execsync.join().unwrap();
    let status = s.wait_monitored(&watched);
    let end = settled_stats(&loops);
    let chaos_secs = chaos_t0.elapsed().as_secs_f64();

    let during = LoopStats {
        execs: end.execs - chaos_start.execs,
        failed: end.failed - chaos_start.failed,
        delayed: end.delayed - chaos_start.delayed,
        longest: end.longest,
        failure_lines: end.failure_lines.clone(),
    };
    let findings = findings_for_port(&agents, port);
    // Execs a killed agent had taken but not answered, woken by its successor's recovery.
    let kicked: u64 = agents
        .iter()
        .flat_map(|a| {
            a.logs_with_message(
                0,
                "woke tasks waiting in exec so that their execs are judged again",
            )
        })
        .filter_map(|l| l.field("kicked")?.parse::<u64>().ok())
        .sum();
    println!(
        "[{}] chaos: {KILLS} SIGKILLs of the agent in {chaos_secs:.1} s, agent down (kill to respawn) {:?}; \
         during the chaos: {during}; whole run: {end}; reverse shell findings: {} (from agent pids {:?}); \
         execs recovered by a kick after a restart: {kicked}; ExecSync during the chaos: {execsync_ok} ok, \
         {} failed, longest {execsync_longest:?}; last agent's holder status: {}",
        v.label(),
        gaps,
        findings.len(),
        findings.iter().map(|(pid, _)| pid).collect::<Vec<_>>(),
        execsync_failed.len(),
        status["holder"]
    );
    assert_no_failures(&end);
    assert!(during.execs > 0);
    assert!(
        execsync_failed.is_empty(),
        "ExecSync failed: {execsync_failed:?}"
    );
    assert!(execsync_ok > 0, "ExecSync ran during the chaos");
    assert!(
        end.longest >= Duration::from_millis(100),
        "execs made while the agent was dead waited (longest {:?})",
        end.longest
    );
    assert_eq!(
        findings.len(),
        1,
        "the shell started in a gap is reported exactly once: {findings:#?}"
    );
    let reporter = findings[0].0;
    assert_eq!(
        reporter,
        agents[SHELL_ROUND + 1].pid(),
        "reported by the agent started after the gap"
    );
}

fn a_new_agent_and_a_new_holder_take_over_without_a_failed_exec(v: Version) {
    let s = setup(v);
    let first = s.spawn_agent();
    wait_ready(&first, 0);
    let (_pods, loops) = start_exec_loops(&s.cri, &s.cd, "upgrade", 3).unwrap();
    wait_progress(&loops, 50, PROGRESS_TIMEOUT).unwrap();
    s.wait_monitored(&ids(&loops));
    let start = total_stats(&loops).unwrap();

    // Agent upgrade: the new binary starts with the same arguments while the old one runs.
    let t0 = Instant::now();
    let second = s.spawn_agent();
    let exit = first.wait_exit(Duration::from_secs(15)).unwrap();
    let old_gone = t0.elapsed();
    assert!(
        exit.success(),
        "the old agent exits by itself, cleanly ({exit})"
    );
    first
        .wait_for_message(
            0,
            "another agent connected to the fd holder and takes over; this one stops judging and exits",
            &[],
            Duration::from_secs(1),
        )
        .unwrap();
    wait_ready(&second, 0);
    wait_progress(&loops, 100, PROGRESS_TIMEOUT).unwrap();
    let status = s.wait_monitored(&ids(&loops));
    for l in &loops {
        let c = container_status(&status, &l.container_id).unwrap();
        assert!(c["listener_fds"].as_u64().unwrap_or(0) >= 1, "{c}");
    }
    let after_agent = total_stats(&loops).unwrap();
    assert_no_failures(&after_agent);

    // Holder upgrade: a new holder on the same sockets takes over from the running one.
    let old_holders = holder_pids(s.cd.dir());
    assert_eq!(old_holders.len(), 1, "one holder runs: {old_holders:?}");
    let mark = second.log_mark();
    let log = std::fs::File::create(s.cd.dir().join("holder-2.log")).unwrap();
    let t1 = Instant::now();
    let mut new_holder = Command::new(s.bin_dir.join("rce-guard-holder"))
        .arg("--listener")
        .arg(&s.listener)
        .arg("--control")
        .arg(&s.holder_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_gone(old_holders[0], Duration::from_secs(15)).unwrap();
    let holder_switch = t1.elapsed();
    second
        .wait_for_message(
            mark,
            "reconnected to the fd holder",
            &[],
            Duration::from_secs(10),
        )
        .unwrap();
    wait_progress(&loops, 100, PROGRESS_TIMEOUT).unwrap();
    let status = s.wait_monitored(&ids(&loops));
    assert_eq!(status["holder"]["connected"], true, "{}", status["holder"]);
    assert_eq!(status["holder"]["holder_losses"], 0, "{}", status["holder"]);
    let new_log = std::fs::read_to_string(s.cd.dir().join("holder-2.log")).unwrap();
    assert!(
        new_log.contains("took over listener sockets and fds from the previous holder"),
        "{new_log}"
    );
    assert!(
        new_holder.try_wait().unwrap().is_none(),
        "the new holder runs"
    );
    assert_eq!(holder_pids(s.cd.dir()), vec![new_holder.id() as i32]);

    let end = settled_stats(&loops);
    println!(
        "[{}] upgrade: old agent exited {:?} after the new one started; new holder took over in {:?}; \
         during both upgrades: {} execs, {} failed, {} delayed (longest {:?} over the whole run); whole run: {end}",
        v.label(),
        old_gone,
        holder_switch,
        end.execs - start.execs,
        end.failed - start.failed,
        end.delayed - start.delayed,
        end.longest
    );
    assert_no_failures(&end);
    drop(second);
    let _ = new_holder.kill();
    let _ = new_holder.wait();
}

fn holder_loss_is_reported_and_repaired_and_losing_both_breaks_exec(v: Version) {
    let s = setup(v);
    let agent = s.spawn_agent();
    wait_ready(&agent, 0);
    let (_pods, loops) = start_exec_loops(&s.cri, &s.cd, "loss", 3).unwrap();
    // A quiet container too: it outlives the end of this test's story, so `status` can show
    // that it lost monitoring.
    let idle_pod = s
        .cri
        .run_pod(&PodSpec::new("idle").namespace("chaos"))
        .unwrap();
    let idle = s
        .cri
        .run_container(&idle_pod, &ContainerSpec::sleeper("idle"))
        .unwrap();
    wait_progress(&loops, 50, PROGRESS_TIMEOUT).unwrap();
    let mut watched = ids(&loops);
    watched.push(&idle);
    s.wait_monitored(&watched);

    // The holder dies: the agent says so loudly, counts it, starts a new one and gives it
    // every fd back.
    let holders = holder_pids(s.cd.dir());
    assert_eq!(holders.len(), 1, "{holders:?}");
    let mark = agent.log_mark();
    sigkill(holders[0]).unwrap();
    wait_gone(holders[0], Duration::from_secs(5)).unwrap();
    let loud = agent
        .wait_for_log_after(
            mark,
            |j| {
                j["level"] == "ERROR"
                    && message(j).is_some_and(|m| m.starts_with("the fd holder died"))
            },
            Duration::from_secs(10),
        )
        .unwrap();
    let given = agent
        .wait_for_message(
            mark,
            "new fd holder running; listener fds handed back to it",
            &[],
            Duration::from_secs(10),
        )
        .unwrap();
    let given: u64 = field_str(&given.json, "given").unwrap().parse().unwrap();
    assert!(
        given > loops.len() as u64,
        "every container's fd handed back ({given})"
    );
    let new_holders = holder_pids(s.cd.dir());
    assert_eq!(new_holders.len(), 1, "{new_holders:?}");
    assert_ne!(new_holders[0], holders[0]);
    let status = s.wait_monitored(&ids(&loops));
    assert_eq!(status["holder"]["holder_losses"], 1, "{}", status["holder"]);
    assert_eq!(status["holder"]["connected"], true, "{}", status["holder"]);
    wait_progress(&loops, 100, PROGRESS_TIMEOUT).unwrap();
    assert_no_failures(&total_stats(&loops).unwrap());
    println!(
        "[{}] holder loss: agent logged {:?} ({}), handed {given} fds to the new holder; status holder {}",
        v.label(),
        message(&loud.json).unwrap_or(""),
        loud.json["fields"]["containers_at_risk"],
        status["holder"]
    );

    // The new holder has the fds: an agent crash is harmless again.
    kill_agent(&agent);
    std::thread::sleep(Duration::from_secs(1));
    let agent2 = s.spawn_agent();
    wait_ready(&agent2, 0);
    wait_progress(&loops, 100, PROGRESS_TIMEOUT).unwrap();
    let before_both = settled_stats(&loops);
    assert_no_failures(&before_both);
    assert!(
        before_both.longest >= Duration::from_millis(500),
        "execs waited for the agent"
    );

    // Both die (the agent first, so it cannot start yet another holder): nobody keeps the
    // listener fds, and every exec in those containers fails with ENOSYS from now on.
    let holder = holder_pids(s.cd.dir());
    assert_eq!(holder.len(), 1);
    kill_agent(&agent2);
    sigkill(holder[0]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let broken = loop {
        let per_loop: Vec<LoopStats> = loops.iter().map(|l| l.stats().unwrap()).collect();
        if per_loop.iter().all(|st| st.failed > 0) {
            break per_loop;
        }
        assert!(
            Instant::now() < deadline,
            "execs did not fail after holder and agent died: {per_loop:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for st in &broken {
        assert!(
            st.failure_lines
                .iter()
                .any(|l| l.contains("Function not implemented")),
            "the workload sees ENOSYS: {:?}",
            st.failure_lines
        );
    }
    println!(
        "[{}] holder and agent both killed: every loop's execs fail, e.g. {:?}",
        v.label(),
        broken[0].failure_lines.iter().take(2).collect::<Vec<_>>()
    );

    // The next agent cannot repair that, but says which containers lost monitoring.
    let agent3 = s.spawn_agent();
    wait_ready(&agent3, 0);
    let deadline = Instant::now() + READY_TIMEOUT;
    let lost = loop {
        let st = status_json(&s.admin).unwrap();
        let c = container_status(&st, &idle).cloned();
        if let Some(c) = c.filter(|c| c["monitored"] == false && c["note"] != "") {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the loss: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "[{}] after both died, the next agent's status for a running container: monitored {}, note {}",
        v.label(),
        lost["monitored"],
        lost["note"]
    );
}
