//! The fd holder (see `server`) and the judge's link to it (`client`), speaking the protocol
//! in `wire`.

pub mod client;
pub mod server;
pub mod wire;

pub use client::{HolderEvent, HolderLink};
pub use server::{Holder, HolderConfig, HolderError};
