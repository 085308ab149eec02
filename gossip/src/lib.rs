//! `ballast-gossip`: the one network endpoint of a ballast agent (QUIC + mutual TLS).
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
