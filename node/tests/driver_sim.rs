//! The driver conformance suite on the sim driver, in-process mode.

mod common;
