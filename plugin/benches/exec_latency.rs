//! What the monitor costs an exec, against no filter and against a minimal reference
//! supervisor (RECV + pidfd check of fds 0-2 + SEND, blocking in one thread: the floor).
//!
//! `cargo bench -p rce-guard --bench exec_latency` (as root). Prints numbers, asserts none.
//! Environment: `RCE_GUARD_BENCH_ROUNDS` (default 100) x `RCE_GUARD_BENCH_PER_ROUND` (30)
//! execs per mode; `RCE_GUARD_BENCH_HOLD` listener fds for the RSS check (1000);
//! `RCE_GUARD_BENCH_WORKERS` monitor workers (2). `RCE_GUARD_BENCH_PROFILE=N` (with
//! `..._PROFILE_MODE=ours|reference|reference-epoll`, `..._PROFILE_JOB=spawn|missing`) runs
//! only N execs of one mode, for `perf record -p`.
//!
//! Each mode has its own thread. The filtered modes' threads install the exec-notify filter on
//! themselves only (never on the monitor's threads), so the children they spawn are trapped.
//! The same binary, re-executed with `--hold-listeners` or `--storm-child`, plays the many
//! "containers" of the RSS and storm measurements.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rce_guard::exec_event::ExecEvent;
use rce_guard::monitor::{self, filter, hand_over, sys, target::describe_fd, MonitorConfig};
use rce_guard::verdict::{Action, ExecJudge, WatchedContainer};

const MISSING: &str = "/nonexistent/rce-guard-bench";

struct AllowAll;
impl ExecJudge for AllowAll {
    fn judge(&self, _: &WatchedContainer, _: &ExecEvent) -> Action {
        Action::Allow
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn payload(id: &str, pid: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2-dev", "fds": ["seccompFd"], "pid": pid,
        "state": {"id": id, "status": "running", "pid": pid, "bundle": "/bench",
                  "annotations": {"io.kubernetes.cri.sandbox-namespace": "bench",
                                  "io.kubernetes.cri.sandbox-name": id,
                                  "io.kubernetes.cri.container-name": "c"}}
    }))
    .expect("json")
}

/// What a mode thread is asked to do.
enum Job {
    /// fork + execve(/bin/true) + wait, `n` times, with stdio from `stdio`.
    Spawn {
        n: usize,
        socket_stdio: Option<std::net::SocketAddr>,
    },
    /// execve of a missing file (fails after the notification round trip), `n` times.
    Missing { n: usize },
    /// Spawn storm children that inherit this thread's filter.
    StormChildren {
        exe: PathBuf,
        count: usize,
        n: usize,
        start_at_ms: u128,
    },
}

enum Reply {
    Samples(Vec<Duration>),
    Children(Vec<std::process::Child>),
}

/// A thread that runs jobs; with `filter`, it first installs the exec-notify filter on
/// itself and hands the listener fd to `on_listener`.
fn mode_thread(
    name: &str,
    filter: Option<Box<dyn FnOnce(OwnedFd) + Send>>,
) -> (mpsc::Sender<Job>, mpsc::Receiver<Reply>) {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(take) = filter {
                let fd = filter::install_exec_notify_filter().expect("install filter");
                take(fd);
            }
            for job in job_rx {
                let reply = match job {
                    Job::Spawn { n, socket_stdio } => Reply::Samples(spawn_true(n, socket_stdio)),
                    Job::Missing { n } => Reply::Samples(exec_missing(n)),
                    Job::StormChildren {
                        exe,
                        count,
                        n,
                        start_at_ms,
                    } => Reply::Children(
                        (0..count)
                            .map(|_| {
                                Command::new(&exe)
                                    .args([
                                        "--storm-child",
                                        &n.to_string(),
                                        &start_at_ms.to_string(),
                                    ])
                                    .stdin(Stdio::null())
                                    .stdout(Stdio::piped())
                                    .spawn()
                                    .expect("storm child")
                            })
                            .collect(),
                    ),
                };
                if reply_tx.send(reply).is_err() {
                    break;
                }
            }
        })
        .expect("mode thread");
    (job_tx, reply_rx)
}

fn spawn_true(n: usize, socket_stdio: Option<std::net::SocketAddr>) -> Vec<Duration> {
    let conn = socket_stdio.map(|a| TcpStream::connect(a).expect("connect"));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = Command::new("/bin/true");
        match &conn {
            Some(c) => {
                let f = |c: &TcpStream| Stdio::from(OwnedFd::from(c.try_clone().expect("dup")));
                cmd.stdin(f(c)).stdout(f(c)).stderr(f(c));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        let t0 = Instant::now();
        let st = cmd.status().expect("spawn /bin/true");
        out.push(t0.elapsed());
        assert!(st.success());
    }
    out
}

fn exec_missing(n: usize) -> Vec<Duration> {
    let path = CString::new(MISSING).expect("static");
    let argv = [path.clone()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let err = nix::unistd::execv(&path, &argv).unwrap_err();
        out.push(t0.elapsed());
        assert_eq!(err, nix::errno::Errno::ENOENT);
    }
    out
}

/// The floor: RECV, pidfd check of fds 0-2, SEND, in one blocking thread.
fn reference_supervisor(listener: OwnedFd) {
    let _ = sys::notif_set_sync_wakeup(listener.as_fd());
    std::thread::Builder::new()
        .name("ref-supervisor".into())
        .spawn(move || loop {
            let n = match sys::notif_recv(listener.as_fd()) {
                Ok(n) => n,
                Err(_) => continue,
            };
            if let Ok(pidfd) = sys::pidfd_open_task(n.tid as i32) {
                if sys::notif_id_valid(listener.as_fd(), n.id).unwrap_or(false) {
                    for fd in 0..3 {
                        if let Ok(copy) = sys::pidfd_getfd(pidfd.as_fd(), fd) {
                            std::hint::black_box(describe_fd(copy.as_fd()));
                        }
                    }
                }
            }
            let _ = sys::notif_send(listener.as_fd(), n.id, sys::Reply::Continue);
        })
        .expect("reference thread");
}

/// The floor plus the event-driven front end our monitor uses (epoll with EPOLLONESHOT and
/// a re-arm per notification), to tell the architecture's cost from inspection's.
fn reference_supervisor_epoll(listener: OwnedFd) {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let _ = sys::notif_set_sync_wakeup(listener.as_fd());
    std::thread::Builder::new()
        .name("ref-supervisor".into())
        .spawn(move || {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
            let interest = || EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, 1);
            epoll.add(listener.as_fd(), interest()).expect("epoll add");
            let mut events = [EpollEvent::empty(); 1];
            loop {
                if epoll.wait(&mut events, EpollTimeout::NONE).unwrap_or(0) == 0 {
                    continue;
                }
                if let Ok(n) = sys::notif_recv(listener.as_fd()) {
                    if let Ok(pidfd) = sys::pidfd_open_task(n.tid as i32) {
                        if sys::notif_id_valid(listener.as_fd(), n.id).unwrap_or(false) {
                            for fd in 0..3 {
                                if let Ok(copy) = sys::pidfd_getfd(pidfd.as_fd(), fd) {
                                    std::hint::black_box(describe_fd(copy.as_fd()));
                                }
                            }
                        }
                    }
                    let _ = sys::notif_send(listener.as_fd(), n.id, sys::Reply::Continue);
                }
                let _ = epoll.modify(listener.as_fd(), &mut interest());
            }
        })
        .expect("reference thread");
}

/// Context switches (voluntary + involuntary) of this process's threads named `prefix*`.
fn threads_switches(prefix: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            for l in status.lines() {
                if l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
                {
                    total += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    total
}

/// Run-queue CPU time (ns) of this process's threads whose name starts with `prefix`.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let stat = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        s
    }
}

fn run_job(tx: &mpsc::Sender<Job>, rx: &mpsc::Receiver<Reply>, job: Job) -> Vec<Duration> {
    tx.send(job).expect("job");
    match rx.recv().expect("reply") {
        Reply::Samples(s) => s,
        Reply::Children(_) => unreachable!(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hold-listeners") {
        return hold_listeners(args[i + 1].parse().expect("count"), Path::new(&args[i + 2]));
    }
    if let Some(i) = args.iter().position(|a| a == "--storm-child") {
        return storm_child(
            args[i + 1].parse().expect("n"),
            args[i + 2].parse().expect("start"),
            args.get(i + 3),
        );
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("exec_latency: must run as root (seccomp listeners, pidfd_getfd); skipped");
        return;
    }
    let rounds = env_usize("RCE_GUARD_BENCH_ROUNDS", 100);
    let per_round = env_usize("RCE_GUARD_BENCH_PER_ROUND", 30);
    let hold = env_usize("RCE_GUARD_BENCH_HOLD", 1000);

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("monitor.sock");
    let rss_before_monitor = rss_kib();
    let mon = monitor::start(
        MonitorConfig {
            listener_path: socket.clone(),
            workers: env_usize("RCE_GUARD_BENCH_WORKERS", 2),
            ..MonitorConfig::default()
        },
        Arc::new(AllowAll),
    )
    .expect("monitor");
    let mon = Arc::new(mon);

    let (none_tx, none_rx) = mode_thread("bench-none", None);
    let m2 = mon.clone();
    let (ours_tx, ours_rx) = mode_thread(
        "bench-ours",
        Some(Box::new(move |fd| {
            m2.adopt(fd, &payload("bench-ours", std::process::id()))
                .expect("adopt");
        })),
    );
    let (ref_tx, ref_rx) = mode_thread("bench-ref", Some(Box::new(reference_supervisor)));
    let (refe_tx, refe_rx) = mode_thread("bench-refe", Some(Box::new(reference_supervisor_epoll)));

    // Warm up every path (page cache, procfs, allocator).
    for (tx, rx) in [
        (&none_tx, &none_rx),
        (&ours_tx, &ours_rx),
        (&ref_tx, &ref_rx),
    ] {
        run_job(
            tx,
            rx,
            Job::Spawn {
                n: 50,
                socket_stdio: None,
            },
        );
        run_job(tx, rx, Job::Missing { n: 200 });
    }

    // Profiling aid: only our monitor's round trip, for `perf record -p` / `strace -f -p`.
    if let Some(n) = std::env::var("RCE_GUARD_BENCH_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        println!(
            "profiling: pid {}, {n} execve(missing) through our monitor in 2 s",
            std::process::id()
        );
        std::thread::sleep(Duration::from_millis(
            env_usize("RCE_GUARD_BENCH_PROFILE_WAIT_MS", 2000) as u64,
        ));
        let (tx, rx) = match std::env::var("RCE_GUARD_BENCH_PROFILE_MODE").as_deref() {
            Ok("reference") => (&ref_tx, &ref_rx),
            Ok("reference-epoll") => (&refe_tx, &refe_rx),
            _ => (&ours_tx, &ours_rx),
        };
        let job = match std::env::var("RCE_GUARD_BENCH_PROFILE_JOB").as_deref() {
            Ok("spawn") => Job::Spawn {
                n,
                socket_stdio: None,
            },
            _ => Job::Missing { n },
        };
        let prefix = if std::ptr::eq(tx, &ours_tx) {
            "rce-guard-notif"
        } else {
            "ref-supervisor"
        };
        let c0 = threads_cpu_ns(prefix);
        let w0 = threads_switches(prefix);
        let mut s = run_job(tx, rx, job);
        println!(
            "cpu per exec {:.1} us, context switches per exec {:.2}",
            (threads_cpu_ns(prefix) - c0) as f64 / 1e3 / n as f64,
            (threads_switches(prefix) - w0) as f64 / n as f64
        );
        s.sort();
        println!("p50 {:.1} us p99 {:.1} us", pct(&s, 0.5), pct(&s, 0.99));
        return;
    }

    println!(
        "exec_latency: {rounds} rounds x {per_round} execs per mode, modes interleaved round by round (order rotated)"
    );
    let series = |_| {
        [
            Series {
                name: "none",
                samples: vec![],
            },
            Series {
                name: "ours",
                samples: vec![],
            },
            Series {
                name: "reference",
                samples: vec![],
            },
        ]
    };
    let (mut spawn, mut missing) = (series(()), series(()));
    // CPU of the serving threads, per mode and job kind: [spawn, missing].
    let mut ours_cpu = [0u64; 2];
    let mut ref_cpu = [0u64; 2];
    let judged_before = mon.stats().execs_judged;
    let modes: [(&mpsc::Sender<Job>, &mpsc::Receiver<Reply>, &str); 3] = [
        (&none_tx, &none_rx, ""),
        (&ours_tx, &ours_rx, "rce-guard-notif"),
        (&ref_tx, &ref_rx, "ref-supervisor"),
    ];
    for round in 0..rounds {
        for k in 0..3 {
            let m = (round + k) % 3;
            let (tx, rx, threads) = modes[m];
            for (kind, job) in [
                (
                    0,
                    Job::Spawn {
                        n: per_round,
                        socket_stdio: None,
                    },
                ),
                (1, Job::Missing { n: per_round }),
            ] {
                let c0 = if threads.is_empty() {
                    0
                } else {
                    threads_cpu_ns(threads)
                };
                let samples = run_job(tx, rx, job);
                let used = if threads.is_empty() {
                    0
                } else {
                    threads_cpu_ns(threads) - c0
                };
                match m {
                    1 => ours_cpu[kind] += used,
                    2 => ref_cpu[kind] += used,
                    _ => {}
                }
                if kind == 0 {
                    spawn[m].samples.extend(samples);
                } else {
                    missing[m].samples.extend(samples);
                }
            }
        }
    }
    let judged = mon.stats().execs_judged - judged_before;

    report_latency("fork + execve(/bin/true) + wait", &spawn);
    report_latency(
        "execve of a missing file (notification round trip only)",
        &missing,
    );
    let n = (rounds * per_round) as f64;
    println!("\nserving threads' CPU per exec (schedstat; {judged} execs judged by ours in these rounds):");
    println!("  {:<10} {:>16} {:>16}", "", "fork+exec", "missing file");
    println!(
        "  {:<10} {:>13.1} us {:>13.1} us   (target <= 45 us)",
        "ours",
        ours_cpu[0] as f64 / 1e3 / n,
        ours_cpu[1] as f64 / 1e3 / n
    );
    println!(
        "  {:<10} {:>13.1} us {:>13.1} us",
        "reference",
        ref_cpu[0] as f64 / 1e3 / n,
        ref_cpu[1] as f64 / 1e3 / n
    );

    // The context path: socket stdio makes the monitor read the caller's exe, cmdline and
    // ancestry from /proc before judging.
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in server.incoming().flatten() {
            std::mem::forget(c);
        }
    });
    let n = (rounds * per_round / 5).max(100);
    let c0 = threads_cpu_ns("rce-guard-notif");
    let sock_ours = run_job(
        &ours_tx,
        &ours_rx,
        Job::Spawn {
            n,
            socket_stdio: Some(addr),
        },
    );
    let sock_cpu = threads_cpu_ns("rce-guard-notif") - c0;
    let sock_ref = run_job(
        &ref_tx,
        &ref_rx,
        Job::Spawn {
            n,
            socket_stdio: Some(addr),
        },
    );
    let sock_none = run_job(
        &none_tx,
        &none_rx,
        Job::Spawn {
            n,
            socket_stdio: Some(addr),
        },
    );
    report_latency(
        "fork + execve + wait with a TCP socket on stdio (ours also reads caller context)",
        &[
            Series {
                name: "none",
                samples: sock_none,
            },
            Series {
                name: "ours",
                samples: sock_ours,
            },
            Series {
                name: "reference",
                samples: sock_ref,
            },
        ],
    );
    println!(
        "  ours CPU per exec with context: {:.1} us",
        sock_cpu as f64 / 1e3 / n as f64
    );

    // RSS with many listener fds: one helper process, one thread (and filter) per fd.
    let exe = std::env::current_exe().expect("current_exe");
    let rss_before = rss_kib();
    let open_before = mon.stats().listener_fds_open;
    let mut holder = Command::new(&exe)
        .args([
            "--hold-listeners",
            &hold.to_string(),
            socket.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder");
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("holder ready");
    let t0 = Instant::now();
    while mon.stats().listener_fds_open < open_before + hold as u64
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let open = mon.stats().listener_fds_open;
    let rss_with = rss_kib();
    println!("\nRSS with {open} listener fds open: {:.1} MiB (process total; {:.1} MiB before the holder, {:.1} MiB before the monitor started) (target < 32 MiB)",
        rss_with as f64 / 1024.0, rss_before as f64 / 1024.0, rss_before_monitor as f64 / 1024.0);
    println!("  watched containers: {}", mon.watched().len());
    let busy = run_job(&ours_tx, &ours_rx, Job::Missing { n: 1000 });
    let mut s = busy.clone();
    s.sort();
    println!(
        "  ours execve(missing) with {open} idle fds in the epoll set: p50 {:.1} us, p99 {:.1} us",
        pct(&s, 0.5),
        pct(&s, 0.99)
    );

    // Exec storms: several processes exec at once, each with its own listener (like separate
    // containers), then several sharing one listener (one busy container).
    let storm_n = 2000;
    let start = |delay_ms: u128| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
            + delay_ms
    };
    let own: Vec<std::process::Child> = (0..4)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--storm-child",
                    &storm_n.to_string(),
                    &start(500).to_string(),
                    socket.to_str().expect("utf-8"),
                ])
                .arg(format!("storm-{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("storm child")
        })
        .collect();
    report_storm("4 processes, one listener each", own);
    ours_tx
        .send(Job::StormChildren {
            exe: exe.clone(),
            count: 4,
            n: storm_n,
            start_at_ms: start(500),
        })
        .expect("job");
    let shared = match ours_rx.recv().expect("reply") {
        Reply::Children(c) => c,
        Reply::Samples(_) => unreachable!(),
    };
    report_storm("4 processes sharing one listener", shared);

    let _ = holder.stdin.take();
    let _ = holder.wait();
    let t0 = Instant::now();
    while mon.stats().listener_fds_open > open_before && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = mon.stats();
    println!(
        "\nafter the holder exited: {} listener fds open (POLLHUP drops); stats: {}",
        st.listener_fds_open,
        serde_json::to_string(&st).expect("json")
    );
}

fn report_latency(title: &str, series: &[Series]) {
    println!("\n{title}:");
    let sorted: Vec<Vec<Duration>> = series.iter().map(Series::sorted).collect();
    let (b50, b99) = (pct(&sorted[0], 0.5), pct(&sorted[0], 0.99));
    println!(
        "  {:<10} {:>8} {:>9} {:>9} {:>12} {:>12}",
        "mode", "n", "p50 us", "p99 us", "added p50", "added p99"
    );
    for (s, v) in series.iter().zip(&sorted) {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "  {:<10} {:>8} {:>9.1} {:>9.1} {:>12.1} {:>12.1}",
            s.name,
            v.len(),
            p50,
            p99,
            p50 - b50,
            p99 - b99
        );
    }
    let added = |v: &Vec<Duration>, p: f64, base: f64| pct(v, p) - base;
    let r50 = added(&sorted[1], 0.5, b50) / added(&sorted[2], 0.5, b50);
    let r99 = added(&sorted[1], 0.99, b99) / added(&sorted[2], 0.99, b99);
    println!("  ours / reference added latency: p50 {r50:.2}x (target <= 1.3x), p99 {r99:.2}x (target <= 2x)");
}

fn report_storm(title: &str, children: Vec<std::process::Child>) {
    let mut max = 0f64;
    let mut p99s = Vec::new();
    let mut total = 0usize;
    for c in children {
        let out = c.wait_with_output().expect("storm child");
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() == 4 {
            max = max.max(f[0]);
            p99s.push(f[1]);
            total += f[3] as usize;
        } else {
            println!("  storm child said: {text:?} ({:?})", out.status);
        }
    }
    let worst_p99 = p99s.iter().cloned().fold(0f64, f64::max);
    println!("\nexec storm, {title}: {total} execve, max wait {:.2} ms (target < 10 ms), worst p99 {:.1} us", max / 1e3, worst_p99);
}

/// `--storm-child N START_MS [SOCKET ID]`: with SOCKET, install a filter and hand it over
/// first; then at START_MS run N execve(missing) and print "max p99 p50 n" in microseconds.
fn storm_child(n: usize, start_at_ms: u128, socket: Option<&String>) {
    if let Some(sock) = socket {
        let id = std::env::args().next_back().unwrap_or_default();
        let fd = filter::install_exec_notify_filter().expect("filter");
        hand_over(Path::new(sock), &fd, &payload(&id, std::process::id())).expect("hand over");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    if start_at_ms > now {
        std::thread::sleep(Duration::from_millis((start_at_ms - now) as u64));
    }
    let mut s = exec_missing(n);
    s.sort();
    let max = s.last().map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0);
    println!(
        "{max:.1} {:.1} {:.1} {}",
        pct(&s, 0.99),
        pct(&s, 0.5),
        s.len()
    );
}

/// `--hold-listeners N SOCKET`: N threads, each with its own filter, handed over; then wait
/// for stdin to close.
fn hold_listeners(n: usize, socket: &Path) {
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        let socket = socket.to_path_buf();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let fd = filter::install_exec_notify_filter().expect("filter");
                hand_over(
                    &socket,
                    &fd,
                    &payload(&format!("hold-{i:04}"), std::process::id()),
                )
                .expect("hand over");
                drop(fd);
                let _ = tx.send(());
                loop {
                    std::thread::park();
                }
            })
            .expect("holder thread");
    }
    for _ in 0..n {
        rx.recv().expect("holder thread ready");
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}
