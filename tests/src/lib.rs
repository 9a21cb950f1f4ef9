//! rce-guard's real-runtime harness: private containerd instances driven through CRI, as kubelet
//! drives them, plus helpers to run the rce-guard agent next to them. No mocks anywhere.
//!
//! - [`Containerd`]: one private containerd per test (own root, state, gRPC and NRI sockets, log
//!   file), in version 1.7 (NRI api 0.6.1) or 2.1 (NRI api 0.8.0). Dropping it stops every pod,
//!   kills the daemon and any leftover shim, unmounts and removes its directories.
//! - [`Cri`]: a blocking CRI client (pods, containers, exec) over the instance's gRPC socket.
//! - [`Agent`]: the rce-guard binary as a child process; its JSON log lines and findings are
//!   collected so a test can wait for one.
//! - [`ReverseShellListener`]: the attacker's side of a reverse shell, on the host's loopback.
//!
//! The harness is blocking on purpose: tests are plain `#[test]` functions, and `Drop` can clean
//! up without an async runtime. Do not call it from inside a tokio runtime.
//!
//! Everything needs root and the machine prepared by `hack/setup.sh`; without them the harness
//! returns an error that says so (tests fail, they never skip).

mod agent;
mod containerd;
mod create_timing;
mod cri;
mod crun_cgroups;
mod env;
mod exec_stream;
mod log_lines;
mod procfs;
mod product;
pub mod restart;
mod reverse_shell;
mod wait;

pub use agent::{agent_binary, Agent, AgentBuilder};
pub use containerd::{Containerd, ContainerdOptions, RuntimeHandler, Version};
pub use create_timing::{median, percentile, CreateTimings, TimingBundle};
pub use cri::{ContainerSpec, Cri, ExecResult, Pod, PodSpec, Seccomp};
pub use crun_cgroups::CrunCgroupsFix;
pub use env::{e2e_root, require_root, require_setup, BUSYBOX_IMAGE, PAUSE_IMAGE};
pub use exec_stream::{exec_url, ExecSession, ExecSessionEnd};
pub use log_lines::{field_str, message, LogLine};
pub use product::{
    agent_status, product_binaries, status_entry, AgentConfigFile, CrunWrapper, ProductBinaries,
};
pub use reverse_shell::ReverseShellListener;
pub use wait::wait_until;

/// Re-exported so tests can name CRI types without depending on `k8s-cri` themselves.
pub use k8s_cri::v1 as cri_api;
