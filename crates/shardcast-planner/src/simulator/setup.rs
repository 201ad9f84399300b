//! What a simulation is set up from: the knobs to sweep, the simulator's
//! settings as a file over its defaults, the simulated range of a series'
//! grid and the demand one shard serves.

use std::ops::Range;

use shardcast_core::{GridStep, Timestamp};

use super::{SimConfig, SweepSpec};
use crate::error::{Error, Result};

/// Days simulated when the range's start is not given.
pub const DEFAULT_DAYS: i64 = 7;

impl SweepSpec {
    /// Refuses knob values the simulator would refuse, before any work: an
    /// empty sweep, utilisations outside (0, 1], service levels outside
    /// (0, 1).
    pub fn validate(&self) -> Result<()> {
        if self.target_utilisations.is_empty() && self.service_levels.is_empty() {
            return Err(Error::Setup(
                "nothing to sweep: give target utilisations or service levels".into(),
            ));
        }
        for &u in &self.target_utilisations {
            if !(u.is_finite() && u > 0.0 && u <= 1.0) {
                return Err(Error::InvalidValue {
                    field: "target_utilisations",
                    value: u,
                    reason: "not a utilisation in (0, 1]",
                });
            }
        }
        for &s in &self.service_levels {
            if !(s.is_finite() && s > 0.0 && s < 1.0) {
                return Err(Error::InvalidValue {
                    field: "service_levels",
                    value: s,
                    reason: "not a probability strictly between 0 and 1",
                });
            }
        }
        Ok(())
    }
}

impl SimConfig {
    /// The settings a JSON document gives over the defaults: fields it
    /// leaves out keep theirs, also inside nested policies. The lead time
    /// and the hold are the caller's (given with the run, not in the
    /// document), so a document that sets them is refused.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |e: serde_json::Error| Error::Setup(format!("bad simulator config: {e}"));
        let value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
        if value.get("lead_steps").is_some() {
            return Err(Error::Setup(
                "bad simulator config: `lead_steps` is not a setting here, the lead time is given with the run".into(),
            ));
        }
        if value.pointer("/shardcast/hold_secs").is_some() {
            return Err(Error::Setup(
                "bad simulator config: `shardcast.hold_secs` is not a setting here, the hold is given with the run".into(),
            ));
        }
        let cfg: SimConfig =
            shardcast_core::overlay::overlaid(&SimConfig::default(), value).map_err(bad)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The simulated part `[first, end)` of a grid of `len` points from
/// `start`: from the first point at or after `from` to the last before
/// `to`; without `from`, the last [`DEFAULT_DAYS`] days, or the second half
/// of a shorter grid. A range that holds no point is an error.
pub fn simulated_range(
    start: Timestamp,
    step: GridStep,
    len: usize,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Range<usize>> {
    let ms = step.millis();
    let time_of = |i: usize| Timestamp(start.0 + ms * i as i64);
    // Index of the first grid point at or after `t`, within 0..=len.
    let index = |t: Timestamp| -> usize {
        let i = (t.0 - start.0 + ms - 1).div_euclid(ms);
        i.clamp(0, len as i64) as usize
    };
    let end = to.map_or(len, index);
    let first = match from {
        Some(t) => index(t),
        None => {
            let days = (DEFAULT_DAYS * Timestamp::DAY_MS / ms) as usize;
            end.saturating_sub(days).max(end / 2)
        }
    };
    if first >= end {
        return Err(Error::Setup(format!(
            "the simulated range {} .. {} holds no point of the series (its {step} grid runs from {} to {})",
            from.unwrap_or(time_of(first)),
            to.unwrap_or(time_of(end)),
            time_of(0),
            time_of(len.saturating_sub(1))
        )));
    }
    Ok(first..end)
}

/// The demand one shard serves: `capacity` when given, else the peak of
/// `demand` spread over `peak_shards`.
pub fn shard_capacity(demand: &[f64], capacity: Option<f64>, peak_shards: u32) -> Result<f64> {
    let peak = demand.iter().copied().fold(0.0, f64::max);
    match capacity {
        Some(c) if c.is_finite() && c > 0.0 => Ok(c),
        Some(c) => Err(Error::InvalidValue {
            field: "capacity",
            value: c,
            reason: "the demand one shard serves must be positive",
        }),
        None if peak_shards == 0 => Err(Error::InvalidValue {
            field: "peak_shards",
            value: 0.0,
            reason: "must be at least 1",
        }),
        None if peak > 0.0 => Ok(peak / f64::from(peak_shards)),
        None => Err(Error::Setup(
            "the simulated range has no positive demand; give the capacity of a shard".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_out_of_range_are_refused() {
        assert!(SweepSpec::default().validate().is_ok());
        let empty = SweepSpec {
            target_utilisations: vec![],
            service_levels: vec![],
        };
        assert!(
            empty
                .validate()
                .unwrap_err()
                .to_string()
                .contains("nothing to sweep")
        );
        for (u, s) in [
            (0.0, 0.9),
            (1.5, 0.9),
            (f64::NAN, 0.9),
            (0.7, 1.0),
            (0.7, 0.0),
        ] {
            let spec = SweepSpec {
                target_utilisations: vec![u],
                service_levels: vec![s],
            };
            assert!(spec.validate().is_err(), "{u} {s}");
        }
    }

    #[test]
    fn a_config_document_overlays_the_defaults() {
        let cfg =
            SimConfig::from_json(r#"{"shardcast": {"max_step_up": 3}, "min_shards": 2}"#).unwrap();
        assert_eq!((cfg.shardcast.max_step_up, cfg.min_shards), (3, 2));
        let d = SimConfig::default();
        assert_eq!(cfg.shardcast.tail, d.shardcast.tail, "nested defaults kept");
        for (doc, says) in [
            (r#"{"lead_steps": 3}"#, "`lead_steps` is not a setting"),
            (
                r#"{"shardcast": {"hold_secs": 3}}"#,
                "`shardcast.hold_secs` is not",
            ),
            (r#"{"min_shards": 5, "max_shards": 2}"#, "min_shards"),
            (r#"{"nope": 1}"#, "nope"),
            ("{", "bad simulator config"),
        ] {
            let e = SimConfig::from_json(doc).unwrap_err().to_string();
            assert!(e.contains(says), "{doc}: {e}");
        }
    }

    #[test]
    fn the_range_defaults_to_the_last_week_or_the_second_half() {
        let hour = GridStep::from_millis(3_600_000).unwrap();
        let start = Timestamp(0);
        // Three weeks: the last seven days.
        assert_eq!(
            simulated_range(start, hour, 504, None, None).unwrap(),
            336..504
        );
        // Ten days: the second half.
        assert_eq!(
            simulated_range(start, hour, 240, None, None).unwrap(),
            120..240
        );
        // From and to round up to the next grid point.
        let r = simulated_range(
            start,
            hour,
            240,
            Some(Timestamp(1)),
            Some(Timestamp(7_200_000)),
        );
        assert_eq!(r.unwrap(), 1..2);
        let e = simulated_range(start, hour, 240, Some(Timestamp(1_000 * 3_600_000)), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no point"), "{e}");
    }

    #[test]
    fn capacity_is_given_or_spread_from_the_peak() {
        assert_eq!(shard_capacity(&[1.0, 8.0], Some(2.0), 4).unwrap(), 2.0);
        assert_eq!(shard_capacity(&[1.0, 8.0], None, 4).unwrap(), 2.0);
        assert!(shard_capacity(&[1.0], Some(0.0), 4).is_err());
        assert!(shard_capacity(&[1.0], None, 0).is_err());
        let e = shard_capacity(&[0.0, 0.0], None, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no positive demand"), "{e}");
    }
}
