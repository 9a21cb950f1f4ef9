//! Which syscall a notification is, from `seccomp_data.{arch,nr}`: a 64-bit kernel runs
//! 32-bit (and on x86_64, x32) programs with their own syscall numbers, and a container may
//! use any of them to exec.

use crate::exec_event::{ExecAbi, ExecSyscall};

pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// x32 syscalls come with the x86_64 arch and this bit set in `nr`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const X86_64_EXECVE: u32 = 59;
const X86_64_EXECVEAT: u32 = 322;
const I386_EXECVE: u32 = 11;
const I386_EXECVEAT: u32 = 358;
const X32_EXECVE: u32 = X32_SYSCALL_BIT | 520;
const X32_EXECVEAT: u32 = X32_SYSCALL_BIT | 545;
const AARCH64_EXECVE: u32 = 221;
const AARCH64_EXECVEAT: u32 = 281;
const ARM_EXECVE: u32 = 11;
const ARM_EXECVEAT: u32 = 387;

/// The exec syscall numbers per arch that this CPU can run, for building filters.
#[cfg(target_arch = "x86_64")]
pub const EXEC_SYSCALLS_BY_ARCH: &[(u32, &[u32])] = &[
    (
        AUDIT_ARCH_X86_64,
        &[X86_64_EXECVE, X86_64_EXECVEAT, X32_EXECVE, X32_EXECVEAT],
    ),
    (AUDIT_ARCH_I386, &[I386_EXECVE, I386_EXECVEAT]),
];
#[cfg(target_arch = "aarch64")]
pub const EXEC_SYSCALLS_BY_ARCH: &[(u32, &[u32])] = &[
    (AUDIT_ARCH_AARCH64, &[AARCH64_EXECVE, AARCH64_EXECVEAT]),
    (AUDIT_ARCH_ARM, &[ARM_EXECVE, ARM_EXECVEAT]),
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const EXEC_SYSCALLS_BY_ARCH: &[(u32, &[u32])] = &[];

/// An exec syscall as the caller issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecCall {
    pub syscall: ExecSyscall,
    pub abi: ExecAbi,
}

impl ExecCall {
    /// Size of a pointer in the caller's address space (argv entries).
    pub fn pointer_size(&self) -> usize {
        match self.abi {
            ExecAbi::X86_64 | ExecAbi::Aarch64 => 8,
            ExecAbi::I386 | ExecAbi::X32 | ExecAbi::Arm => 4,
        }
    }
}

/// Decode `(arch, nr)`; `None` for anything that is not an exec.
pub fn decode(arch: u32, nr: i32) -> Option<ExecCall> {
    use ExecSyscall::{Execve, Execveat};
    let nr = nr as u32;
    let (syscall, abi) = match (arch, nr) {
        (AUDIT_ARCH_X86_64, X86_64_EXECVE) => (Execve, ExecAbi::X86_64),
        (AUDIT_ARCH_X86_64, X86_64_EXECVEAT) => (Execveat, ExecAbi::X86_64),
        (AUDIT_ARCH_X86_64, X32_EXECVE) => (Execve, ExecAbi::X32),
        (AUDIT_ARCH_X86_64, X32_EXECVEAT) => (Execveat, ExecAbi::X32),
        (AUDIT_ARCH_I386, I386_EXECVE) => (Execve, ExecAbi::I386),
        (AUDIT_ARCH_I386, I386_EXECVEAT) => (Execveat, ExecAbi::I386),
        (AUDIT_ARCH_AARCH64, AARCH64_EXECVE) => (Execve, ExecAbi::Aarch64),
        (AUDIT_ARCH_AARCH64, AARCH64_EXECVEAT) => (Execveat, ExecAbi::Aarch64),
        (AUDIT_ARCH_ARM, ARM_EXECVE) => (Execve, ExecAbi::Arm),
        (AUDIT_ARCH_ARM, ARM_EXECVEAT) => (Execveat, ExecAbi::Arm),
        _ => return None,
    };
    Some(ExecCall { syscall, abi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_native_and_compat_exec_numbers() {
        let d = |a, n: u32| decode(a, n as i32);
        assert_eq!(
            d(AUDIT_ARCH_X86_64, 59).unwrap().syscall,
            ExecSyscall::Execve
        );
        assert_eq!(
            d(AUDIT_ARCH_X86_64, 322).unwrap().syscall,
            ExecSyscall::Execveat
        );
        assert_eq!(
            d(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520).unwrap().abi,
            ExecAbi::X32
        );
        assert_eq!(
            d(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 545).unwrap().syscall,
            ExecSyscall::Execveat
        );
        assert_eq!(d(AUDIT_ARCH_I386, 11).unwrap().abi, ExecAbi::I386);
        assert_eq!(
            d(AUDIT_ARCH_I386, 358).unwrap().syscall,
            ExecSyscall::Execveat
        );
        assert_eq!(d(AUDIT_ARCH_AARCH64, 221).unwrap().abi, ExecAbi::Aarch64);
        assert_eq!(d(AUDIT_ARCH_ARM, 387).unwrap().abi, ExecAbi::Arm);
        // i386 number 59 is `oldolduname`, x86_64 number 11 is `munmap`: not execs.
        assert_eq!(d(AUDIT_ARCH_I386, 59), None);
        assert_eq!(d(AUDIT_ARCH_X86_64, 11), None);
        assert_eq!(d(0x1234, 59), None);
        assert_eq!(d(AUDIT_ARCH_I386, 11).unwrap().pointer_size(), 4);
        assert_eq!(d(AUDIT_ARCH_X86_64, 59).unwrap().pointer_size(), 8);
    }
}
