//! `ballast`: the one binary of ballast.
fn main() {}
