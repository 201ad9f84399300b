use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The 13 quantile levels of the benchmark protocol, in increasing order.
pub const PROTOCOL_QUANTILES: [f64; 13] = [
    0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975,
];

/// A quantile level in the open interval (0, 1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Quantile(f64);

impl Quantile {
    /// The median.
    pub const MEDIAN: Quantile = Quantile(0.5);

    /// Validates a level.
    pub fn new(value: f64) -> Result<Self> {
        if value.is_finite() && value > 0.0 && value < 1.0 {
            Ok(Self(value))
        } else {
            Err(Error::QuantileOutOfRange { value })
        }
    }

    /// The level as a number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Quantile {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self> {
        Self::new(value)
    }
}

impl From<Quantile> for f64 {
    fn from(q: Quantile) -> f64 {
        q.0
    }
}

impl fmt::Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A non-empty, strictly increasing set of quantile levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct QuantileSet(Vec<Quantile>);

impl QuantileSet {
    /// Validates a list of levels.
    pub fn new(levels: &[f64]) -> Result<Self> {
        let qs = levels
            .iter()
            .map(|&l| Quantile::new(l))
            .collect::<Result<Vec<_>>>()?;
        if qs.is_empty() || qs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::QuantileSetUnordered {
                levels: levels.to_vec(),
            });
        }
        Ok(Self(qs))
    }

    /// The 13 levels of the benchmark protocol.
    pub fn protocol() -> Self {
        Self(PROTOCOL_QUANTILES.iter().map(|&q| Quantile(q)).collect())
    }

    /// Number of levels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a set has at least one level.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The levels in increasing order.
    pub fn levels(&self) -> &[Quantile] {
        &self.0
    }

    /// Index of an exact level, if present.
    pub fn position(&self, q: f64) -> Option<usize> {
        self.0.iter().position(|l| (l.0 - q).abs() < 1e-12)
    }
}

impl TryFrom<Vec<f64>> for QuantileSet {
    type Error = Error;
    fn try_from(v: Vec<f64>) -> Result<Self> {
        Self::new(&v)
    }
}

impl From<QuantileSet> for Vec<f64> {
    fn from(s: QuantileSet) -> Vec<f64> {
        s.0.into_iter().map(f64::from).collect()
    }
}

/// A number of future steps to forecast, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Horizon(NonZeroU32);

impl Horizon {
    /// The longest horizon any component accepts (a week of minutes).
    pub const MAX: u32 = 10_080;

    /// Validates a number of steps.
    pub fn new(steps: u64) -> Result<Self> {
        u32::try_from(steps)
            .ok()
            .filter(|&s| s <= Self::MAX)
            .and_then(NonZeroU32::new)
            .map(Self)
            .ok_or(Error::HorizonOutOfRange {
                steps,
                max: Self::MAX,
            })
    }

    /// The number of steps.
    pub fn steps(self) -> usize {
        self.0.get() as usize
    }
}

impl TryFrom<u64> for Horizon {
    type Error = Error;
    fn try_from(v: u64) -> Result<Self> {
        Self::new(v)
    }
}

impl From<Horizon> for u64 {
    fn from(h: Horizon) -> u64 {
        u64::from(h.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_bounds() {
        assert!(Quantile::new(0.5).is_ok());
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Quantile::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantile_set_must_increase() {
        assert!(QuantileSet::new(&[0.1, 0.5, 0.9]).is_ok());
        assert!(QuantileSet::new(&[0.5, 0.1]).is_err());
        assert!(QuantileSet::new(&[0.5, 0.5]).is_err());
        assert!(QuantileSet::new(&[]).is_err());
        assert_eq!(QuantileSet::protocol().len(), 13);
        assert_eq!(QuantileSet::protocol().position(0.5), Some(6));
    }

    #[test]
    fn horizon_bounds() {
        assert_eq!(Horizon::new(12).unwrap().steps(), 12);
        assert!(Horizon::new(0).is_err());
        assert!(Horizon::new(u64::from(Horizon::MAX) + 1).is_err());
        let h: Horizon = serde_json::from_str("24").unwrap();
        assert_eq!(h.steps(), 24);
        assert!(serde_json::from_str::<Horizon>("0").is_err());
    }
}
