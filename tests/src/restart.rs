//! Helpers for the restart, upgrade and holder-loss tests: busybox exec loops that count their
//! own execs, failures and delays; the agent's sibling binaries (holder, runc wrapper); the
//! processes of one instance (the fd holder outlives the agent by design); `rce-guard status`.
//!
//! An exec loop is a container running [`EXEC_LOOP_SCRIPT`]: `/bin/true` again and again (every
//! run is an execve the monitor must answer), timed with `/proc/uptime` (read by the shell
//! itself: no exec, 10 ms resolution). Twice a second it prints a `STATS` line to its log:
//! execs that succeeded, execs that failed, iterations that took 100 ms or more, and the
//! longest iteration. A failed exec also prints a `FAIL` line (the shell prints the error,
//! e.g. "Function not implemented", on stderr). After 20 failures it prints its stats and
//! exits, so a broken container does not flood the disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::containerd::Containerd;
use crate::cri::{ContainerSpec, Cri, Pod, PodSpec};

/// The loop each exec-loop container runs (busybox ash; only `/bin/true` is exec'd).
pub const EXEC_LOOP_SCRIPT: &str = r#"n=0; f=0; slow=0; max=0; last=0
read up rest < /proc/uptime; t0=${up%.*}${up#*.}
while :; do
  if /bin/true; then n=$((n+1)); else echo "FAIL rc=$? after $n execs"; f=$((f+1)); fi
  read up rest < /proc/uptime; t1=${up%.*}${up#*.}
  d=$((t1-t0)); t0=$t1
  if [ $d -gt $max ]; then max=$d; fi
  if [ $d -ge 10 ]; then slow=$((slow+1)); fi
  if [ $((t1-last)) -ge 50 ] || [ $f -ge 20 ]; then echo "STATS execs=$n failed=$f delayed=$slow longest_cs=$max"; last=$t1; fi
  if [ $f -ge 20 ]; then exit 3; fi
done"#;

/// One iteration taking this long or longer counts as a delayed exec.
pub const DELAYED_AT: Duration = Duration::from_millis(100);

/// A running exec-loop container.
#[derive(Debug, Clone)]
pub struct ExecLoop {
    pub name: String,
    pub container_id: String,
    pub log_path: PathBuf,
}

/// What an exec loop (or several, summed) reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Execs that succeeded.
    pub execs: u64,
    /// Execs that failed.
    pub failed: u64,
    /// Iterations that took [`DELAYED_AT`] or longer.
    pub delayed: u64,
    /// The longest iteration (10 ms resolution).
    pub longest: Duration,
    /// `FAIL` lines and the shell's error lines, as logged.
    pub failure_lines: Vec<String>,
}

impl LoopStats {
    /// Sums counts, keeps the longest delay.
    pub fn add(&mut self, other: &LoopStats) {
        self.execs += other.execs;
        self.failed += other.failed;
        self.delayed += other.delayed;
        self.longest = self.longest.max(other.longest);
        self.failure_lines
            .extend(other.failure_lines.iter().cloned());
    }
}

impl std::fmt::Display for LoopStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} execs run, {} failed, {} delayed >= {} ms (longest {} ms)",
            self.execs,
            self.failed,
            self.delayed,
            DELAYED_AT.as_millis(),
            self.longest.as_millis()
        )
    }
}

impl ExecLoop {
    /// The numbers of the latest `STATS` line, and every failure line so far.
    pub fn stats(&self) -> Result<LoopStats> {
        let text = std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        let mut stats = LoopStats::default();
        for line in text.lines() {
            // CRI log format: "<time> <stream> <P|F> <text>".
            let msg = line.splitn(4, ' ').nth(3).unwrap_or(line);
            if let Some(rest) = msg.strip_prefix("STATS ") {
                let field = |name: &str| -> Result<u64> {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .ok_or_else(|| anyhow!("no {name} in {msg:?}"))?
                        .parse()
                        .with_context(|| format!("{name} in {msg:?}"))
                };
                stats.execs = field("execs")?;
                stats.failed = field("failed")?;
                stats.delayed = field("delayed")?;
                stats.longest = Duration::from_millis(field("longest_cs")? * 10);
            } else if !msg.trim().is_empty() {
                stats.failure_lines.push(msg.to_string());
            }
        }
        Ok(stats)
    }
}

/// Sum over loops.
pub fn total_stats(loops: &[ExecLoop]) -> Result<LoopStats> {
    let mut total = LoopStats::default();
    for l in loops {
        total.add(&l.stats()?);
    }
    Ok(total)
}

/// Starts `n` pods (`<prefix>-<i>`, host network) with one exec-loop container each.
pub fn start_exec_loops(
    cri: &Cri,
    cd: &Containerd,
    prefix: &str,
    n: usize,
) -> Result<(Vec<Pod>, Vec<ExecLoop>)> {
    let mut pods = Vec::new();
    let mut loops = Vec::new();
    for i in 0..n {
        let pod = cri.run_pod(&PodSpec::new(&format!("{prefix}-{i}")).namespace("chaos"))?;
        let name = format!("loop{i}");
        let id = cri.run_container(
            &pod,
            &ContainerSpec::new(&name).command(&["sh", "-c", EXEC_LOOP_SCRIPT]),
        )?;
        loops.push(ExecLoop {
            log_path: cd
                .pod_log_root()
                .join(&pod.spec.uid)
                .join(format!("{name}.log")),
            name,
            container_id: id,
        });
        pods.push(pod);
    }
    Ok((pods, loops))
}

/// Waits until every loop has run `more` successful execs beyond `from` (its stats then), i.e.
/// exec works in all of them right now. Fails early if a loop reports a failure.
pub fn wait_progress(loops: &[ExecLoop], more: u64, timeout: Duration) -> Result<()> {
    let from: Vec<u64> = loops
        .iter()
        .map(|l| l.stats().map(|s| s.execs).unwrap_or(0))
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for (l, start) in loops.iter().zip(&from) {
            let s = l.stats().unwrap_or_default();
            if s.failed > 0 {
                bail!(
                    "exec loop {} reports failures: {s}; {:?}",
                    l.name,
                    s.failure_lines
                );
            }
            if s.execs < start + more {
                behind.push(format!("{}: {} execs", l.name, s.execs));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("exec loops made no progress of {more} execs within {timeout:?}: {behind:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory holding `rce-guard` and its sibling binaries (`rce-guard-holder`, which the
/// agent starts from next to itself, and the `rce-guard-runc` wrapper), built with
/// `cargo build -p rce-guard --bins` once per test process (a no-op when up to date) unless
/// `$RCE_GUARD_BIN` names a prebuilt agent.
pub fn agent_bin_dir() -> Result<PathBuf> {
    let bins = crate::product::product_binaries()?;
    bins.agent
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no directory", bins.agent.display()))
}

/// Processes (pid, comm) with an argument that mentions `dir` (a path in it), except us.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_slice()))
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            found.push((pid, comm));
        }
    }
    found
}

/// Pids of the fd holders serving sockets in `dir`.
pub fn holder_pids(dir: &Path) -> Vec<i32> {
    processes_under(dir)
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("rce-guard-hold"))
        .map(|(pid, _)| pid)
        .collect()
}

pub fn is_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie (not yet reaped by its parent) counts as gone.
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
}

pub fn sigkill(pid: i32) -> Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("SIGKILL to {pid}"))
}

/// Waits until `pid` is gone.
pub fn wait_gone(pid: i32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            bail!("process {pid} still alive after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Kills, on drop, every process whose arguments mention its directory: the fd holders an
/// agent started (they outlive the agent by design) and any the test started itself.
pub struct KillProcessesUnder(pub PathBuf);

impl Drop for KillProcessesUnder {
    fn drop(&mut self) {
        let pids = processes_under(&self.0);
        for (pid, _) in &pids {
            let _ = sigkill(*pid);
        }
        for (pid, _) in &pids {
            let _ = wait_gone(*pid, Duration::from_secs(5));
        }
    }
}

pub use crate::product::{status_entry as container_status, status_json};

/// A small deterministic generator for the chaos schedule (xorshift64*), seeded from the
/// clock unless `RCE_GUARD_CHAOS_SEED` is set; print the seed to replay a run.
pub struct Chaos {
    state: u64,
    pub seed: u64,
}

impl Chaos {
    pub fn from_env_or_clock() -> Chaos {
        let seed = std::env::var("RCE_GUARD_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9_7f4a_7c15)
            });
        Chaos {
            state: seed.max(1),
            seed,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros().max(1) as u64;
        lo + Duration::from_micros(self.next() % span)
    }
}
