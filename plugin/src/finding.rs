//! The finding: one JSON object per reported exec, shaped like Security Command Center's
//! "Execution: Possible Remote Command Execution Detected" so that existing tooling and habits
//! carry over, wrapped in the keys Cloud Logging lifts out of a JSON log line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::exec_event::{ExecEvent, ProcessInfo, SocketProtocol, StdioKind};
use crate::identity::ContainerIdentity;
use crate::rule::{Decision, Severity};
use crate::verdict::Action;

pub const CATEGORY: &str = "Execution: Possible Remote Command Execution Detected";

/// containerd splits log lines over 16 KiB; keep argv in a finding well below that.
const MAX_ARGS_BYTES: usize = 4096;
const MAX_ANCESTOR_ARGS_BYTES: usize = 512;

/// Node-level facts copied into every finding.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    pub node_name: String,
    pub cluster_resource_name: String,
    pub project_display_name: String,
}

/// Size and digest of the executed binary, computed off the exec path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BinaryDigest {
    pub size: u64,
    pub sha256: String,
}

/// Everything the judge knew when it decided; the sink turns it into a [`FindingLine`].
#[derive(Debug, Clone)]
pub struct Observation {
    pub event: ExecEvent,
    pub identity: ContainerIdentity,
    /// Host pid of the container's init, to resolve the binary from the container's root.
    pub init_pid: i32,
    pub decision: Decision,
    pub time: SystemTime,
}

impl Observation {
    /// Findings with equal keys within the dedup window are merged.
    pub fn dedup_key(&self) -> String {
        let peer = self
            .remote()
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        format!(
            "{}\0{}\0{}\0{}\0{:?}",
            self.identity.container_id,
            self.event.program,
            self.event.args.join("\u{1f}"),
            peer,
            self.decision.action
        )
    }

    /// The first matching stdio socket's local and peer address (stdin first).
    fn remote(&self) -> Option<(Option<SocketAddr>, SocketAddr)> {
        self.decision
            .matched_fds
            .iter()
            .find_map(|&i| match &self.event.stdio[i] {
                StdioKind::Socket {
                    local,
                    peer: Some(peer),
                    ..
                } => Some((*local, *peer)),
                _ => None,
            })
    }
}

/// One stdout/file line.
#[derive(Debug, Clone, Serialize)]
pub struct FindingLine {
    /// Cloud Logging severity (CRITICAL for critical findings, ERROR for high ones).
    pub severity: &'static str,
    pub message: String,
    pub time: String,
    #[serde(rename = "logging.googleapis.com/labels")]
    pub labels: BTreeMap<&'static str, String>,
    #[serde(rename = "logging.googleapis.com/insertId")]
    pub insert_id: String,
    /// What we did: `allowed`, `blocked`, `killed`.
    pub action: &'static str,
    /// How many identical execs this line stands for (merged within the dedup window).
    pub count: u64,
    pub finding: Finding,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_name: String,
    pub state: &'static str,
    pub category: &'static str,
    pub finding_class: &'static str,
    pub severity: Severity,
    pub event_time: String,
    pub create_time: String,
    pub mitre_attack: MitreAttack,
    pub description: String,
    pub next_steps: &'static str,
    pub processes: Vec<Process>,
    pub connections: Vec<Connection>,
    pub containers: Vec<Container>,
    pub kubernetes: Kubernetes,
    pub source_properties: BTreeMap<&'static str, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MitreAttack {
    pub primary_tactic: &'static str,
    pub primary_techniques: Vec<&'static str>,
    pub additional_techniques: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub name: String,
    pub binary: Binary,
    pub args: Vec<String>,
    pub arguments_truncated: bool,
    pub pid: i32,
    pub parent_pid: i32,
    /// Our addition: the process that called exec, and its ancestors up to the container init.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Binary {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ancestor {
    pub pid: i32,
    pub parent_pid: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binary_path: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub destination_ip: String,
    pub destination_port: u16,
    pub source_ip: String,
    pub source_port: u16,
    pub protocol: &'static str,
    /// Our addition: which stdio fds carry this socket.
    pub stdio_fds: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub uri: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kubernetes {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Allow => "allowed",
        Action::Deny => "blocked",
        Action::Kill => "killed",
    }
}

fn protocol_word(p: SocketProtocol) -> &'static str {
    match p {
        SocketProtocol::Tcp => "TCP",
        SocketProtocol::Udp => "UDP",
        _ => "OTHER",
    }
}

/// Keeps whole arguments while they fit in `budget` bytes; the rest is cut (flagged).
fn bounded_args(args: &[String], budget: usize) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut used = 0;
    for a in args {
        if used + a.len() > budget {
            let room = budget.saturating_sub(used);
            let mut cut = room.min(a.len());
            while !a.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut > 0 {
                out.push(a[..cut].to_string());
            }
            return (out, true);
        }
        used += a.len();
        out.push(a.clone());
    }
    (out, false)
}

fn ancestor(p: &ProcessInfo) -> Ancestor {
    Ancestor {
        pid: p.pid,
        parent_pid: p.parent_pid,
        binary_path: p.exe.clone(),
        args: bounded_args(&p.cmdline, MAX_ANCESTOR_ARGS_BYTES).0,
    }
}

/// Builds the line for an observation seen `count` times.
pub fn build(
    obs: &Observation,
    node: &NodeContext,
    binary: Option<&BinaryDigest>,
    count: u64,
) -> FindingLine {
    let ev = &obs.event;
    let id = &obs.identity;
    let action = action_word(obs.decision.action);
    let time = rfc3339(obs.time);
    let finding_id = finding_id(obs);

    // One connection per distinct socket on stdio.
    let mut connections: Vec<Connection> = Vec::new();
    for &fd in &obs.decision.matched_fds {
        if let StdioKind::Socket {
            protocol,
            local,
            peer,
            ..
        } = &ev.stdio[fd]
        {
            let (dst, src) = (
                peer.map(|p| (p.ip().to_string(), p.port())),
                local.map(|l| (l.ip().to_string(), l.port())),
            );
            let (dip, dport) = dst.unwrap_or_default();
            let (sip, sport) = src.unwrap_or_default();
            match connections.iter_mut().find(|c| {
                c.destination_ip == dip
                    && c.destination_port == dport
                    && c.source_ip == sip
                    && c.source_port == sport
            }) {
                Some(c) => c.stdio_fds.push(fd),
                None => connections.push(Connection {
                    destination_ip: dip,
                    destination_port: dport,
                    source_ip: sip,
                    source_port: sport,
                    protocol: protocol_word(*protocol),
                    stdio_fds: vec![fd],
                }),
            }
        }
    }

    let (args, args_cut) = bounded_args(&ev.args, MAX_ARGS_BYTES);
    let process_name = ev
        .args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_else(|| ev.program.rsplit('/').next().unwrap_or("").to_string());
    let mut ancestors = vec![ancestor(&ev.caller)];
    ancestors.extend(ev.ancestors.iter().map(ancestor));

    let mut sp: BTreeMap<&'static str, serde_json::Value> = BTreeMap::new();
    sp.insert("Pod_Namespace", id.pod_namespace.clone().into());
    sp.insert("Pod_Name", id.pod_name.clone().into());
    sp.insert("Container_Name", id.container_name.clone().into());
    sp.insert("Container_Image_Uri", id.image.clone().into());
    sp.insert("VM_Instance_Name", node.node_name.clone().into());
    sp.insert("Process_Binary_Fullpath", ev.program.clone().into());
    sp.insert("Action", action.into());
    sp.insert(
        "Matched_Stdio_Fds",
        serde_json::json!(obs.decision.matched_fds),
    );
    if let Some(c) = connections.first() {
        sp.insert(
            "Reverse_Shell_Stdin_Redirection_Dst_Ip",
            c.destination_ip.clone().into(),
        );
        sp.insert(
            "Reverse_Shell_Stdin_Redirection_Dst_Port",
            c.destination_port.into(),
        );
        sp.insert(
            "Reverse_Shell_Stdin_Redirection_Src_Ip",
            c.source_ip.clone().into(),
        );
        sp.insert(
            "Reverse_Shell_Stdin_Redirection_Src_Port",
            c.source_port.into(),
        );
    }
    if !node.project_display_name.is_empty() {
        sp.insert(
            "Project_Display_Name",
            node.project_display_name.clone().into(),
        );
    }

    let remote = connections
        .first()
        .map(|c| format!(" from {}:{}", c.destination_ip, c.destination_port))
        .unwrap_or_default();
    let words = shell_words(&args);
    let message = format!(
        "{CATEGORY}: {}{}{words} in pod {}/{} container {}{remote} [{action}]",
        ev.program,
        if words.is_empty() { "" } else { " " },
        id.pod_namespace,
        id.pod_name,
        id.container_name,
    );
    let mut labels = BTreeMap::new();
    labels.insert("rce_guard_action", action.to_string());
    labels.insert("pod_namespace", id.pod_namespace.clone());
    labels.insert("pod_name", id.pod_name.clone());
    labels.insert("container_name", id.container_name.clone());

    FindingLine {
        severity: match obs.decision.severity {
            Severity::Critical => "CRITICAL",
            Severity::High => "ERROR",
        },
        message,
        time: time.clone(),
        labels,
        insert_id: finding_id.clone(),
        action,
        count,
        finding: Finding {
            name: format!("findings/{finding_id}"),
            resource_name: node.cluster_resource_name.clone(),
            state: "ACTIVE",
            category: CATEGORY,
            finding_class: "THREAT",
            severity: obs.decision.severity,
            event_time: time.clone(),
            create_time: rfc3339(SystemTime::now()),
            mitre_attack: MitreAttack {
                primary_tactic: "EXECUTION",
                primary_techniques: vec!["COMMAND_AND_SCRIPTING_INTERPRETER"],
                additional_techniques: vec!["T1059"],
            },
            description: format!(
                "A process executed {} with {} connected to a network socket{remote}: a reverse shell or remote command execution. rce-guard {action} it in-line, at execve time.",
                ev.program,
                stdio_names(&obs.decision.matched_fds),
            ),
            next_steps: "Check whether the pod is expected to run commands over a socket (inetd-style services, socat EXEC:); if not, isolate the pod, keep its logs, and look for how the attacker got code running in it. Add an exception in the rce-guard config for legitimate cases.",
            processes: vec![Process {
                name: process_name,
                binary: Binary { path: ev.program.clone(), size: binary.map(|b| b.size), sha256: binary.map(|b| b.sha256.clone()) },
                args,
                arguments_truncated: ev.args_truncated || args_cut,
                pid: ev.pid,
                parent_pid: ev.parent_pid,
                ancestors,
            }],
            connections,
            containers: vec![Container {
                name: id.container_name.clone(),
                uri: id.image.clone(),
                image_id: id.image_id.clone(),
                id: id.container_id.clone(),
            }],
            kubernetes: Kubernetes {
                pods: vec![Pod {
                    ns: id.pod_namespace.clone(),
                    name: id.pod_name.clone(),
                    uid: id.pod_uid.clone(),
                    labels: id.pod_labels.clone(),
                    containers: vec![id.container_name.clone()],
                }],
                nodes: vec![Node { name: node.node_name.clone() }],
            },
            source_properties: sp,
        },
    }
}

fn stdio_names(fds: &[usize]) -> String {
    let names: Vec<&str> = fds
        .iter()
        .map(|&f| ["stdin", "stdout", "stderr"][f.min(2)])
        .collect();
    names.join(", ")
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .skip(1)
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 32-character id (SCC finding ids are 1-32 letters and digits).
fn finding_id(obs: &Observation) -> String {
    let nanos = obs
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(obs.identity.container_id.as_bytes());
    h.update(obs.event.tid.to_le_bytes());
    h.update(nanos.to_le_bytes());
    h.update(obs.event.program.as_bytes());
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-27T05:40:15.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    crate::timefmt::rfc3339_micros(t)
}

/// Hashes a binary, reading at most `max_bytes` (a hostile container could offer a huge or
/// endless file). Returns None when it cannot be read or is larger than the cap.
pub fn digest_file(path: &std::path::Path, max_bytes: u64) -> Option<BinaryDigest> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > max_bytes {
        return None;
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = f.take(max_bytes);
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Some(BinaryDigest {
        size: total,
        sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::exec_event::{ExecAbi, ExecSyscall, SocketFamily};

    pub(crate) fn sample() -> Observation {
        let sock = StdioKind::Socket {
            family: SocketFamily::Inet,
            protocol: SocketProtocol::Tcp,
            local: Some("127.0.0.1:40000".parse().unwrap()),
            peer: Some("127.0.0.1:4444".parse().unwrap()),
        };
        Observation {
            event: ExecEvent {
                syscall: ExecSyscall::Execve,
                abi: ExecAbi::X86_64,
                tid: 77,
                pid: 77,
                parent_pid: 70,
                program: "/bin/id".into(),
                args: vec!["id".into()],
                args_truncated: false,
                stdio: [sock.clone(), sock.clone(), sock],
                caller: ProcessInfo {
                    pid: 70,
                    parent_pid: 1,
                    exe: "/bin/busybox".into(),
                    cmdline: vec!["sh".into()],
                },
                ancestors: vec![],
            },
            identity: ContainerIdentity {
                container_id: "c1".into(),
                container_name: "shell".into(),
                pod_name: "victim".into(),
                pod_namespace: "shop".into(),
                pod_uid: "u-1".into(),
                image: "rce-guard.test/busybox:1".into(),
                ..Default::default()
            },
            init_pid: 1,
            decision: Decision {
                action: Action::Deny,
                report: true,
                severity: Severity::Critical,
                common_command: true,
                matched_fds: vec![0, 1, 2],
                exception: None,
            },
            time: UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456),
        }
    }

    #[test]
    fn finding_has_scc_fields_and_cloud_logging_keys() {
        let node = NodeContext {
            node_name: "node-1".into(),
            cluster_resource_name: "//container.googleapis.com/projects/p/locations/l/clusters/c"
                .into(),
            ..Default::default()
        };
        let line = build(&sample(), &node, None, 1);
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["severity"], "CRITICAL");
        assert_eq!(v["action"], "blocked");
        assert_eq!(v["finding"]["category"], CATEGORY);
        assert_eq!(v["finding"]["findingClass"], "THREAT");
        assert_eq!(
            v["finding"]["resourceName"],
            "//container.googleapis.com/projects/p/locations/l/clusters/c"
        );
        let sp = &v["finding"]["sourceProperties"];
        assert_eq!(sp["Pod_Namespace"], "shop");
        assert_eq!(sp["Pod_Name"], "victim");
        assert_eq!(sp["Container_Name"], "shell");
        assert_eq!(sp["Container_Image_Uri"], "rce-guard.test/busybox:1");
        assert_eq!(sp["VM_Instance_Name"], "node-1");
        assert_eq!(sp["Reverse_Shell_Stdin_Redirection_Dst_Port"], 4444);
        assert_eq!(sp["Reverse_Shell_Stdin_Redirection_Src_Port"], 40000);
        let c = &v["finding"]["connections"];
        assert_eq!(
            c.as_array().unwrap().len(),
            1,
            "one socket on three fds is one connection"
        );
        assert_eq!(c[0]["stdioFds"], serde_json::json!([0, 1, 2]));
        assert_eq!(c[0]["protocol"], "TCP");
        assert_eq!(v["finding"]["processes"][0]["binary"]["path"], "/bin/id");
        assert_eq!(v["finding"]["processes"][0]["parentPid"], 70);
        assert_eq!(v["time"], "2026-11-18T11:06:40.123456Z");
        let id = v["logging.googleapis.com/insertId"].as_str().unwrap();
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(!serde_json::to_string(&line).unwrap().contains('\n'));
    }

    #[test]
    fn huge_argv_is_cut_and_flagged_and_line_stays_small() {
        let mut obs = sample();
        obs.event.args = (0..500)
            .map(|i| format!("{i}-{}", "é".repeat(40)))
            .collect();
        let line = serde_json::to_string(&build(&obs, &NodeContext::default(), None, 1)).unwrap();
        assert!(line.len() < 12 * 1024, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["finding"]["processes"][0]["argumentsTruncated"], true);
    }

    #[test]
    fn digest_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"abc").unwrap();
        let d = digest_file(&p, 1024).unwrap();
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.size, 3);
        assert!(digest_file(&p, 2).is_none());
        assert!(digest_file(dir.path(), 1024).is_none());
    }
}
