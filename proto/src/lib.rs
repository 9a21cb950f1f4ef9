//! rce-guard's own, wire-compatible definition of the NRI plugin API
//! (`nri.pkg.api.v1alpha1`), generated at build time from `nri.proto`.
//!
//! [`nri`] holds the message types (re-exported at the crate root), [`nri_ttrpc`]
//! the async ttrpc clients (`RuntimeClient`, `PluginClient`), server traits
//! (`Runtime`, `Plugin`) and their `create_*` registration helpers.

/// Message types.
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_attributes,
    unused_mut,
    unused_results
)]
#[rustfmt::skip]
pub mod nri {
    include!(concat!(env!("OUT_DIR"), "/nri.include.rs"));
}

/// Async ttrpc clients and server traits.
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results
)]
#[rustfmt::skip]
pub mod nri_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri_ttrpc.include.rs"));
}

pub use nri::*;
pub use protobuf;
pub use ttrpc;
