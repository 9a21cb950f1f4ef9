//! The seccomp filter that runc would install from our NOTIFY rule, built by hand: trap
//! `execve` and `execveat` of every ABI the CPU runs (native and compat), allow everything
//! else. The monitor never installs it on itself; test helpers and the benchmark do, on the
//! processes that play "container".

use std::io;
use std::os::fd::OwnedFd;

use super::abi;
use super::sys::{self, BpfInsn};

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> BpfInsn {
    BpfInsn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: u8, jf: u8) -> BpfInsn {
    BpfInsn {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The (arch, syscall numbers) pairs to trap on this CPU.
pub fn trapped_syscalls() -> &'static [(u32, &'static [u32])] {
    abi::EXEC_SYSCALLS_BY_ARCH
}

/// Build the program: per arch a block "arch matches? load nr, compare against each exec
/// number, jump to NOTIFY", then ALLOW.
pub fn exec_notify_program() -> Vec<BpfInsn> {
    let table = trapped_syscalls();
    // Layout: [ld arch], then per arch [jeq arch][ld nr][jeq nr]*k[ret allow], then
    // [ret allow] for unknown arches, then [ret notify].
    let body: usize = table.iter().map(|(_, nrs)| 3 + nrs.len()).sum();
    let notify_at = 1 + body + 1;
    let mut prog = Vec::with_capacity(notify_at + 1);
    prog.push(stmt(BPF_LD_W_ABS, OFFSET_ARCH));
    for (arch, nrs) in table {
        let skip = (1 + nrs.len() + 1) as u8;
        prog.push(jump(*arch, 0, skip));
        prog.push(stmt(BPF_LD_W_ABS, OFFSET_NR));
        for nr in nrs.iter() {
            let here = prog.len();
            let to_notify = (notify_at - here - 1) as u8;
            prog.push(jump(*nr, to_notify, 0));
        }
        prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
        // A failed `jeq arch` jumps to the next block's `jeq arch` with the arch still loaded.
    }
    // Unknown arch: allow.
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_USER_NOTIF));
    prog
}

/// Install the exec-notify filter on the calling thread and return its listener fd. The
/// thread's later children inherit the filter; the thread itself must not be one that the
/// monitor runs on.
pub fn install_exec_notify_filter() -> io::Result<OwnedFd> {
    sys::install_listener_filter(&exec_notify_program())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter just big enough for our program, so its jumps are checked.
    fn run(prog: &[BpfInsn], arch: u32, nr: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => acc = if i.k == OFFSET_ARCH { arch } else { nr },
                BPF_JEQ_K => {
                    pc += if acc == i.k {
                        i.jt as usize
                    } else {
                        i.jf as usize
                    };
                }
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn program_traps_every_exec_abi_and_allows_the_rest() {
        let prog = exec_notify_program();
        for (arch, nrs) in trapped_syscalls() {
            for nr in nrs.iter() {
                assert_eq!(
                    run(&prog, *arch, *nr),
                    libc::SECCOMP_RET_USER_NOTIF,
                    "{arch:#x}/{nr}"
                );
            }
            assert_eq!(run(&prog, *arch, 1), libc::SECCOMP_RET_ALLOW);
            assert_eq!(run(&prog, *arch, 0), libc::SECCOMP_RET_ALLOW);
        }
        assert_eq!(run(&prog, 0xdead, 59), libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn program_covers_native_and_compat_execve() {
        let prog = exec_notify_program();
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_X86_64, 59),
                libc::SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_X86_64, 322),
                libc::SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_I386, 11),
                libc::SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_I386, 358),
                libc::SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_I386, 59),
                libc::SECCOMP_RET_ALLOW
            );
            assert_eq!(
                run(&prog, abi::AUDIT_ARCH_X86_64, abi::X32_SYSCALL_BIT | 520),
                libc::SECCOMP_RET_USER_NOTIF
            );
        }
        assert!(!prog.is_empty());
    }
}
