//! Policy: what the runtime is asked to do with a container's seccomp profile.
//!
//! [`seccomp`] holds the profile model and the one merge shared by both injection paths,
//! [`listener`] the checked listener target, [`annotation`] the contract by which the NRI
//! plugin asks the runtime wrapper to apply the merge.

pub mod annotation;
pub mod listener;
pub mod seccomp;

pub use annotation::{decode_annotation, encode_annotation, SECCOMP_NOTIFY_ANNOTATION};
pub use listener::{ListenerError, NotifyListener};
