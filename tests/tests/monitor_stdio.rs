//! The monitor against real processes (no containerd): `notify-testee` installs the
//! exec-notify filter on itself, hands the fd over like runc, and runs execs with various
//! stdio. The judge must see each exec with the right program, argv, stdio and identity.

mod monitor_common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use monitor_common::*;
use rce_guard::exec_event::{ExecEvent, ExecSyscall, SocketFamily, SocketProtocol, StdioKind};
use rce_guard::monitor::ListenerEvent;

const WITHIN: Duration = Duration::from_secs(30);

/// Accept one connection and read it to EOF in the background.
fn accept_and_read(listener: TcpListener) -> mpsc::Receiver<(SocketAddr, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        let _ = tx.send((peer, text));
    });
    rx
}

fn all_stdio(e: &ExecEvent, expected: &StdioKind) {
    for (i, s) in e.stdio.iter().enumerate() {
        assert_eq!(s, expected, "fd {i} of {} {:?}", e.program, e.args);
    }
}

#[test]
fn tcp_socket_shell_is_judged_with_addresses_args_identity_and_ancestry() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let conn = accept_and_read(server);
    let script = "echo hello-from-shell; /bin/echo args-ok one two";
    let out = run_testee(
        mon.testee()
            .args([
                "--id",
                "ctr-tcp",
                "--pod",
                "shop/web-7d9",
                "--container",
                "web",
                "--image",
                "registry.test/web:1",
            ])
            .args([
                "--stdio",
                &format!("tcp:{server_addr}"),
                "--",
                "spawn",
                "/bin/sh",
                "-c",
                script,
            ]),
        WITHIN,
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("status: exit=0"),
        "{}",
        stdout_of(&out)
    );
    let (shell_addr, text) = conn.recv_timeout(WITHIN).expect("shell output");
    assert!(text.contains("hello-from-shell"), "{text}");
    assert!(text.contains("args-ok one two"), "{text}");

    let sock = StdioKind::Socket {
        family: SocketFamily::Inet,
        protocol: SocketProtocol::Tcp,
        local: Some(shell_addr),
        peer: Some(server_addr),
    };
    let shells = judge.calls_for("sh");
    assert_eq!(shells.len(), 1, "{shells:#?}");
    let (c, sh) = &shells[0];
    assert_eq!(sh.program, "/bin/sh");
    assert_eq!(sh.args, ["/bin/sh", "-c", script]);
    assert!(!sh.args_truncated);
    assert_eq!(sh.syscall, ExecSyscall::Execve);
    all_stdio(sh, &sock);
    assert!(sh.stdio.iter().all(StdioKind::is_network_socket));
    assert_eq!(c.container_id, "ctr-tcp");
    assert_eq!(c.identity.pod_namespace, "shop");
    assert_eq!(c.identity.pod_name, "web-7d9");
    assert_eq!(c.identity.container_name, "web");
    assert_eq!(c.identity.image, "registry.test/web:1");
    assert_eq!(c.metadata, "rce-guard/v1");
    // The caller is the testee's forked child; its parent, the testee, is the "init".
    assert_eq!(sh.caller.pid, sh.pid);
    assert!(sh.caller.exe.ends_with("notify-testee"), "{:?}", sh.caller);
    assert_eq!(sh.ancestors.len(), 1, "{:?}", sh.ancestors);
    assert_eq!(sh.ancestors[0].pid, c.init_pid);
    assert_eq!(sh.parent_pid, c.init_pid);

    let echoes = judge.calls_for("echo");
    assert_eq!(echoes.len(), 1, "{echoes:#?}");
    let echo = &echoes[0].1;
    assert_eq!(echo.program, "/bin/echo");
    assert_eq!(echo.args, ["/bin/echo", "args-ok", "one", "two"]);
    all_stdio(echo, &sock);
    // echo's caller is a child of the shell: ancestors are the shell, then the init.
    let chain: Vec<i32> = echo.ancestors.iter().map(|a| a.pid).collect();
    assert_eq!(chain.last(), Some(&c.init_pid));
    assert_eq!(chain.len(), 2, "{:?}", echo.ancestors);
    assert_eq!(echo.ancestors[0].cmdline, ["/bin/sh", "-c", script]);
    mon.wait_all_closed(WITHIN);
}

#[test]
fn pipes_on_stdio_are_pipes() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let mut cmd = mon.testee();
    cmd.args(["--", "spawn", "/bin/true"]);
    let out = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = out.wait_with_output().unwrap();
    assert_success(&out);
    let calls = judge.calls_for("true");
    assert_eq!(calls.len(), 1);
    all_stdio(&calls[0].1, &StdioKind::Pipe);
    // No socket on stdio: the caller's context was not collected (it costs /proc reads).
    assert!(calls[0].1.ancestors.is_empty());
    assert!(calls[0].1.parent_pid > 0);
}

#[test]
fn dev_null_and_tty_are_char_devices() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-null",
            "--stdio",
            "null",
            "--",
            "spawn",
            "/bin/true",
        ]),
        WITHIN,
    );
    assert_success(&out);
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-tty",
            "--stdio",
            "tty",
            "--",
            "spawn",
            "/bin/echo",
            "via-tty",
        ]),
        WITHIN,
    );
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("tty: via-tty"),
        "{}",
        stdout_of(&out)
    );
    let calls = judge.calls();
    let null = calls
        .iter()
        .find(|(c, _)| c.container_id == "ctr-null")
        .expect("null exec judged");
    all_stdio(&null.1, &StdioKind::CharDevice);
    let tty = calls
        .iter()
        .find(|(c, _)| c.container_id == "ctr-tty")
        .expect("tty exec judged");
    all_stdio(&tty.1, &StdioKind::CharDevice);
    assert_eq!(tty.1.args, ["/bin/echo", "via-tty"]);
}

#[test]
fn regular_file_and_unix_socketpair_are_not_network_sockets() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-file",
            "--stdio",
            &format!("file:{}", file.display()),
            "--",
            "spawn",
            "/bin/echo",
            "to-file",
        ]),
        WITHIN,
    );
    assert_success(&out);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "to-file\n");
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-unix",
            "--stdio",
            "unixpair",
            "--",
            "spawn",
            "/bin/true",
        ]),
        WITHIN,
    );
    assert_success(&out);
    let calls = judge.calls();
    let f = calls
        .iter()
        .find(|(c, _)| c.container_id == "ctr-file")
        .expect("file exec judged");
    all_stdio(&f.1, &StdioKind::RegularFile);
    let u = calls
        .iter()
        .find(|(c, _)| c.container_id == "ctr-unix")
        .expect("unix exec judged");
    let unix = StdioKind::Socket {
        family: SocketFamily::Unix,
        protocol: SocketProtocol::Stream,
        local: None,
        peer: None,
    };
    all_stdio(&u.1, &unix);
    assert!(!u.1.stdio[0].is_network_socket());
}

#[test]
fn udp_socket_stdio_is_a_network_socket() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(WITHIN)).unwrap();
    let addr = udp.local_addr().unwrap();
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-udp",
            "--stdio",
            &format!("udp:{addr}"),
            "--",
            "exec",
            "/bin/echo",
            "udp-hello",
        ]),
        WITHIN,
    );
    assert_success(&out);
    let mut buf = [0u8; 64];
    let (n, from) = udp
        .recv_from(&mut buf)
        .expect("datagram from the exec'd echo");
    assert_eq!(&buf[..n], b"udp-hello\n");
    let calls = judge.calls_for("echo");
    assert_eq!(calls.len(), 1);
    let e = &calls[0].1;
    let sock = StdioKind::Socket {
        family: SocketFamily::Inet,
        protocol: SocketProtocol::Udp,
        local: Some(from),
        peer: Some(addr),
    };
    all_stdio(e, &sock);
    assert!(e.stdio[1].is_network_socket());
    // exec in place: the caller is the testee itself, the container's init.
    assert_eq!(e.pid, calls[0].0.init_pid);
}

#[test]
fn execveat_with_empty_path_reports_the_file_behind_the_fd() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let conn = accept_and_read(server);
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-at",
            "--stdio",
            &format!("tcp:{addr}"),
            "--",
            "execveat-empty",
            "/bin/echo",
            "echo",
            "via-execveat",
        ]),
        WITHIN,
    );
    assert_success(&out);
    let (_, text) = conn.recv_timeout(WITHIN).unwrap();
    assert_eq!(text, "via-execveat\n");
    let calls = judge.calls_for("echo");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let e = &calls[0].1;
    assert_eq!(e.syscall, ExecSyscall::Execveat);
    let real = std::fs::canonicalize("/bin/echo").unwrap();
    assert_eq!(e.program, real.to_str().unwrap());
    assert_eq!(e.args, ["echo", "via-execveat"]);
    assert!(e.stdio.iter().all(StdioKind::is_network_socket));
}

#[test]
fn crun_style_split_payload_is_adopted_and_reported_to_the_hook() {
    let judge = RecordingJudge::allowing();
    let (tx, rx) = mpsc::channel::<(String, String, usize)>();
    let tx = std::sync::Mutex::new(tx);
    let mon = TestMonitor::start_with(judge.clone(), move |cfg| {
        cfg.on_listener = Some(std::sync::Arc::new(move |ev: ListenerEvent<'_>| {
            let (kind, c, n) = match ev {
                ListenerEvent::Adopted {
                    container,
                    listener_fds,
                } => ("adopted", container, listener_fds),
                ListenerEvent::Closed {
                    container,
                    listener_fds,
                } => ("closed", container, listener_fds),
            };
            let _ = tx
                .lock()
                .unwrap()
                .send((kind.to_string(), c.container_id.clone(), n));
        }));
    });
    let out = run_testee(
        mon.testee().args([
            "--id",
            "ctr-crun",
            "--pod",
            "ops/tool-1",
            "--crun-style",
            "--split-payload",
            "--",
            "spawn",
            "/bin/true",
        ]),
        WITHIN,
    );
    assert_success(&out);
    let calls = judge.calls_for("true");
    assert_eq!(calls.len(), 1);
    let c = &calls[0].0;
    assert_eq!(c.container_id, "ctr-crun");
    assert_eq!(
        (
            c.identity.pod_namespace.as_str(),
            c.identity.pod_name.as_str()
        ),
        ("ops", "tool-1")
    );
    assert_eq!(c.metadata, "");
    assert!(c.init_pid > 0);
    assert_eq!(
        rx.recv_timeout(WITHIN).unwrap(),
        ("adopted".into(), "ctr-crun".into(), 1)
    );
    assert_eq!(
        rx.recv_timeout(WITHIN).unwrap(),
        ("closed".into(), "ctr-crun".into(), 0)
    );
    assert!(mon.handle.watched().is_empty());
    let s = mon.handle.stats();
    assert_eq!(
        (s.listeners_adopted, s.listeners_closed, s.listener_fds_open),
        (1, 1, 0)
    );
}

#[test]
fn watched_lists_each_container_with_its_fd_count() {
    let judge = RecordingJudge::allowing();
    let mon = TestMonitor::start(judge.clone());
    // Two "runc exec" fds for one container, one for another, all alive (sleeping).
    let mut kids = Vec::new();
    for id in ["ctr-a", "ctr-a", "ctr-b"] {
        let mut cmd = mon.testee();
        cmd.args(["--id", id, "--", "spawn", "/bin/sleep", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        kids.push(cmd.spawn().unwrap());
    }
    wait_until(WITHIN, "three listeners", || {
        mon.handle.stats().listener_fds_open == 3
    });
    let w = mon.handle.watched();
    let counts: Vec<(&str, usize)> = w
        .iter()
        .map(|s| (s.container_id.as_str(), s.listener_fds))
        .collect();
    assert_eq!(counts, [("ctr-a", 2), ("ctr-b", 1)]);
    assert_eq!(w[0].identity.pod_name, "web-7d9");
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    // Killing the testee leaves its sleeping child holding the filter; end those too.
    wait_until(WITHIN, "sleepers judged", || {
        judge.calls_for("sleep").len() == 3
    });
    for (_, e) in judge.calls_for("sleep") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(e.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    mon.wait_all_closed(WITHIN);
}
