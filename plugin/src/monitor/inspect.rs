//! Inspection: turn one trapped exec into an [`ExecEvent`] by reading the calling task (its
//! memory for the path and argv, its fds 0-2, its ids, and for the finding its exe, cmdline
//! and ancestors).
//!
//! Everything the task can tell us goes through the [`Target`] trait, so this file is pure
//! logic: the live implementation is `target.rs`; unit tests use a fake. A caller that
//! vanishes half-way (killed, or interrupted and about to retry) is a normal outcome,
//! [`Vanished`], not an error.

use std::io;

use crate::exec_event::{ExecEvent, ExecSyscall, ProcessInfo, StdioKind};

use super::abi::ExecCall;
use super::sys::TaskIds;

/// Page size used to split reads of target memory: a string that ends just before an
/// unmapped page must still be read, so we never ask for bytes across a page we do not need.
const PAGE: u64 = 4096;
const AT_FDCWD: i32 = -100;
const AT_EMPTY_PATH: u64 = 0x1000;

/// Bounds on what inspection reads from a (possibly hostile) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectLimits {
    /// argv entries kept.
    pub max_args: usize,
    /// Bytes kept of one argv string.
    pub max_arg_bytes: usize,
    /// Bytes kept of all argv strings together.
    pub max_args_total: usize,
    /// Bytes read of the path argument.
    pub max_path_bytes: usize,
    /// Ancestors listed above the caller.
    pub max_ancestors: usize,
    /// Bytes read of each /proc/<pid>/cmdline.
    pub max_cmdline_bytes: usize,
}

impl Default for InspectLimits {
    fn default() -> Self {
        InspectLimits {
            max_args: 64,
            max_arg_bytes: 4096,
            max_args_total: 16 * 1024,
            max_path_bytes: 4096,
            max_ancestors: 16,
            max_cmdline_bytes: 4096,
        }
    }
}

/// A /proc/<pid>/ symlink that inspection resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcLink {
    Exe,
    Cwd,
    Fd(i32),
}

/// What inspection needs to know about the trapped caller and its ancestors.
pub trait Target {
    /// Thread id of the caller (host pid namespace).
    fn tid(&self) -> i32;
    /// `NOTIF_ID_VALID`: is the caller still blocked in the trapped syscall? Once this is
    /// false it stays false, so one check after a series of reads covers all of them.
    fn still_pending(&self) -> bool;
    /// Copy caller memory at `addr`; may return fewer bytes at an unmapped page.
    fn read_memory(&self, addr: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Copy several ranges at once into `out`, back to back; returns the bytes copied, which
    /// stop at the first unreadable byte. One syscall in the live target.
    fn read_memory_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        for &(addr, len) in ranges {
            if len == 0 {
                continue;
            }
            let n = self.read_memory(addr, &mut out[done..done + len])?;
            done += n;
            if n < len {
                break;
            }
        }
        Ok(done)
    }
    /// What the caller's fd `fd` is.
    fn stdio(&self, fd: i32) -> StdioKind;
    /// tgid, ppid (and cgroup) of the caller.
    fn caller_ids(&self) -> Option<TaskIds>;
    /// tgid, ppid (and cgroup) of another process (an ancestor).
    fn process_ids(&self, pid: i32) -> Option<TaskIds>;
    /// `/proc/<pid>/<link>` as the task sees paths (inside its container).
    fn proc_link(&self, pid: i32, link: ProcLink) -> Option<String>;
    /// Up to `limit` bytes of `/proc/<pid>/cmdline`.
    fn cmdline(&self, pid: i32, limit: usize) -> Option<Vec<u8>>;
}

/// The caller left the syscall before inspection finished: answer nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vanished;

/// Read what decides the verdict: program, argv, stdio and the caller's ids. `args` are the
/// raw syscall arguments (`seccomp_data.args`). `caller` and `ancestors` are left for
/// [`add_caller_context`], which costs /proc reads.
pub fn inspect_exec(
    target: &dyn Target,
    call: ExecCall,
    args: &[u64; 6],
    limits: &InspectLimits,
) -> Result<ExecEvent, Vanished> {
    let tid = target.tid();
    let (path_addr, argv_addr) = match call.syscall {
        ExecSyscall::Execve => (args[0], args[1]),
        ExecSyscall::Execveat => (args[1], args[2]),
    };
    let (raw_path, argv) =
        read_path_and_argv(target, path_addr, argv_addr, call.pointer_size(), limits);
    let stdio = [target.stdio(0), target.stdio(1), target.stdio(2)];
    let ids = target.caller_ids();
    let program = match raw_path {
        Some(s) => resolve_program(target, tid, call, args, &lossy(s.bytes)),
        None => String::new(),
    };
    // One check covers every read above: if the caller is still blocked in the syscall now,
    // it was all along, so its tid was never reused and the memory, fds and ids were its own.
    if !target.still_pending() {
        return Err(Vanished);
    }
    let (pid, parent_pid) = ids.map(|i| (i.tgid, i.ppid)).unwrap_or((tid, 0));
    Ok(ExecEvent {
        syscall: call.syscall,
        abi: call.abi,
        tid,
        pid,
        parent_pid,
        program,
        args: argv.args,
        args_truncated: argv.truncated,
        stdio,
        caller: ProcessInfo {
            pid,
            parent_pid,
            exe: String::new(),
            cmdline: Vec::new(),
        },
        ancestors: Vec::new(),
    })
}

/// Fill in the caller's exe and cmdline and its ancestors, nearest first, up to the
/// container's init (`init_pid`), the first process outside the caller's cgroup, or
/// `max_ancestors`.
pub fn add_caller_context(
    target: &dyn Target,
    event: &mut ExecEvent,
    init_pid: i32,
    limits: &InspectLimits,
) -> Result<(), Vanished> {
    let tid = event.tid;
    event.caller.exe = target.proc_link(tid, ProcLink::Exe).unwrap_or_default();
    event.caller.cmdline = target
        .cmdline(tid, limits.max_cmdline_bytes)
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    let caller_cgroup = target.caller_ids().and_then(|i| i.cgroup_id);
    let mut pid = event.parent_pid;
    while event.ancestors.len() < limits.max_ancestors && pid > 0 {
        // Host pid 1 is never part of a container, unless the "container" is the host.
        if pid == 1 && init_pid != 1 {
            break;
        }
        let Some(ids) = target.process_ids(pid) else {
            break;
        };
        let left_container = match (caller_cgroup, ids.cgroup_id) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        if left_container && pid != init_pid {
            break;
        }
        event.ancestors.push(ProcessInfo {
            pid,
            parent_pid: ids.ppid,
            exe: target.proc_link(pid, ProcLink::Exe).unwrap_or_default(),
            cmdline: target
                .cmdline(pid, limits.max_cmdline_bytes)
                .map(|b| split_nul(&b))
                .unwrap_or_default(),
        });
        if pid == init_pid {
            break;
        }
        pid = ids.ppid;
    }
    if !target.still_pending() {
        return Err(Vanished);
    }
    Ok(())
}

/// Bytes of the first read of each string: enough for nearly every path and argument, so one
/// batched read usually fetches all of argv.
const FIRST_CHUNK: usize = 512;

/// A string read from the caller, and whether it ended (NUL) within the limit.
struct CString {
    bytes: Vec<u8>,
    complete: bool,
}

/// Bytes to ask for first at `addr`: never across a page boundary (the next page may be
/// unmapped while the string ends before it).
fn chunk_len(addr: u64, cap: usize) -> usize {
    ((PAGE - addr % PAGE) as usize).min(cap)
}

/// Read all `ranges` in one batch; a range the batch could not complete (unreadable memory in
/// it or before it) is read again alone, so one bad range spoils nothing else. Per range: the
/// bytes read, short where memory ended.
fn read_ranges(target: &dyn Target, ranges: &[(u64, usize)]) -> Vec<Vec<u8>> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let got = target.read_memory_batch(ranges, &mut buf).unwrap_or(0);
    let mut out = Vec::with_capacity(ranges.len());
    let mut offset = 0;
    for &(addr, len) in ranges {
        if offset + len <= got {
            out.push(buf[offset..offset + len].to_vec());
        } else {
            let mut alone = vec![0u8; len];
            let n = if addr == 0 || len == 0 {
                0
            } else {
                target.read_memory(addr, &mut alone).unwrap_or(0)
            };
            alone.truncate(n);
            out.push(alone);
        }
        offset += len;
    }
    out
}

/// Finish a string whose first `asked` bytes came back as `head`: stop at the NUL, or read on
/// up to `max` bytes. `None` when not even the first byte was readable.
fn finish_string(
    target: &dyn Target,
    addr: u64,
    mut head: Vec<u8>,
    asked: usize,
    max: usize,
) -> Option<CString> {
    if let Some(nul) = head.iter().position(|&b| b == 0) {
        head.truncate(nul.min(max));
        return Some(CString {
            bytes: head,
            complete: nul <= max,
        });
    }
    if head.is_empty() {
        return None;
    }
    if head.len() >= max {
        head.truncate(max);
        return Some(CString {
            bytes: head,
            complete: false,
        });
    }
    if head.len() < asked {
        // Unreadable memory before the terminator.
        return Some(CString {
            bytes: head,
            complete: false,
        });
    }
    let rest = addr
        .checked_add(head.len() as u64)
        .and_then(|at| read_c_string(target, at, max - head.len()));
    match rest {
        Some(r) => {
            head.extend_from_slice(&r.bytes);
            Some(CString {
                bytes: head,
                complete: r.complete,
            })
        }
        None => Some(CString {
            bytes: head,
            complete: false,
        }),
    }
}

/// Read a NUL-terminated string of at most `max` bytes, page by page; `None` if its first
/// byte cannot be read.
fn read_c_string(target: &dyn Target, addr: u64, max: usize) -> Option<CString> {
    if addr == 0 {
        return None;
    }
    let mut bytes: Vec<u8> = Vec::new();
    let mut chunk = [0u8; PAGE as usize];
    while bytes.len() < max {
        let at = addr.checked_add(bytes.len() as u64)?;
        let want = chunk_len(at, max - bytes.len());
        let got = target.read_memory(at, &mut chunk[..want]).unwrap_or(0);
        if let Some(nul) = chunk[..got].iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..nul]);
            return Some(CString {
                bytes,
                complete: true,
            });
        }
        bytes.extend_from_slice(&chunk[..got]);
        if got < want {
            return (!bytes.is_empty()).then_some(CString {
                bytes,
                complete: false,
            });
        }
    }
    Some(CString {
        bytes,
        complete: false,
    })
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

struct Argv {
    args: Vec<String>,
    truncated: bool,
}

/// The path argument and argv, in as few reads as possible: the path's first chunk and the
/// pointer table in one batch, then the first chunk of every string in a second; only long or
/// broken strings cost more reads.
fn read_path_and_argv(
    target: &dyn Target,
    path_addr: u64,
    argv_addr: u64,
    ptr_size: usize,
    limits: &InspectLimits,
) -> (Option<CString>, Argv) {
    let table_full = (limits.max_args + 1) * ptr_size;
    let path_ask = if path_addr == 0 {
        0
    } else {
        chunk_len(path_addr, limits.max_path_bytes.min(FIRST_CHUNK))
    };
    let table_ask = if argv_addr == 0 {
        0
    } else {
        chunk_len(argv_addr, table_full)
    };
    let mut first = read_ranges(target, &[(path_addr, path_ask), (argv_addr, table_ask)]);
    let mut table = first.pop().unwrap_or_default();
    let path_head = first.pop().unwrap_or_default();
    let path = if path_addr == 0 {
        None
    } else {
        finish_string(
            target,
            path_addr,
            path_head,
            path_ask,
            limits.max_path_bytes,
        )
    };

    let mut argv = Argv {
        args: Vec::new(),
        truncated: false,
    };
    if argv_addr == 0 {
        // Linux runs a NULL argv as an empty one.
        return (path, argv);
    }
    let has_null = |t: &[u8]| t.chunks_exact(ptr_size).any(|e| e.iter().all(|&b| b == 0));
    if table.len() == table_ask && table_ask < table_full && !has_null(&table) {
        // The table crosses a page: read on.
        table.extend(read_bytes(
            target,
            argv_addr + table_ask as u64,
            table_full - table_ask,
        ));
    }
    let mut pointers = Vec::new();
    let mut ended = false;
    for entry in table.chunks_exact(ptr_size) {
        let ptr = match ptr_size {
            4 => u32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]) as u64,
            _ => u64::from_ne_bytes(entry.try_into().unwrap_or([0; 8])),
        };
        if ptr == 0 {
            ended = true;
            break;
        }
        if pointers.len() == limits.max_args {
            break;
        }
        pointers.push(ptr);
    }
    // No NULL seen: more entries than we keep, or the table ran into unreadable memory.
    argv.truncated = !ended;

    let head_cap = limits.max_arg_bytes.min(FIRST_CHUNK);
    let ranges: Vec<(u64, usize)> = pointers
        .iter()
        .map(|&p| (p, chunk_len(p, head_cap)))
        .collect();
    let heads = read_ranges(target, &ranges);
    let mut budget = limits.max_args_total;
    for (&(addr, asked), head) in ranges.iter().zip(heads) {
        if budget == 0 {
            argv.truncated = true;
            break;
        }
        let max = limits.max_arg_bytes.min(budget);
        match finish_string(target, addr, head, asked, max) {
            Some(s) => {
                budget -= s.bytes.len().min(budget);
                argv.truncated |= !s.complete;
                argv.args.push(lossy(s.bytes));
            }
            None => {
                // An unreadable pointer (a "" string reads fine): argv stops here.
                argv.truncated = true;
                break;
            }
        }
    }
    (path, argv)
}

/// Read up to `len` bytes, stopping at the first unreadable page.
fn read_bytes(target: &dyn Target, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let Some(at) = addr.checked_add(got as u64) else {
            break;
        };
        let want = chunk_len(at, len - got);
        match target.read_memory(at, &mut out[got..got + want]) {
            Ok(n) if n > 0 => {
                got += n;
                if n < want {
                    break;
                }
            }
            _ => break,
        }
    }
    out.truncate(got);
    out
}

/// The program as a path inside the caller's container.
fn resolve_program(
    target: &dyn Target,
    tid: i32,
    call: ExecCall,
    args: &[u64; 6],
    path: &str,
) -> String {
    match call.syscall {
        ExecSyscall::Execve => {
            if path.starts_with('/') {
                normalize(path)
            } else {
                join_under(target.proc_link(tid, ProcLink::Cwd), path)
            }
        }
        ExecSyscall::Execveat => {
            // dirfd is an int: on compat ABIs only the low 32 bits are meaningful.
            let dirfd = args[0] as u32 as i32;
            let flags = args[4];
            let base = || {
                if dirfd == AT_FDCWD {
                    target.proc_link(tid, ProcLink::Cwd)
                } else {
                    target.proc_link(tid, ProcLink::Fd(dirfd))
                }
            };
            if path.is_empty() && flags & AT_EMPTY_PATH != 0 {
                // fexecve: the program is the file open at dirfd.
                base().unwrap_or_default()
            } else if path.starts_with('/') {
                normalize(path)
            } else {
                join_under(base(), path)
            }
        }
    }
}

fn join_under(base: Option<String>, rel: &str) -> String {
    match base {
        Some(b) => normalize(&format!("{b}/{rel}")),
        // Unknown base: keep what the caller wrote rather than invent a directory.
        None => rel.to_string(),
    }
}

/// Drop `.` components and repeated slashes. `..` stays: a symlink may sit before it.
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// `/proc/<pid>/cmdline` bytes to strings (NUL separated, maybe NUL terminated).
fn split_nul(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;

    use super::*;
    use crate::exec_event::{ExecAbi, SocketFamily, SocketProtocol};

    /// A fake caller: a sparse address space of mapped pages, fixed stdio, a process table.
    #[derive(Default)]
    struct FakeTarget {
        tid: i32,
        pages: HashMap<u64, Vec<u8>>,
        stdio: [Option<StdioKind>; 3],
        procs: HashMap<i32, (TaskIds, String, Vec<u8>)>,
        links: HashMap<(i32, ProcLink), String>,
        /// Memory reads allowed before the caller "vanishes".
        reads_until_gone: Cell<Option<usize>>,
        gone: Cell<bool>,
        reads: Cell<usize>,
        batches: Cell<usize>,
    }

    impl FakeTarget {
        fn map(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                let a = addr + i as u64;
                let page = self
                    .pages
                    .entry(a / PAGE)
                    .or_insert_with(|| vec![0; PAGE as usize]);
                page[(a % PAGE) as usize] = *b;
            }
        }
        fn map_zeroed_page(&mut self, page: u64) {
            self.pages
                .entry(page)
                .or_insert_with(|| vec![0; PAGE as usize]);
        }
        /// After `reads_until_gone` reads, the caller is gone (reads fail, not pending).
        fn count_down_to_vanishing(&self) -> io::Result<()> {
            if let Some(n) = self.reads_until_gone.get() {
                if n == 0 {
                    self.gone.set(true);
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                self.reads_until_gone.set(Some(n - 1));
            }
            Ok(())
        }
        fn map_ptrs(&mut self, addr: u64, ptrs: &[u64]) {
            let bytes: Vec<u8> = ptrs.iter().flat_map(|p| p.to_ne_bytes()).collect();
            self.map(addr, &bytes);
        }
    }

    impl Target for FakeTarget {
        fn tid(&self) -> i32 {
            self.tid
        }
        fn still_pending(&self) -> bool {
            !self.gone.get()
        }
        fn read_memory(&self, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.set(self.reads.get() + 1);
            self.count_down_to_vanishing()?;
            let mut n = 0;
            while n < buf.len() {
                let a = addr + n as u64;
                match self.pages.get(&(a / PAGE)) {
                    Some(p) => buf[n] = p[(a % PAGE) as usize],
                    None => break,
                }
                n += 1;
            }
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EFAULT));
            }
            Ok(n)
        }
        fn read_memory_batch(&self, ranges: &[(u64, usize)], out: &mut [u8]) -> io::Result<usize> {
            self.batches.set(self.batches.get() + 1);
            self.count_down_to_vanishing()?;
            let mut done = 0;
            for &(addr, len) in ranges {
                let mut n = 0;
                while n < len {
                    let a = addr + n as u64;
                    match self.pages.get(&(a / PAGE)) {
                        Some(p) => out[done + n] = p[(a % PAGE) as usize],
                        None => break,
                    }
                    n += 1;
                }
                done += n;
                if n < len {
                    break;
                }
            }
            Ok(done)
        }
        fn stdio(&self, fd: i32) -> StdioKind {
            self.stdio[fd as usize].clone().unwrap_or(StdioKind::Closed)
        }
        fn caller_ids(&self) -> Option<TaskIds> {
            self.procs.get(&self.tid).map(|p| p.0)
        }
        fn process_ids(&self, pid: i32) -> Option<TaskIds> {
            self.procs.get(&pid).map(|p| p.0)
        }
        fn proc_link(&self, pid: i32, link: ProcLink) -> Option<String> {
            if link == ProcLink::Exe {
                return self.procs.get(&pid).map(|p| p.1.clone());
            }
            self.links.get(&(pid, link)).cloned()
        }
        fn cmdline(&self, pid: i32, limit: usize) -> Option<Vec<u8>> {
            self.procs
                .get(&pid)
                .map(|p| p.2.iter().copied().take(limit).collect())
        }
    }

    fn ids(tid: i32, tgid: i32, ppid: i32, cgroup: u64) -> TaskIds {
        TaskIds {
            tid,
            tgid,
            ppid,
            cgroup_id: Some(cgroup),
        }
    }

    const EXECVE: ExecCall = ExecCall {
        syscall: ExecSyscall::Execve,
        abi: ExecAbi::X86_64,
    };
    const EXECVEAT: ExecCall = ExecCall {
        syscall: ExecSyscall::Execveat,
        abi: ExecAbi::X86_64,
    };

    /// A caller (tid 300) running `/bin/sh -c id` with a TCP socket on stdio, child of 200
    /// (sh), child of 100 (the container init), child of 50 (the shim, other cgroup).
    fn reverse_shell_fake() -> FakeTarget {
        let mut t = FakeTarget {
            tid: 300,
            ..Default::default()
        };
        t.map(0x10_000, b"/bin/sh\0");
        t.map(0x10_100, b"sh\0-c\0id\0");
        t.map_ptrs(0x20_000, &[0x10_100, 0x10_103, 0x10_106, 0]);
        let sock = StdioKind::Socket {
            family: SocketFamily::Inet,
            protocol: SocketProtocol::Tcp,
            local: Some("10.0.0.2:40000".parse().unwrap()),
            peer: Some("192.0.2.7:4444".parse().unwrap()),
        };
        t.stdio = [Some(sock.clone()), Some(sock.clone()), Some(sock)];
        t.procs.insert(
            300,
            (
                ids(300, 300, 200, 7),
                "/bin/busybox".into(),
                b"sh\0".to_vec(),
            ),
        );
        t.procs.insert(
            200,
            (
                ids(200, 200, 100, 7),
                "/bin/busybox".into(),
                b"sh\0-i\0".to_vec(),
            ),
        );
        t.procs.insert(
            100,
            (
                ids(100, 100, 50, 7),
                "/app/server".into(),
                b"/app/server\0".to_vec(),
            ),
        );
        t.procs.insert(
            50,
            (
                ids(50, 50, 1, 3),
                "/usr/bin/containerd-shim-runc-v2".into(),
                vec![],
            ),
        );
        t
    }

    #[test]
    fn fake_reverse_shell_gives_program_args_stdio_and_ids() {
        let t = reverse_shell_fake();
        let args = [0x10_000, 0x20_000, 0, 0, 0, 0];
        let ev = inspect_exec(&t, EXECVE, &args, &InspectLimits::default()).unwrap();
        assert_eq!(ev.program, "/bin/sh");
        assert_eq!(ev.args, ["sh", "-c", "id"]);
        assert!(!ev.args_truncated);
        assert!(ev.stdio.iter().all(StdioKind::is_network_socket));
        assert_eq!((ev.tid, ev.pid, ev.parent_pid), (300, 300, 200));
        assert!(ev.ancestors.is_empty(), "context is a separate step");
    }

    #[test]
    fn fake_typical_argv_costs_two_batched_reads() {
        let t = reverse_shell_fake();
        let ev = inspect_exec(
            &t,
            EXECVE,
            &[0x10_000, 0x20_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.args, ["sh", "-c", "id"]);
        assert_eq!(
            (t.batches.get(), t.reads.get()),
            (2, 0),
            "path+table, then all strings"
        );
        // A string longer than the first chunk costs one more read, and is still whole.
        let mut t = reverse_shell_fake();
        let long = "L".repeat(3000);
        t.map(0x11_000, format!("{long}\0").as_bytes());
        t.map_ptrs(0x20_000, &[0x10_100, 0x11_000, 0]);
        let ev = inspect_exec(
            &t,
            EXECVE,
            &[0x10_000, 0x20_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.args, ["sh".to_string(), long]);
        assert!(!ev.args_truncated);
        assert_eq!((t.batches.get(), t.reads.get()), (2, 1));
    }

    #[test]
    fn fake_one_bad_pointer_does_not_spoil_the_batch_before_it() {
        let mut t = reverse_shell_fake();
        t.map_ptrs(0x20_000, &[0x10_100, 0x10_103, 0xdead_0000, 0x10_106, 0]);
        let ev = inspect_exec(
            &t,
            EXECVE,
            &[0x10_000, 0x20_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.args, ["sh", "-c"]);
        assert!(ev.args_truncated);
    }

    #[test]
    fn fake_context_walks_ancestors_up_to_init() {
        let t = reverse_shell_fake();
        let args = [0x10_000, 0x20_000, 0, 0, 0, 0];
        let limits = InspectLimits::default();
        let mut ev = inspect_exec(&t, EXECVE, &args, &limits).unwrap();
        add_caller_context(&t, &mut ev, 100, &limits).unwrap();
        assert_eq!(ev.caller.exe, "/bin/busybox");
        assert_eq!(ev.caller.cmdline, ["sh"]);
        let chain: Vec<i32> = ev.ancestors.iter().map(|a| a.pid).collect();
        assert_eq!(chain, [200, 100]);
        assert_eq!(ev.ancestors[0].cmdline, ["sh", "-i"]);
        assert_eq!(ev.ancestors[1].exe, "/app/server");
    }

    #[test]
    fn fake_context_stops_at_cgroup_boundary_and_depth() {
        let t = reverse_shell_fake();
        let args = [0x10_000, 0x20_000, 0, 0, 0, 0];
        let mut limits = InspectLimits::default();
        // Unknown init pid (an exec fd whose init we do not see): stop at the shim's cgroup.
        let mut ev = inspect_exec(&t, EXECVE, &args, &limits).unwrap();
        add_caller_context(&t, &mut ev, 0, &limits).unwrap();
        let chain: Vec<i32> = ev.ancestors.iter().map(|a| a.pid).collect();
        assert_eq!(chain, [200, 100]);
        limits.max_ancestors = 1;
        let mut ev = inspect_exec(&t, EXECVE, &args, &limits).unwrap();
        add_caller_context(&t, &mut ev, 100, &limits).unwrap();
        assert_eq!(ev.ancestors.len(), 1);
    }

    #[test]
    fn fake_relative_execve_resolves_against_cwd() {
        let mut t = reverse_shell_fake();
        t.map(0x10_000, b"./bin/../tool\0");
        t.links.insert((300, ProcLink::Cwd), "/srv/app".into());
        let ev = inspect_exec(
            &t,
            EXECVE,
            &[0x10_000, 0x20_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.program, "/srv/app/bin/../tool");
    }

    #[test]
    fn fake_execveat_empty_path_resolves_the_fd() {
        let mut t = reverse_shell_fake();
        t.map(0x30_000, b"\0");
        t.links
            .insert((300, ProcLink::Fd(5)), "/memfd:payload (deleted)".into());
        t.links.insert((300, ProcLink::Fd(6)), "/usr/bin".into());
        t.links.insert((300, ProcLink::Cwd), "/work".into());
        let lim = InspectLimits::default();
        let ev = inspect_exec(
            &t,
            EXECVEAT,
            &[5, 0x30_000, 0x20_000, 0, AT_EMPTY_PATH, 0],
            &lim,
        )
        .unwrap();
        assert_eq!(ev.syscall, ExecSyscall::Execveat);
        assert_eq!(ev.program, "/memfd:payload (deleted)");
        assert_eq!(ev.args, ["sh", "-c", "id"]);
        // Relative to a dirfd, relative to AT_FDCWD, and absolute.
        t.map(0x30_000, b"env\0");
        let ev = inspect_exec(&t, EXECVEAT, &[6, 0x30_000, 0x20_000, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.program, "/usr/bin/env");
        let fdcwd = AT_FDCWD as u32 as u64;
        let ev = inspect_exec(&t, EXECVEAT, &[fdcwd, 0x30_000, 0x20_000, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.program, "/work/env");
        t.map(0x30_000, b"/bin//./ls\0");
        let ev = inspect_exec(&t, EXECVEAT, &[6, 0x30_000, 0x20_000, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.program, "/bin/ls");
    }

    #[test]
    fn fake_compat_abi_reads_four_byte_pointers() {
        let mut t = reverse_shell_fake();
        let table: Vec<u8> = [0x10_100u32, 0x10_103, 0, 0]
            .iter()
            .flat_map(|p| p.to_ne_bytes())
            .collect();
        t.map(0x40_000, &table);
        let call = ExecCall {
            syscall: ExecSyscall::Execve,
            abi: ExecAbi::I386,
        };
        let ev = inspect_exec(
            &t,
            call,
            &[0x10_000, 0x40_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.args, ["sh", "-c"]);
        assert_eq!(ev.abi, ExecAbi::I386);
    }

    #[test]
    fn fake_hostile_argv_is_bounded_and_flagged() {
        let lim = InspectLimits {
            max_args: 4,
            max_arg_bytes: 16,
            max_args_total: 40,
            ..Default::default()
        };
        let mut t = reverse_shell_fake();
        // Invalid argv pointer: no args, truncated.
        let ev = inspect_exec(&t, EXECVE, &[0x10_000, 0xdead_0000, 0, 0, 0, 0], &lim).unwrap();
        assert!(ev.args.is_empty() && ev.args_truncated);
        assert_eq!(ev.program, "/bin/sh");
        // A valid first string, then a pointer into nowhere.
        t.map_ptrs(0x50_000, &[0x10_100, 0xdead_0000, 0]);
        let ev = inspect_exec(&t, EXECVE, &[0x10_000, 0x50_000, 0, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.args, ["sh"]);
        assert!(ev.args_truncated);
        // An endless string: 3 pages of 'A' and no NUL.
        let endless = vec![b'A'; 3 * PAGE as usize];
        t.map(0x60_000, &endless);
        t.map_ptrs(
            0x70_000,
            &[
                0x60_000, 0x60_000, 0x60_000, 0x60_000, 0x60_000, 0x60_000, 0,
            ],
        );
        let ev = inspect_exec(&t, EXECVE, &[0x60_000, 0x70_000, 0, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.args.len(), 3, "40-byte total budget: 16 + 16 + 8");
        assert_eq!(ev.args[0].len(), 16);
        assert_eq!(ev.args[2].len(), 8);
        assert!(ev.args_truncated);
        assert_eq!(ev.program.len(), lim.max_path_bytes);
        // More entries than max_args.
        t.map_ptrs(0x80_000, &[0x10_100; 10]);
        t.map_ptrs(0x80_000 + 80, &[0]);
        let ev = inspect_exec(&t, EXECVE, &[0x10_000, 0x80_000, 0, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.args.len(), 4);
        assert!(ev.args_truncated);
        // A pointer table that runs into an unmapped page without a NULL.
        t.map_zeroed_page(0x9_0000 / PAGE);
        let last = 0x9_0000 + PAGE - 16;
        t.map_ptrs(last, &[0x10_100, 0x10_103]);
        let ev = inspect_exec(&t, EXECVE, &[0x10_000, last, 0, 0, 0, 0], &lim).unwrap();
        assert_eq!(ev.args, ["sh", "-c"]);
        assert!(ev.args_truncated);
        // NULL argv is an empty, complete argv; NULL path is an unknown program.
        let ev = inspect_exec(&t, EXECVE, &[0, 0, 0, 0, 0, 0], &lim).unwrap();
        assert!(ev.args.is_empty() && !ev.args_truncated);
        assert_eq!(ev.program, "");
    }

    #[test]
    fn fake_string_ending_right_before_an_unmapped_page_is_complete() {
        let mut t = reverse_shell_fake();
        let at = 0xA_0000 + PAGE - 4;
        t.map(at, b"abc\0");
        t.map_ptrs(0xB_0000, &[at, 0]);
        let ev = inspect_exec(
            &t,
            EXECVE,
            &[at, 0xB_0000, 0, 0, 0, 0],
            &InspectLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.program, "abc");
        assert_eq!(ev.args, ["abc"]);
        assert!(!ev.args_truncated);
    }

    #[test]
    fn fake_caller_vanishing_mid_read_is_not_an_error() {
        let t = reverse_shell_fake();
        t.reads_until_gone.set(Some(1));
        let r = inspect_exec(
            &t,
            EXECVE,
            &[0x10_000, 0x20_000, 0, 0, 0, 0],
            &InspectLimits::default(),
        );
        assert_eq!(r, Err(Vanished));
        let t = reverse_shell_fake();
        let limits = InspectLimits::default();
        let mut ev = inspect_exec(&t, EXECVE, &[0x10_000, 0x20_000, 0, 0, 0, 0], &limits).unwrap();
        t.gone.set(true);
        assert_eq!(add_caller_context(&t, &mut ev, 100, &limits), Err(Vanished));
    }

    #[test]
    fn normalize_and_split() {
        assert_eq!(normalize("/a//b/./c/"), "/a/b/c");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("a/../b"), "a/../b");
        assert_eq!(split_nul(b"a\0b c\0"), ["a", "b c"]);
        assert_eq!(split_nul(b"no-nul"), ["no-nul"]);
        assert!(split_nul(b"").is_empty());
    }
}
