//! Plays "runc + a container process" for the monitor's integration tests and benchmark: it
//! installs the exec-notify filter on itself (as runc would from our NOTIFY rule), hands the
//! listener fd to the monitor's socket with a runc-like state payload, closes its own copy
//! (as runc does), then runs one scenario whose execs the monitor must answer.
//!
//! ```text
//! notify-testee --socket PATH [--id ID] [--pod NS/NAME] [--container NAME] [--image IMG]
//!               [--crun-style] [--split-payload] [--user UID] [--stdio SPEC] -- MODE [ARGS...]
//! SPEC: inherit | null | file:PATH | tty | unixpair | tcp:ADDR | udp:ADDR
//! MODE: spawn PROG ARGS..   run PROG as a child with SPEC stdio; report its status
//!       exec PROG ARGS..    replace this process (execve) with SPEC stdio
//!       execveat-empty PROG ARGS..  open PROG, then execveat(fd, "", AT_EMPTY_PATH)
//!       bad-argv PROG       execve with an argv pointer into unmapped memory
//!       bad-argv-string PROG  execve with argv[1] pointing into unmapped memory
//!       huge-arg PROG BYTES   spawn PROG with one argument of BYTES bytes
//!       many-args PROG N      spawn PROG with N arguments
//!       none                hand over, then exit
//! ```
//! Reports are lines on this process's own stdout (`status: exit=0`, `errno: 14`, ...),
//! or, in the exec modes after stdio was replaced, on a saved copy of stderr.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use rce_guard::monitor::{filter, sys};

#[derive(Default)]
struct Opts {
    socket: String,
    id: String,
    pod_ns: String,
    pod_name: String,
    container: String,
    image: String,
    crun_style: bool,
    split_payload: bool,
    user: Option<u32>,
    stdio: String,
    mode: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        id: "testee0000".into(),
        pod_ns: "shop".into(),
        pod_name: "web-7d9".into(),
        container: "web".into(),
        image: "registry.test/web:1".into(),
        stdio: "inherit".into(),
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => o.socket = value()?,
            "--id" => o.id = value()?,
            "--pod" => {
                let v = value()?;
                let (ns, name) = v.split_once('/').ok_or("--pod wants NS/NAME")?;
                o.pod_ns = ns.into();
                o.pod_name = name.into();
            }
            "--container" => o.container = value()?,
            "--image" => o.image = value()?,
            "--crun-style" => o.crun_style = true,
            "--split-payload" => o.split_payload = true,
            "--user" => o.user = Some(value()?.parse().map_err(|e| format!("--user: {e}"))?),
            "--stdio" => o.stdio = value()?,
            "--" => {
                o.mode = args.collect();
                break;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.socket.is_empty() || o.mode.is_empty() {
        return Err("need --socket and a MODE after --".into());
    }
    Ok(o)
}

/// A state payload shaped like runc's (compact) or crun's (pretty, exec-style pid 0).
fn payload(o: &Opts) -> Vec<u8> {
    let pid = std::process::id();
    let annotations = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": o.container,
        "io.kubernetes.cri.sandbox-id": format!("sandbox-{}", o.id),
        "io.kubernetes.cri.sandbox-name": o.pod_name,
        "io.kubernetes.cri.sandbox-namespace": o.pod_ns,
        "io.kubernetes.cri.sandbox-uid": "0f9c5b1e-7d1a-4c59-9a43-0d5d2f6c1a11",
        "io.kubernetes.cri.image-name": o.image,
    });
    if o.crun_style {
        let v = serde_json::json!({
            "ociVersion": "0.2.0", "fds": ["seccompFd"], "pid": 0,
            "state": {"ociVersion": "0.2.0", "id": o.id, "status": "running", "pid": pid,
                      "bundle": ".", "annotations": annotations}
        });
        serde_json::to_vec_pretty(&v).expect("json")
    } else {
        let v = serde_json::json!({
            "ociVersion": "1.0.2-dev", "fds": ["seccompFd"], "pid": pid, "metadata": "rce-guard/v1",
            "state": {"ociVersion": "1.0.2-dev", "id": o.id, "status": "creating", "pid": pid,
                      "bundle": format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}", o.id),
                      "annotations": annotations}
        });
        serde_json::to_vec(&v).expect("json")
    }
}

fn hand_over(o: &Opts, listener: &OwnedFd) -> std::io::Result<()> {
    let body = payload(o);
    let stream = UnixStream::connect(&o.socket)?;
    if o.split_payload {
        // The fd with the first bytes, then the rest in pieces, as the spec allows.
        let (head, tail) = body.split_at(7);
        rce_guard::monitor::send_handover(&stream, head, &[listener.as_fd()])?;
        for piece in tail.chunks(13) {
            std::thread::sleep(Duration::from_millis(2));
            (&stream).write_all(piece)?;
        }
        Ok(())
    } else {
        rce_guard::monitor::send_handover(&stream, &body, &[listener.as_fd()])
    }
}

/// Three fds for the scenario's stdio, plus whatever must stay alive next to them.
struct StdioSet {
    fds: [OwnedFd; 3],
    tty_master: Option<OwnedFd>,
}

fn make_stdio(spec: &str) -> Result<Option<StdioSet>, String> {
    let three = |fd: OwnedFd| -> Result<[OwnedFd; 3], String> {
        let e = |e: std::io::Error| e.to_string();
        Ok([fd.try_clone().map_err(e)?, fd.try_clone().map_err(e)?, fd])
    };
    let set = |fds| {
        Ok(Some(StdioSet {
            fds,
            tty_master: None,
        }))
    };
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "inherit" => Ok(None),
        "null" => {
            let f = File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| e.to_string())?;
            set(three(f.into())?)
        }
        "file" => {
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(arg);
            set(three(f.map_err(|e| format!("{arg}: {e}"))?.into())?)
        }
        "tcp" => set(three(
            TcpStream::connect(arg)
                .map_err(|e| format!("tcp {arg}: {e}"))?
                .into(),
        )?),
        "udp" => {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            s.connect(arg).map_err(|e| format!("udp {arg}: {e}"))?;
            set(three(s.into())?)
        }
        "unixpair" => {
            let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
            // Keep our end open (leaked on purpose) so the child's writes do not fail.
            std::mem::forget(ours);
            set(three(theirs.into())?)
        }
        "tty" => {
            use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
            let e = |e: rustix::io::Errno| e.to_string();
            let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).map_err(e)?;
            grantpt(&master).map_err(e)?;
            unlockpt(&master).map_err(e)?;
            let name = ptsname(&master, Vec::new()).map_err(e)?;
            let slave = File::options()
                .read(true)
                .write(true)
                .open(name.to_str().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            Ok(Some(StdioSet {
                fds: three(slave.into())?,
                tty_master: Some(master),
            }))
        }
        other => Err(format!("unknown stdio {other}")),
    }
}

fn apply_stdio(cmd: &mut Command, set: Option<&StdioSet>) -> Result<(), String> {
    if let Some(s) = set {
        let c = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
        cmd.stdin(c(&s.fds[0])?)
            .stdout(c(&s.fds[1])?)
            .stderr(c(&s.fds[2])?);
    }
    Ok(())
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn report_status(result: std::io::Result<std::process::ExitStatus>) {
    match result {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => report(&format!("status: exit={c}")),
            (_, Some(s)) => report(&format!("status: signal={s}")),
            _ => report("status: unknown"),
        },
        Err(e) => report(&format!(
            "spawn-error: errno={}",
            e.raw_os_error().unwrap_or(-1)
        )),
    }
}

/// Relay what the child writes to the tty onto our stdout, prefixed.
fn relay_tty(master: &OwnedFd) {
    let Ok(dup) = master.try_clone() else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(File::from(dup)).lines() {
            match line {
                Ok(l) => report(&format!("tty: {l}")),
                Err(_) => break, // EIO once the last slave closes
            }
        }
    });
}

fn run(o: Opts) -> Result<(), String> {
    let listener =
        filter::install_exec_notify_filter().map_err(|e| format!("cannot install filter: {e}"))?;
    if let Some(uid) = o.user {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
    }
    if let Err(e) = hand_over(&o, &listener) {
        // A refusing monitor may close before we finished sending.
        report(&format!("handover-error: {e}"));
        return Err(format!("handover to {}: {e}", o.socket));
    }
    // runc closes its copy: from now on the monitor's is the only one.
    drop(listener);
    report("handed-over");

    let stdio = make_stdio(&o.stdio)?;
    let mode = o.mode[0].as_str();
    let rest = &o.mode[1..];
    let prog = rest.first().cloned().unwrap_or_default();
    match mode {
        "none" => Ok(()),
        "spawn" => {
            if let Some(m) = stdio.as_ref().and_then(|s| s.tty_master.as_ref()) {
                relay_tty(m);
            }
            let mut cmd = Command::new(&prog);
            cmd.args(&rest[1..]);
            apply_stdio(&mut cmd, stdio.as_ref())?;
            let status = cmd.status();
            drop(cmd);
            drop(stdio);
            // Give the tty relay a moment to drain.
            std::thread::sleep(Duration::from_millis(50));
            report_status(status);
            Ok(())
        }
        "exec" => {
            let saved_err = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&prog);
            cmd.args(&rest[1..]);
            apply_stdio(&mut cmd, stdio.as_ref())?;
            let err = cmd.exec();
            let _ = writeln!(
                File::from(saved_err),
                "exec-error: errno={}",
                err.raw_os_error().unwrap_or(-1)
            );
            Err("exec failed".into())
        }
        "execveat-empty" => {
            let saved_err = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?;
            let file = File::open(&prog).map_err(|e| format!("{prog}: {e}"))?;
            let argv: Vec<CString> = rest[1..]
                .iter()
                .map(|a| CString::new(a.as_str()).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            let env: Vec<CString> = vec![CString::new("PATH=/usr/bin:/bin").expect("static")];
            if let Some(s) = &stdio {
                let e = |e: rustix::io::Errno| e.to_string();
                rustix::stdio::dup2_stdin(&s.fds[0]).map_err(e)?;
                rustix::stdio::dup2_stdout(&s.fds[1]).map_err(e)?;
                rustix::stdio::dup2_stderr(&s.fds[2]).map_err(e)?;
            }
            let err = nix::unistd::execveat(
                file.as_fd(),
                c"",
                &argv,
                &env,
                nix::fcntl::AtFlags::AT_EMPTY_PATH,
            )
            .unwrap_err();
            let _ = writeln!(File::from(saved_err), "exec-error: errno={}", err as i32);
            Err("execveat failed".into())
        }
        "bad-argv" => {
            let path = CString::new(prog).map_err(|e| e.to_string())?;
            // Page 1 is below mmap_min_addr: never mapped.
            let err = sys::execve_with_argv_address(&path, 0x1000);
            report(&format!("errno: {}", err.raw_os_error().unwrap_or(-1)));
            Ok(())
        }
        "bad-argv-string" => {
            let path = CString::new(prog).map_err(|e| e.to_string())?;
            let table: Vec<usize> = vec![path.as_ptr() as usize, 0x1000, 0];
            let err = sys::execve_with_argv_address(&path, table.as_ptr() as usize);
            report(&format!("errno: {}", err.raw_os_error().unwrap_or(-1)));
            Ok(())
        }
        "huge-arg" | "many-args" => {
            let n: usize = rest
                .get(1)
                .and_then(|v| v.parse().ok())
                .ok_or("need a number")?;
            let mut cmd = Command::new(&prog);
            if mode == "huge-arg" {
                cmd.arg("A".repeat(n));
            } else {
                cmd.args((0..n).map(|i| format!("arg{i}")));
            }
            apply_stdio(&mut cmd, stdio.as_ref())?;
            report_status(cmd.status());
            Ok(())
        }
        other => Err(format!("unknown mode {other}")),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("notify-testee: {e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify-testee: {e}");
            ExitCode::FAILURE
        }
    }
}
