//! The balancing policy of docs/design.md §Balancing, as pure functions of plain data.
//!
//! No I/O, no clock, no randomness except an RNG passed in: the agent and the simulator
//! (`ballast simulate`) call exactly these functions.
//!
//! - [`config`]: the policy's knobs (threshold, min_gain, cooldown, moves per session…).
//! - [`decide`]: `(local view, peer view, config) -> Decision`, the nearest-half-difference
//!   rule, re-applied on the updated loads when a session may plan several moves, and
//!   the swap a session may plan when no single move gains enough.
//! - [`peer`]: the choice of a uniformly random peer (or the most different of `d`).

pub mod config;
pub mod decide;
pub mod peer;

pub use config::{PeerChoice, PolicyConfig, PolicyConfigError, Sender, PEER_SAMPLES_MAX};
pub use decide::{
    decide, plan_moves, plan_swap, swap_possible, Candidate, Context, Decision, MoveRules,
    PlannedMove, Side, Stay, View,
};
pub use peer::choose_peer;
