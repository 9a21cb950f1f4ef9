//! What the monitor learned about one trapped exec: the contract between inspection (which
//! reads the calling task) and the rule (which judges it). Pure data, no syscalls.

use std::net::SocketAddr;

use serde::Serialize;

/// The syscall that was trapped, decoded from `seccomp_data.{nr,arch}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecSyscall {
    Execve,
    Execveat,
}

/// ABI of the caller: native, or a compat ABI that has its own syscall numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecAbi {
    X86_64,
    I386,
    X32,
    Aarch64,
    Arm,
}

/// Address family of a socket on a standard fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketFamily {
    Inet,
    Inet6,
    Unix,
    Vsock,
    Netlink,
    Other(i32),
}

/// Socket type / protocol, as far as it matters to an analyst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketProtocol {
    Tcp,
    Udp,
    /// Stream socket that is not TCP (unix stream, vsock stream, ...).
    Stream,
    /// Datagram socket that is not UDP.
    Datagram,
    SeqPacket,
    Raw,
    Other(i32),
}

/// What one of the caller's fds 0, 1, 2 is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StdioKind {
    /// The fd is not open.
    Closed,
    Socket {
        family: SocketFamily,
        protocol: SocketProtocol,
        #[serde(skip_serializing_if = "Option::is_none")]
        local: Option<SocketAddr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<SocketAddr>,
    },
    Pipe,
    /// A character device: tty, pty, /dev/null, ...
    CharDevice,
    RegularFile,
    Other,
    /// The fd could not be inspected (the task vanished, or we lacked rights).
    Unknown,
}

impl StdioKind {
    /// True for an AF_INET or AF_INET6 socket.
    pub fn is_network_socket(&self) -> bool {
        matches!(
            self,
            StdioKind::Socket {
                family: SocketFamily::Inet | SocketFamily::Inet6,
                ..
            }
        )
    }
}

/// One process in the chain from the caller up to the container's init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// Pid as the host (the monitor) sees it.
    pub pid: i32,
    pub parent_pid: i32,
    /// `/proc/<pid>/exe` as a path inside the container, when readable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub exe: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
}

/// Everything inspection found out about one trapped exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecEvent {
    pub syscall: ExecSyscall,
    pub abi: ExecAbi,
    /// Thread id of the caller (host pid namespace).
    pub tid: i32,
    /// Thread-group id (process id) of the caller.
    pub pid: i32,
    pub parent_pid: i32,
    /// The program being executed, as a path inside the container.
    pub program: String,
    /// The argv of the new program, bounded; `args_truncated` says whether it was cut.
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// fds 0, 1, 2 of the caller.
    pub stdio: [StdioKind; 3],
    /// The caller itself (its exe and cmdline before the exec).
    pub caller: ProcessInfo,
    /// Ancestors of the caller, nearest first, up to the container's init.
    pub ancestors: Vec<ProcessInfo>,
}
