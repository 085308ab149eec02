//! Shared test support: the driver conformance suite (docs/design.md §Drivers), as
//! panicking helpers over `ballast_node::driver::conformance`.
//!
//! Include it from a test crate with `mod common;` (under `node/tests/`) or with
//! `#[path = "../../node/tests/common/mod.rs"] mod common;` from another crate.
#![allow(dead_code)]

pub mod conformance;
