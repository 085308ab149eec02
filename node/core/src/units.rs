//! Value types that cannot hold an invalid value, so a configuration or a message that
//! parsed is already in range: [`Probability`], [`Millis`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A span of time in whole milliseconds, written with its unit: `"500ms"`, `"2s"`,
/// `"1.5s"`, `"10m"`, `"1h"`, `"1d"` (a bare `0` is zero). A plain integer is read as
/// milliseconds, so the `…_ms = 500` keys of older configurations still parse. Written
/// back with the largest unit that keeps it exact (`"10s"`, `"1500ms"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(u64);

/// Text that is no span of time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no duration: write a number with its unit, e.g. \"500ms\", \"2s\", \"1.5s\", \"10m\", \"1h\"")]
pub struct BadDuration(String);

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl Millis {
    /// Zero.
    pub const ZERO: Millis = Millis(0);

    /// `ms` milliseconds.
    pub const fn new(ms: u64) -> Self {
        Self(ms)
    }

    /// `s` seconds.
    pub const fn secs(s: u64) -> Self {
        Self(s.saturating_mul(1_000))
    }

    /// The milliseconds.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// As a [`Duration`].
    pub const fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Whether it is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<Millis> for Duration {
    fn from(m: Millis) -> Self {
        m.duration()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| self.0.is_multiple_of(*size))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

impl FromStr for Millis {
    type Err = BadDuration;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadDuration(text.to_owned());
        let t = text.trim();
        if t == "0" {
            return Ok(Self::ZERO);
        }
        let split = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let size = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, size)| *size)
            .ok_or_else(bad)?;
        if let Ok(whole) = number.parse::<u64>() {
            return whole.checked_mul(size).map(Self).ok_or_else(bad);
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let ms = value * size as f64;
        let exact = ms.round();
        if !value.is_finite() || value < 0.0 || (ms - exact).abs() > 1e-6 || exact > u64::MAX as f64
        {
            return Err(bad());
        }
        Ok(Self(exact as u64))
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millis;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration with its unit (\"500ms\", \"2s\", \"10m\") or whole milliseconds",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Millis, E> {
                Ok(Millis(ms))
            }

            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Millis, E> {
                u64::try_from(ms)
                    .map(Millis)
                    .map_err(|_| E::custom(format!("a duration cannot be negative, got {ms}")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Millis, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

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
    fn durations_parse_with_their_unit_and_print_back_exactly() {
        for (text, ms) in [
            ("500ms", 500),
            ("2s", 2_000),
            ("1.5s", 1_500),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("0", 0),
            (" 3 s ", 3_000),
        ] {
            assert_eq!(text.parse::<Millis>(), Ok(Millis::new(ms)), "{text}");
        }
        for bad in [
            "", "5", "ms", "2 weeks", "-1s", "1.0005s", "1e30h", "NaNs", "1.5.2s",
        ] {
            assert!(bad.parse::<Millis>().is_err(), "{bad}");
        }
        for ms in [
            0, 1, 999, 1_000, 1_500, 60_000, 90_000, 3_600_000, 86_400_000,
        ] {
            let m = Millis::new(ms);
            assert_eq!(m.to_string().parse::<Millis>(), Ok(m), "{m}");
        }
        assert_eq!(Millis::new(90_000).to_string(), "90s");
        assert_eq!(Millis::new(3_600_000).to_string(), "1h");
    }

    #[test]
    fn a_duration_reads_from_text_or_whole_milliseconds() {
        let m: Millis = serde_json::from_str("\"2s\"").expect("text");
        assert_eq!(m, Millis::secs(2));
        let m: Millis = serde_json::from_str("250").expect("number");
        assert_eq!(m, Millis::new(250));
        assert!(serde_json::from_str::<Millis>("-5").is_err());
        assert!(serde_json::from_str::<Millis>("\"5 parsecs\"").is_err());
        assert_eq!(
            serde_json::to_string(&Millis::new(1_500)).expect("json"),
            "\"1500ms\""
        );
    }

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
