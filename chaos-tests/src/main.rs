//! `ballast-chaos`: chaos harness and model check for ballast.
fn main() {}
