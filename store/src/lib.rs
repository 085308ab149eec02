//! `ballast-store`: the durable state of one ballast agent, kept in sled.
//!
//! Modules:
//! - [`types`]: the records kept (schedule entries, handoff records, node metadata), defined
//!   in `ballast-core` and re-exported here.
//! - `error`: [`StoreError`] and [`Outcome`] (applied or duplicate).
//! - `store`: the [`Store`] handle, its reads, [`StoreSnapshot`] and the one write path.
//! - `transitions`: the schedule's state transitions (create, begin/abort/commit a move,
//!   accept/promote/drop an incoming VM, pin, load factors).
//! - `open`: opening a directory, first-time creation, metadata and record checks.
//! - `migrate`: reading a store of an older format (0.1's) and rewriting it.
//! - `history`: the session history (records kept across restarts, bounded).
//! - `revocations`: revoked node names' revocations, kept across restarts.
//! - `generation`: the write generation and its witness file (detects lost writes).
//! - `codec`: bincode 2 encoding with a size limit, and the key layout.
//! - `validate`: checks on caller input.
//!
//! Every change that touches more than one key is one sled transaction followed by a
//! flush before the call returns, so no caller can act on a write that is not durable.
//! See `docs/design-store.md` for the trees and keys.
#![deny(missing_docs, unreachable_pub)]

mod codec;
mod error;
mod generation;
mod history;
mod migrate;
mod open;
mod revocations;
mod store;
mod transitions;
mod validate;

pub use ballast_core::types;
pub use ballast_core::types::*;
pub use codec::{RECORD_BYTES_MAX, VM_ID_BYTES_MAX};
pub use error::{Cause, Outcome, StoreError};
pub use history::HistoryBounds;
pub use open::FORMAT_VERSION;
pub use store::{Store, StoreSnapshot};
pub use validate::FACTOR_BATCH_MAX;
