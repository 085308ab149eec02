//! Value types that cannot hold an invalid value, so a configuration or a message that
//! parsed is already in range: [`Probability`].

use serde::{Deserialize, Serialize};

/// A probability: a finite number in `[0, 1]`. Serialized as the plain number.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Probability(f64);

/// A number that is no probability.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("a probability must be a number in [0, 1], got {0}")]
pub struct NotAProbability(pub f64);

impl Probability {
    /// Never.
    pub const NEVER: Probability = Probability(0.0);

    /// The probability `p`, if `p` is in `[0, 1]`.
    pub fn new(p: f64) -> Result<Self, NotAProbability> {
        if (0.0..=1.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(NotAProbability(p))
        }
    }

    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Probability {
    type Error = NotAProbability;

    fn try_from(p: f64) -> Result<Self, Self::Error> {
        Self::new(p)
    }
}

impl From<Probability> for f64 {
    fn from(p: Probability) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbers_in_0_1_are_probabilities() {
        for ok in [0.0, 0.3, 1.0] {
            assert_eq!(Probability::new(ok).map(Probability::get), Ok(ok));
        }
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Probability::new(bad).is_err(), "{bad}");
        }
        let back: Probability = serde_json::from_str("0.25").expect("parse");
        assert_eq!(back.get(), 0.25);
        assert!(serde_json::from_str::<Probability>("2").is_err());
        assert_eq!(serde_json::to_string(&back).expect("json"), "0.25");
    }
}
