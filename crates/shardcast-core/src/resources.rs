use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// An amount of the three resources a shard asks for and a host offers.
///
/// Units are the caller's (for example cores, GiB and Gbit/s); the planner
/// only compares amounts of the same dimension with each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU, e.g. in cores.
    pub cpu: f64,
    /// Memory, e.g. in GiB.
    pub memory: f64,
    /// Network bandwidth, e.g. in Gbit/s.
    pub bandwidth: f64,
}

impl Resources {
    /// Number of dimensions.
    pub const DIMENSIONS: usize = 3;

    /// Names of the dimensions, in the order of [`Resources::to_array`].
    pub const NAMES: [&'static str; 3] = ["cpu", "memory", "bandwidth"];

    /// Nothing of anything.
    pub const ZERO: Resources = Resources {
        cpu: 0.0,
        memory: 0.0,
        bandwidth: 0.0,
    };

    /// Builds an amount from its three dimensions.
    pub fn new(cpu: f64, memory: f64, bandwidth: f64) -> Self {
        Self {
            cpu,
            memory,
            bandwidth,
        }
    }

    /// The dimensions as an array `[cpu, memory, bandwidth]`.
    pub fn to_array(self) -> [f64; 3] {
        [self.cpu, self.memory, self.bandwidth]
    }

    /// Builds an amount from `[cpu, memory, bandwidth]`.
    pub fn from_array(a: [f64; 3]) -> Self {
        Self::new(a[0], a[1], a[2])
    }

    /// True when every dimension is finite and not negative.
    pub fn is_valid(self) -> bool {
        self.to_array().iter().all(|v| v.is_finite() && *v >= 0.0)
    }

    /// True when `self` fits within `capacity` in every dimension (a small
    /// relative tolerance absorbs rounding of sums).
    pub fn fits_within(self, capacity: Resources) -> bool {
        self.to_array()
            .iter()
            .zip(capacity.to_array())
            .all(|(need, cap)| *need <= cap + 1e-9 * cap.abs().max(1.0))
    }

    /// Component-wise minimum.
    pub fn min(self, other: Resources) -> Resources {
        Self::new(
            self.cpu.min(other.cpu),
            self.memory.min(other.memory),
            self.bandwidth.min(other.bandwidth),
        )
    }

    /// Component-wise `self / capacity`; a dimension of zero capacity counts
    /// as fully used when anything is asked of it and as idle otherwise.
    pub fn utilisation_of(self, capacity: Resources) -> [f64; 3] {
        let used = self.to_array();
        let cap = capacity.to_array();
        std::array::from_fn(|d| {
            if cap[d] > 0.0 {
                used[d] / cap[d]
            } else if used[d] > 0.0 {
                f64::INFINITY
            } else {
                0.0
            }
        })
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Self::new(
            self.cpu + o.cpu,
            self.memory + o.memory,
            self.bandwidth + o.bandwidth,
        )
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        Self::new(
            self.cpu - o.cpu,
            self.memory - o.memory,
            self.bandwidth - o.bandwidth,
        )
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}, bandwidth {}",
            self.cpu, self.memory, self.bandwidth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_and_utilisation() {
        let cap = Resources::new(4.0, 16.0, 10.0);
        assert!(Resources::new(4.0, 1.0, 1.0).fits_within(cap));
        assert!(!Resources::new(4.1, 1.0, 1.0).fits_within(cap));
        assert_eq!(
            Resources::new(2.0, 4.0, 0.0).utilisation_of(cap),
            [0.5, 0.25, 0.0]
        );
        let zero = Resources::new(1.0, 1.0, 0.0);
        assert_eq!(
            Resources::new(0.0, 0.0, 1.0).utilisation_of(zero)[2],
            f64::INFINITY
        );
        assert!(!Resources::new(f64::NAN, 0.0, 0.0).is_valid());
        let r: Resources = serde_json::from_str(r#"{"cpu":1,"memory":2,"bandwidth":3}"#).unwrap();
        assert_eq!(r, Resources::new(1.0, 2.0, 3.0));
        assert!(
            serde_json::from_str::<Resources>(r#"{"cpu":1,"memory":2,"bandwidth":3,"gpu":1}"#)
                .is_err()
        );
    }
}
