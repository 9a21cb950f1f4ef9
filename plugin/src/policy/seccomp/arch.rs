//! The host's seccomp architectures: its native one plus the compat ABIs that its processes can
//! still call (an x86_64 process can issue i386 syscalls with `int 0x80`, where `execve` has
//! another number).

/// The machine the runtime runs on, as far as seccomp architectures go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    X86_64,
    Aarch64,
    Riscv64,
    S390x,
    Ppc64le,
    /// An architecture this table does not know; a profile made for it lists no architecture,
    /// which libseccomp reads as "native only".
    Unknown,
}

impl HostArch {
    /// The architecture this binary was built for (the wrapper and the agent run natively).
    pub fn current() -> Self {
        Self::from_rust_arch(std::env::consts::ARCH)
    }

    /// From a Rust `target_arch` name (`std::env::consts::ARCH`).
    pub fn from_rust_arch(arch: &str) -> Self {
        match arch {
            "x86_64" => HostArch::X86_64,
            "aarch64" => HostArch::Aarch64,
            "riscv64" => HostArch::Riscv64,
            "s390x" => HostArch::S390x,
            "powerpc64" if cfg!(target_endian = "little") => HostArch::Ppc64le,
            _ => HostArch::Unknown,
        }
    }

    /// The native architecture followed by its compat ones, in OCI spelling.
    pub fn scmp_arches(self) -> &'static [&'static str] {
        match self {
            HostArch::X86_64 => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            HostArch::Aarch64 => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            HostArch::Riscv64 => &["SCMP_ARCH_RISCV64"],
            HostArch::S390x => &["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
            HostArch::Ppc64le => &["SCMP_ARCH_PPC64LE"],
            HostArch::Unknown => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_arches_follow_the_native_one() {
        assert_eq!(
            HostArch::from_rust_arch("x86_64").scmp_arches(),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(
            HostArch::from_rust_arch("aarch64").scmp_arches(),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        );
        assert!(HostArch::from_rust_arch("mips").scmp_arches().is_empty());
    }

    #[test]
    fn current_is_known_on_the_build_machines() {
        assert_ne!(HostArch::current(), HostArch::Unknown);
    }
}
