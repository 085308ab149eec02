//! `ballast-store`: the durable state of one ballast agent, kept in sled.
//!
//! Modules:
//! - [`types`]: the records kept (schedule entries, handoff records, node metadata).
//!
//! Every change that touches more than one key is one sled transaction followed by a
//! flush before the call returns, so no caller can act on a write that is not durable.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod types;

pub use types::*;
