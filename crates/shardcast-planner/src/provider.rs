//! Providers, prices and bills.
//!
//! Hosts belong to providers and are bought on-demand, reserved or spot.
//! Reserved hosts are paid whether used or not, so a plan's bill always
//! includes them; on-demand and spot hosts are paid only when they carry a
//! shard. Spot hosts are cheap but less reliable: [`plan_capacity`] buys the
//! cheapest mix of hosts whose probability of keeping enough shard slots
//! alive meets the service level, treating host failures as independent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, check_open_unit, check_range};

/// How a host is bought.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PriceClass {
    /// Paid per hour while running.
    #[default]
    OnDemand,
    /// Paid for the term whether used or not.
    Reserved,
    /// Cheap, and may be reclaimed by the provider.
    Spot,
}

impl PriceClass {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceClass::OnDemand => "on_demand",
            PriceClass::Reserved => "reserved",
            PriceClass::Spot => "spot",
        }
    }
}

/// The price of one host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pricing {
    /// How it is bought.
    pub class: PriceClass,
    /// Price per hour.
    pub hourly: f64,
}

/// One line of a bill: the hosts of one provider and price class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillLine {
    /// Provider name.
    pub provider: String,
    /// Price class.
    pub class: PriceClass,
    /// Hosts paid for.
    pub hosts: u32,
    /// Their price per hour together.
    pub hourly: f64,
}

/// What a plan costs per hour, by provider and price class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bill {
    /// Lines sorted by provider, then class.
    pub lines: Vec<BillLine>,
    /// Sum of the lines per hour.
    pub hourly_total: f64,
}

impl Bill {
    /// Builds a bill from `(provider, pricing)` of every host paid for.
    pub fn from_hosts<'a>(hosts: impl IntoIterator<Item = (&'a str, Pricing)>) -> Self {
        let mut lines: BTreeMap<(String, PriceClass), (u32, f64)> = BTreeMap::new();
        for (provider, p) in hosts {
            let e = lines.entry((provider.to_string(), p.class)).or_default();
            e.0 += 1;
            e.1 += p.hourly;
        }
        let lines: Vec<BillLine> = lines
            .into_iter()
            .map(|((provider, class), (hosts, hourly))| BillLine {
                provider,
                class,
                hosts,
                hourly,
            })
            .collect();
        let hourly_total = lines.iter().map(|l| l.hourly).sum();
        Self {
            lines,
            hourly_total,
        }
    }

    /// The cost over `hours`.
    pub fn for_hours(&self, hours: f64) -> f64 {
        self.hourly_total * hours
    }
}

/// A kind of host a provider sells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOffer {
    /// Name of the offer, e.g. `aws-m7i.large-spot`.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// Price of one host.
    pub pricing: Pricing,
    /// Probability a host stays up over the planning period, in (0, 1].
    pub reliability: f64,
    /// Shards one host runs.
    pub slots: u32,
    /// Hosts of this offer that can be had.
    pub available: u32,
}

/// Hosts bought of one offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferCount {
    /// Name of the offer.
    pub offer: String,
    /// Hosts bought.
    pub count: u32,
}

/// The hosts to buy for a shard count at a service level, and their bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityPlan {
    /// Hosts per offer, in offer order, offers with no host left out.
    pub hosts: Vec<OfferCount>,
    /// Shard slots bought.
    pub slots: u32,
    /// Probability that at least the needed slots survive.
    pub coverage_probability: f64,
    /// True when the service level is met; false when every available
    /// host together falls short (the plan then buys everything).
    pub met: bool,
    /// The bill of the hosts bought.
    pub bill: Bill,
}

/// Buys the cheapest mix of hosts (greedy by price per expected slot, then
/// pruning hosts not needed) such that the probability that at least
/// `shards` slots survive is at least `service_level`.
pub fn plan_capacity(
    offers: &[HostOffer],
    shards: u32,
    service_level: f64,
) -> Result<CapacityPlan> {
    check_open_unit("capacity.service_level", service_level)?;
    for o in offers {
        check_range(
            "offer.reliability",
            o.reliability,
            f64::MIN_POSITIVE,
            1.0,
            "must lie in (0, 1]",
        )?;
        check_range(
            "offer.pricing.hourly",
            o.pricing.hourly,
            0.0,
            f64::MAX,
            "must be finite and not negative",
        )?;
        if o.slots == 0 {
            return Err(Error::InvalidValue {
                field: "offer.slots",
                value: 0.0,
                reason: "must be positive",
            });
        }
    }
    let mut counts = vec![0u32; offers.len()];
    let unit_price = |o: &HostOffer| o.pricing.hourly / (f64::from(o.slots) * o.reliability);
    let mut p = coverage(offers, &counts, shards);
    while p < service_level {
        let next = offers
            .iter()
            .enumerate()
            .filter(|(i, o)| counts[*i] < o.available)
            .min_by(|(_, a), (_, b)| unit_price(a).total_cmp(&unit_price(b)));
        let Some((i, _)) = next else { break };
        counts[i] += 1;
        p = coverage(offers, &counts, shards);
    }
    let met = p >= service_level;
    if met {
        // Drop the dearest hosts that are not needed.
        let mut order: Vec<usize> = (0..offers.len()).collect();
        order.sort_by(|&a, &b| {
            offers[b]
                .pricing
                .hourly
                .total_cmp(&offers[a].pricing.hourly)
        });
        for i in order {
            while counts[i] > 0 {
                counts[i] -= 1;
                let q = coverage(offers, &counts, shards);
                if q >= service_level {
                    p = q;
                } else {
                    counts[i] += 1;
                    break;
                }
            }
        }
    }
    let bill = Bill::from_hosts(
        offers
            .iter()
            .zip(&counts)
            .flat_map(|(o, &c)| std::iter::repeat_n((o.provider.as_str(), o.pricing), c as usize)),
    );
    Ok(CapacityPlan {
        hosts: offers
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c > 0)
            .map(|(o, &count)| OfferCount {
                offer: o.name.clone(),
                count,
            })
            .collect(),
        slots: offers.iter().zip(&counts).map(|(o, &c)| o.slots * c).sum(),
        coverage_probability: p,
        met,
        bill,
    })
}

/// Probability that at least `need` slots survive, hosts failing
/// independently: a distribution over surviving slots, capped at `need`.
fn coverage(offers: &[HostOffer], counts: &[u32], need: u32) -> f64 {
    let need = need as usize;
    if need == 0 {
        return 1.0;
    }
    let mut dist = vec![0.0; need + 1];
    dist[0] = 1.0;
    for (o, &c) in offers.iter().zip(counts) {
        for _ in 0..c {
            let mut next = vec![0.0; need + 1];
            for (k, &pk) in dist.iter().enumerate() {
                if pk == 0.0 {
                    continue;
                }
                next[k] += pk * (1.0 - o.reliability);
                next[(k + o.slots as usize).min(need)] += pk * o.reliability;
            }
            dist = next;
        }
    }
    dist[need]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, class: PriceClass, hourly: f64, reliability: f64) -> HostOffer {
        HostOffer {
            name: name.into(),
            provider: name.split('-').next().unwrap().into(),
            pricing: Pricing { class, hourly },
            reliability,
            slots: 4,
            available: 10,
        }
    }

    #[test]
    fn cheap_reliable_capacity_wins() {
        let offers = [
            offer("a-od", PriceClass::OnDemand, 1.0, 0.999),
            offer("b-spot", PriceClass::Spot, 0.3, 0.9),
        ];
        let plan = plan_capacity(&offers, 8, 0.99).unwrap();
        assert!(plan.met);
        assert!(plan.coverage_probability >= 0.99);
        // Spot is cheaper per expected slot; its unreliability is paid for
        // with spare hosts.
        assert_eq!(plan.hosts[0].offer, "b-spot");
        assert!(plan.slots >= 8);
        let total: f64 = plan.bill.lines.iter().map(|l| l.hourly).sum();
        assert!((plan.bill.hourly_total - total).abs() < 1e-12);
        assert!((plan.bill.for_hours(24.0) - 24.0 * total).abs() < 1e-9);
    }

    #[test]
    fn too_little_capacity_is_reported() {
        let mut o = offer("a-od", PriceClass::OnDemand, 1.0, 0.5);
        o.available = 1;
        let plan = plan_capacity(&[o], 8, 0.9).unwrap();
        assert!(!plan.met);
        assert_eq!(plan.slots, 4);
        assert_eq!(plan.coverage_probability, 0.0);
    }

    #[test]
    fn coverage_is_exact_for_one_host() {
        let o = [offer("a", PriceClass::Spot, 1.0, 0.8)];
        assert!((coverage(&o, &[1], 4) - 0.8).abs() < 1e-12);
        assert!((coverage(&o, &[2], 8) - 0.64).abs() < 1e-12);
        assert!((coverage(&o, &[2], 4) - 0.96).abs() < 1e-12);
        assert_eq!(coverage(&o, &[0], 0), 1.0);
    }

    #[test]
    fn bill_groups_lines() {
        let b = Bill::from_hosts([
            (
                "x",
                Pricing {
                    class: PriceClass::Spot,
                    hourly: 1.0,
                },
            ),
            (
                "x",
                Pricing {
                    class: PriceClass::Spot,
                    hourly: 2.0,
                },
            ),
            (
                "a",
                Pricing {
                    class: PriceClass::Reserved,
                    hourly: 0.5,
                },
            ),
        ]);
        assert_eq!(b.lines.len(), 2);
        assert_eq!(b.lines[0].provider, "a");
        assert_eq!(b.lines[1].hosts, 2);
        assert_eq!(b.hourly_total, 3.5);
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["lines"][0]["class"], "reserved");
    }
}
