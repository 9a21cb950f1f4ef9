//! A stand-alone NRI (containerd Node Resource Interface) plugin stub.
//!
//! Nothing in here knows about rce-guard: [`mux`] splits the NRI socket into its two
//! ttrpc connections, [`Plugin`] is what a plugin implements, [`Stub`] registers it with
//! the runtime, serves its events and reconnects when the runtime restarts.

pub mod mux;

pub use rce_guard_proto as api;
