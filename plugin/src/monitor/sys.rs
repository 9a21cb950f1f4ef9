//! The syscall layer of the monitor, and the only file of rce-guard with `unsafe` in it.
//!
//! Each function here is a small safe wrapper around one kernel interface: the seccomp
//! user-notification ioctls, seccomp filter installation, the pidfd info ioctl and
//! `process_vm_readv`. Where rustix already offers a safe wrapper (pidfd_open, pidfd_getfd,
//! pidfd_send_signal, sockets) we use it instead, so this file stays short. File descriptors
//! leave this module as [`OwnedFd`] and enter it as [`BorrowedFd`].

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rustix::process::{Pid, PidfdFlags, Signal};

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (kernel >= 6.6): wake the notifying task and the
/// listener on the current CPU, which saves a scheduler hand-off per exec.
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// `PIDFD_GET_INFO` = `_IOWR(0xFF, 11, struct pidfd_info)` with the first (64-byte) version of
/// the struct; the kernel copies only as much as we ask for (kernel >= 6.13).
const PIDFD_INFO_SIZE_VER0: u32 = 64;
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((PIDFD_INFO_SIZE_VER0 as libc::c_ulong) << 16) | (0xFF << 8) | 11;
const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;

/// `struct pidfd_info`, version 0 (see `include/uapi/linux/pidfd.h`).
#[repr(C)]
#[derive(Default)]
struct PidfdInfoV0 {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfoV0>() == PIDFD_INFO_SIZE_VER0 as usize);

/// Sizes of the notification structs as the running kernel defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifSizes {
    pub notif: usize,
    pub resp: usize,
    pub data: usize,
}

/// `SECCOMP_GET_NOTIF_SIZES`, asked once per process.
pub fn notif_sizes() -> io::Result<NotifSizes> {
    static SIZES: OnceLock<NotifSizes> = OnceLock::new();
    if let Some(s) = SIZES.get() {
        return Ok(*s);
    }
    let mut raw = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one `struct seccomp_notif_sizes` to the pointer,
    // which points to a live, correctly sized and aligned local.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0 as libc::c_uint,
            &mut raw as *mut libc::seccomp_notif_sizes,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let sizes = NotifSizes {
        notif: raw.seccomp_notif as usize,
        resp: raw.seccomp_notif_resp as usize,
        data: raw.seccomp_data as usize,
    };
    Ok(*SIZES.get_or_init(|| sizes))
}

/// One trapped syscall, as `SECCOMP_IOCTL_NOTIF_RECV` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// Cookie for ID_VALID and SEND.
    pub id: u64,
    /// Thread id of the caller in our pid namespace; 0 when it is not visible there.
    pub tid: u32,
    /// `seccomp_data.nr`.
    pub nr: i32,
    /// `seccomp_data.arch` (an `AUDIT_ARCH_*` value).
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// Room for `struct seccomp_notif` on the stack; larger kernels fall back to the heap.
const NOTIF_STACK_WORDS: usize = 32;

/// `SECCOMP_IOCTL_NOTIF_RECV`. Blocks until a notification is pending, so call it only when
/// the fd polled readable. `ENOENT` means the caller was interrupted before we got to it:
/// a normal event, not an error of the listener.
pub fn notif_recv(listener: BorrowedFd<'_>) -> io::Result<Notification> {
    let size = notif_sizes()?
        .notif
        .max(std::mem::size_of::<libc::seccomp_notif>());
    // The kernel insists on a zeroed buffer of its own struct size (EINVAL otherwise).
    let mut stack = [0u64; NOTIF_STACK_WORDS];
    let mut heap = Vec::new();
    let words: &mut [u64] = if size <= NOTIF_STACK_WORDS * 8 {
        &mut stack
    } else {
        heap.resize(size.div_ceil(8), 0u64);
        &mut heap
    };
    // SAFETY: `words` is a zeroed, 8-byte aligned buffer of at least the kernel's
    // `sizeof(struct seccomp_notif)` bytes, which is all NOTIF_RECV writes.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            words.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The layout of the struct's prefix is stable ABI: id, pid, flags, then seccomp_data
    // (nr, arch, instruction_pointer, args[6]).
    let id = words[0];
    let (tid, _flags) = split_u32_pair(words[1]);
    let (nr, arch) = split_u32_pair(words[2]);
    let instruction_pointer = words[3];
    let mut args = [0u64; 6];
    args.copy_from_slice(&words[4..10]);
    Ok(Notification {
        id,
        tid,
        nr: nr as i32,
        arch,
        instruction_pointer,
        args,
    })
}

/// The two u32 fields stored in one 8-byte word, in memory order (endian-neutral).
fn split_u32_pair(word: u64) -> (u32, u32) {
    let b = word.to_ne_bytes();
    (
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// The answer to one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Let the syscall run (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`).
    Continue,
    /// Fail the syscall with this errno (positive, e.g. `libc::EPERM`).
    Fail(i32),
}

/// `SECCOMP_IOCTL_NOTIF_SEND`. `ENOENT` means the caller is gone or was interrupted.
pub fn notif_send(listener: BorrowedFd<'_>, id: u64, reply: Reply) -> io::Result<()> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: 0,
        flags: 0,
    };
    match reply {
        Reply::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        Reply::Fail(errno) => resp.error = -errno.abs(),
    }
    // SAFETY: NOTIF_SEND reads one `struct seccomp_notif_resp` from a live local of that type.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp as *mut libc::seccomp_notif_resp,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: is the caller still blocked in the syscall `id` names?
/// `Ok(false)` when it is gone; `Err` only for a broken listener.
pub fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> io::Result<bool> {
    let mut cookie = id;
    // SAFETY: NOTIF_ID_VALID reads one u64 from a live local.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut cookie as *mut u64,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)`. Returns `Ok(false)` on a
/// kernel without it (< 6.6), which is fine: only slower.
pub fn notif_set_sync_wakeup(listener: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: NOTIF_SET_FLAGS takes its flags by value; no memory is passed.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOTTY) => Ok(false),
        _ => Err(err),
    }
}

/// Whether `pidfd_open` takes `PIDFD_THREAD` (kernel >= 6.9); cleared on the first EINVAL.
static PIDFD_THREAD_WORKS: AtomicBool = AtomicBool::new(true);

/// A pidfd for the task with this thread id, leader or not. With `PIDFD_THREAD` one call
/// covers both; older kernels only open thread-group leaders.
pub fn pidfd_open_task(tid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(tid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    if PIDFD_THREAD_WORKS.load(Ordering::Relaxed) {
        let thread = PidfdFlags::from_bits_retain(libc::O_EXCL as u32);
        match rustix::process::pidfd_open(pid, thread) {
            Ok(fd) => return Ok(fd),
            Err(e) if e == rustix::io::Errno::INVAL => {
                PIDFD_THREAD_WORKS.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Duplicate fd `target_fd` of the task behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: i32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        target_fd,
        rustix::process::PidfdGetfdFlags::empty(),
    )?)
}

/// SIGKILL the task behind `pidfd` (for a thread pidfd, the whole thread group dies).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, Signal::KILL)?)
}

/// Ids of a task, read through its pidfd with no /proc access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    pub tid: i32,
    /// Thread-group id (process id).
    pub tgid: i32,
    pub ppid: i32,
    /// cgroup v2 id of the task's cgroup, when the kernel reports one.
    pub cgroup_id: Option<u64>,
}

/// Whether `PIDFD_GET_INFO` exists here (kernel >= 6.13); cleared on the first ENOTTY.
static PIDFD_INFO_WORKS: AtomicBool = AtomicBool::new(true);

/// `PIDFD_GET_INFO`. `Ok(None)` on kernels without it (the caller then reads /proc).
pub fn pidfd_task_ids(pidfd: BorrowedFd<'_>) -> io::Result<Option<TaskIds>> {
    if !PIDFD_INFO_WORKS.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut info = PidfdInfoV0 {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CGROUPID,
        ..Default::default()
    };
    // SAFETY: PIDFD_GET_INFO encodes the 64-byte size of `PidfdInfoV0` (asserted above); the
    // kernel reads `mask` and writes at most that many bytes into the live local.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO,
            &mut info as *mut PidfdInfoV0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                PIDFD_INFO_WORKS.store(false, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(err),
        };
    }
    if info.mask & PIDFD_INFO_PID == 0 {
        return Ok(None);
    }
    Ok(Some(TaskIds {
        tid: info.pid as i32,
        tgid: info.tgid as i32,
        ppid: info.ppid as i32,
        cgroup_id: (info.mask & PIDFD_INFO_CGROUPID != 0 && info.cgroupid != 0)
            .then_some(info.cgroupid),
    }))
}

/// `process_vm_readv` of one range: copies target memory at `addr` into `buf`. May return
/// fewer bytes than asked when the range runs into an unmapped page; `EFAULT` when even the
/// first byte is unreadable. The kernel checks the remote range, so any address is fine.
pub fn read_task_memory(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec covers exactly `buf`, which we borrow mutably for the call; the
    // remote iovec is only interpreted by the kernel in the target's address space.
    let n = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Most ranges one batched read takes (argv strings plus slack); `IOV_MAX` is 1024.
pub const MAX_READ_RANGES: usize = 128;

/// `process_vm_readv` of several ranges into `out` (back to back): one syscall for argv.
/// Returns the bytes copied, which stop at the first unreadable byte.
pub fn read_task_memory_ranges(
    tid: i32,
    ranges: &[(u64, usize)],
    out: &mut [u8],
) -> io::Result<usize> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    if ranges.len() > MAX_READ_RANGES || total > out.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many or too large ranges",
        ));
    }
    if total == 0 {
        return Ok(0);
    }
    let remote: Vec<libc::iovec> = ranges
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: total,
    };
    // SAFETY: the local iovec covers the first `total` bytes of `out` (checked above), which
    // we borrow mutably for the call; remote iovecs are only interpreted by the kernel in the
    // target's address space.
    let n = unsafe {
        libc::process_vm_readv(
            tid,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One classic-BPF instruction (`struct sock_filter`).
pub type BpfInsn = libc::sock_filter;

/// Install `program` as a seccomp filter on the calling thread (and so on the children it
/// forks afterwards) with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, returning the listener fd.
/// Without CAP_SYS_ADMIN the kernel wants no_new_privs, which we then set.
pub fn install_listener_filter(program: &[BpfInsn]) -> io::Result<OwnedFd> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let attempt = || {
        // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
        // instructions and validates them before attaching.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            )
        }
    };
    let mut rc = attempt();
    if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
        nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
        rc = attempt();
    }
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: with NEW_LISTENER, a non-negative return is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Call `execve(path, argv, envp = NULL)` with `argv` given as a raw address that need not be
/// valid, exactly as a hostile program could. Returns the error when the exec fails (if it
/// succeeds, it does not return). Exists so that tests can hand the monitor broken or
/// endless argv memory; the kernel validates user pointers, so no address harms this process.
#[doc(hidden)]
pub fn execve_with_argv_address(path: &CStr, argv_addr: usize) -> io::Error {
    // SAFETY: the kernel copies `path` (a valid C string we borrow) and reads argv through
    // fault-checked user copies: an invalid address yields EFAULT, never a memory error here.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            path.as_ptr(),
            argv_addr as *const *const libc::c_char,
            0usize,
        );
    }
    io::Error::last_os_error()
}
