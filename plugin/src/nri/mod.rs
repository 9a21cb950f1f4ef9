//! A stand-alone NRI (containerd Node Resource Interface) plugin stub.
//!
//! Nothing in here knows about rce-guard, so it can become a crate of its own:
//! - [`mux`] splits the NRI socket into its two ttrpc connections;
//! - [`Plugin`] is what a plugin implements, [`EventMask`] what it subscribes to;
//! - [`NriApiLevel`] says what the connected runtime supports;
//! - [`Stub`] registers the plugin, serves its events and reconnects when the runtime
//!   restarts; [`RuntimeHandle`] calls `UpdateContainers`.
//!
//! See `plugin/examples/nri_skeleton.rs` for a complete minimal plugin.

pub mod api_level;
pub mod events;
pub mod launch;
pub mod mux;
pub mod plugin;
pub mod service;
pub mod stub;

#[cfg(test)]
mod test_runtime;

pub use api_level::NriApiLevel;
pub use events::EventMask;
pub use plugin::{Plugin, PluginError, PluginResult, RuntimeInfo};
pub use rce_guard_proto as api;
pub use stub::{RuntimeHandle, Stub, StubError, StubOptions};
