//! The policy's configuration; every field has a default chosen with `ballast simulate`.

use crate::units::Millis;
use serde::{Deserialize, Serialize};

/// Which side of a pair hands VMs over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sender {
    /// The busier side of the pair sends, whichever side opened the session.
    #[default]
    Busier,
    /// Only the side that opened the session may send (the original rule).
    Initiator,
}

/// How a round picks its peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerChoice {
    /// One uniformly random live peer.
    Uniform,
    /// Two uniformly random live peers; pair with the one whose load differs more.
    TwoChoice,
    /// `peer_samples` uniformly random live peers; pair with the one whose load differs
    /// most (gossip gives every node every peer's load summary, so sampling is free).
    #[default]
    MostDifferent,
}

/// The knobs of the balancing policy. Loads are in the load model's units (a host's
/// load is the sum of its VMs' loads on it).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// No session unless the sender's load exceeds the receiver's by more than this.
    pub threshold: f64,
    /// A move must lower the pair's larger load by at least this much (hysteresis).
    pub min_gain: f64,
    /// A VM that moved is not moved again for this long, in milliseconds (but see
    /// `cooldown_allows_onward`).
    #[serde(alias = "cooldown_ms")]
    pub cooldown: Millis,
    /// Whether a VM in its cooldown may still move onward: only while its sender stays
    /// the busier side of the pair by more than `threshold` after the move, so it never
    /// crosses the pair's balance and cannot come straight back. Without it, a host that
    /// took in more than its share (every VM on it just arrived) stays overloaded for a
    /// whole cooldown. Swaps and rule repairs always wait the cooldown out.
    pub cooldown_allows_onward: bool,
    /// How many moves one session may plan, each by the nearest-half-difference rule
    /// applied to the loads the previous moves leave.
    pub max_moves_per_session: usize,
    /// Which side of a pair sends.
    pub sender: Sender,
    /// How a round picks its peer.
    pub peer_choice: PeerChoice,
    /// How many peers `peer_choice = "most-different"` samples.
    pub peer_samples: usize,
    /// When no single move gains `min_gain`, whether a session may plan a swap: the
    /// busier side gives one VM and takes one back, the pair chosen so that the net
    /// transfer is the one nearest half the difference.
    pub swaps: bool,
    /// A swap must lower the pair's larger load by at least this much (and by at least
    /// `min_gain`): two migrations should buy more than one.
    pub swap_min_gain: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            threshold: 0.02,
            min_gain: 0.005,
            cooldown: Millis::new(60_000),
            cooldown_allows_onward: true,
            max_moves_per_session: 8,
            sender: Sender::Busier,
            peer_choice: PeerChoice::MostDifferent,
            peer_samples: 8,
            swaps: true,
            swap_min_gain: 0.0125,
        }
    }
}

/// A policy setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyConfigError {
    /// `threshold`, `min_gain` or `swap_min_gain` is negative or not a number.
    #[error("policy.{field} must be a finite number >= 0, got {value}")]
    Negative {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// `max_moves_per_session` is 0: nothing could ever move.
    #[error("policy.max_moves_per_session must be at least 1")]
    NoMoves,
    /// `peer_samples` is outside 1..=PEER_SAMPLES_MAX.
    #[error("policy.peer_samples must be 1 to {PEER_SAMPLES_MAX}, got {0}")]
    PeerSamples(usize),
}

/// Most peers a round may sample (`peer_samples`).
pub const PEER_SAMPLES_MAX: usize = 64;

impl PolicyConfig {
    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        for (field, value) in [
            ("threshold", self.threshold),
            ("min_gain", self.min_gain),
            ("swap_min_gain", self.swap_min_gain),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PolicyConfigError::Negative { field, value });
            }
        }
        if self.max_moves_per_session == 0 {
            return Err(PolicyConfigError::NoMoves);
        }
        if !(1..=PEER_SAMPLES_MAX).contains(&self.peer_samples) {
            return Err(PolicyConfigError::PeerSamples(self.peer_samples));
        }
        Ok(())
    }

    /// How many random peers a round samples before it pairs with the most different.
    pub fn samples_per_round(&self) -> usize {
        match self.peer_choice {
            PeerChoice::Uniform => 1,
            PeerChoice::TwoChoice => 2,
            PeerChoice::MostDifferent => self.peer_samples,
        }
    }
}
