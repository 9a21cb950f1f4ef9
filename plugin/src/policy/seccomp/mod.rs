//! The container's OCI seccomp policy and the merge that adds our exec notify rule to it.
//!
//! [`model`] reads and writes `linux.seccomp` without losing fields, [`merge`] is the one merge
//! used by the NRI adjustment and the runtime wrapper alike, [`nri`] converts to and from the
//! NRI message, [`arch`] names the host's seccomp architectures.

pub mod arch;
pub mod merge;
pub mod model;
pub mod nri;

#[cfg(test)]
mod merge_tests;

pub use arch::HostArch;
pub use merge::{merge_exec_notify, ExecCoverage, LeftAlone, MergeOutcome, Merged, EXEC_SYSCALLS};
pub use model::{SeccompPolicy, SyscallArg, SyscallRule};
