//! Label rules: where each part of a series key comes from in a
//! Prometheus label set.

use serde::Deserialize;
use shardcast_core::SeriesKey;

/// The metric of a series without a `__name__` label (the result of
/// `rate()` or `sum()`) when the rules do not name one.
pub const UNNAMED_METRIC: &str = "value";

/// Where one part of the series key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPart {
    /// The value of this label; a series without it is not matched.
    Label(String),
    /// This constant.
    Value(String),
}

impl KeyPart {
    fn label(&self) -> Option<&str> {
        match self {
            KeyPart::Label(n) => Some(n),
            KeyPart::Value(_) => None,
        }
    }
}

/// How a Prometheus series' labels become a store key (TOML:
/// `app = { label = "job" }`, `shard_type = { value = "api" }`, …).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRules {
    /// The app.
    pub app: KeyPart,
    /// The shard type.
    pub shard_type: KeyPart,
    /// The metric: by default the metric name (`__name__`), or
    /// [`UNNAMED_METRIC`] for a series without one.
    #[serde(default)]
    pub metric: Option<KeyPart>,
    /// The series id: by default the labels not used above, as
    /// `name=value` pairs in name order joined by `,` (`-` when none).
    #[serde(default)]
    pub series: Option<KeyPart>,
    /// Only these metric names (`__name__`) are kept; all when empty.
    #[serde(default)]
    pub metrics: Vec<String>,
}

impl LabelRules {
    /// Parses rules from TOML; unknown fields are refused.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The key of the series with these labels, or `None` when the rules
    /// do not match it; an error when the key they make is invalid.
    pub fn key<'a>(
        &self,
        labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Option<Result<SeriesKey, String>> {
        let label = |name: &str| labels.clone().find(|(n, _)| *n == name).map(|(_, v)| v);
        if !self.metrics.is_empty() {
            let name = label("__name__")?;
            if !self.metrics.iter().any(|m| m == name) {
                return None;
            }
        }
        let part = |p: &KeyPart| match p {
            KeyPart::Label(name) => label(name).map(str::to_owned),
            KeyPart::Value(v) => Some(v.clone()),
        };
        let app = part(&self.app)?;
        let shard_type = part(&self.shard_type)?;
        let (metric, metric_label) = match &self.metric {
            Some(p) => (part(p)?, p.label()),
            None => match label("__name__") {
                Some(name) => (name.to_owned(), Some("__name__")),
                None => (UNNAMED_METRIC.to_owned(), None),
            },
        };
        let series = match &self.series {
            Some(p) => part(p)?,
            None => {
                let used = [self.app.label(), self.shard_type.label(), metric_label];
                let mut rest: Vec<(&str, &str)> =
                    labels.filter(|(n, _)| !used.contains(&Some(*n))).collect();
                rest.sort_unstable();
                if rest.is_empty() {
                    "-".to_owned()
                } else {
                    rest.iter()
                        .map(|(n, v)| format!("{n}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }
            }
        };
        Some(SeriesKey::new(app, shard_type, metric, series).map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LabelRules {
        LabelRules::from_toml("app = { label = \"job\" }\nshard_type = { value = \"api\" }\n")
            .unwrap()
    }

    fn key(r: &LabelRules, labels: &[(&str, &str)]) -> Option<Result<String, String>> {
        r.key(labels.iter().copied())
            .map(|k| k.map(|k| k.to_string()))
    }

    #[test]
    fn parts_come_from_labels_or_constants_and_the_rest_names_the_series() {
        let r = rules();
        let want = SeriesKey::new("web", "api", "rps", "instance=a:9,zone=b").unwrap();
        let got = key(
            &r,
            &[
                ("zone", "b"),
                ("__name__", "rps"),
                ("instance", "a:9"),
                ("job", "web"),
            ],
        );
        assert_eq!(got, Some(Ok(want.to_string())));
        // No metric name (a rate or a sum): the metric is `value`.
        let want = SeriesKey::new("web", "api", UNNAMED_METRIC, "-").unwrap();
        assert_eq!(key(&r, &[("job", "web")]), Some(Ok(want.to_string())));
        // No `job`: not matched.
        assert_eq!(key(&r, &[("__name__", "rps")]), None);
        let mut only = rules();
        only.metrics = vec!["latency".into()];
        assert_eq!(key(&only, &[("__name__", "rps"), ("job", "web")]), None);
        // A label value the store cannot key by is an error, not a skip.
        let bad = key(&r, &[("__name__", "rps"), ("job", "")]);
        assert!(matches!(bad, Some(Err(_))), "{bad:?}");
    }

    #[test]
    fn the_example_rules_parse() {
        let r = LabelRules::from_toml(include_str!("../../../examples/remote-write.toml")).unwrap();
        assert_eq!(r.metric, None);
        assert_eq!(r.metrics.len(), 2);
    }

    #[test]
    fn rules_refuse_unknown_fields() {
        let e = LabelRules::from_toml(
            "app = { label = \"job\" }\nshard_type = { value = \"x\" }\napps = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("apps"), "{e}");
        assert!(
            LabelRules::from_toml("app = { column = \"job\" }\nshard_type = { value = \"x\" }\n")
                .is_err()
        );
    }
}
