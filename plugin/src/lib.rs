//! rce-guard: a containerd NRI plugin plus a seccomp-notify monitor that catches reverse shells
//! (execs whose stdin/stdout/stderr are network sockets) in containers at `execve` time.
//!
//! Data flow, one module each:
//! NRI in ([`nri`]) -> container [`registry`] -> [`policy`] (which containers, and the seccomp
//! merge) -> injection (NRI adjustment, or the [`wrapper`] runtime) -> [`monitor`] (listener
//! handover, notify loop, inspection) -> [`rule`] -> [`finding`] -> [`sinks`].

pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod exec_event;
pub mod fdpass;
pub mod finding;
pub mod fsutil;
pub mod holder;
pub mod holder_link;
pub mod identity;
pub mod judge;
pub mod logging;
pub mod monitor;
pub mod nri;
pub mod nri_handler;
pub mod policy;
pub mod recovery;
pub mod registry;
pub mod rule;
pub mod selection;
pub mod sinks;
pub mod timefmt;
pub mod verdict;
pub mod wrapper;
