use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest accepted key field, in bytes.
const MAX_FIELD_LEN: usize = 256;

/// Identifies one metric series: which application, which shard type, which
/// metric, and which series among several of the same metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    /// The application that runs the shards.
    pub app: String,
    /// The kind of shard the metric describes, e.g. `api-cpu`.
    pub shard_type: String,
    /// The metric name, e.g. `cpu` or `requests`.
    pub metric: String,
    /// The series id within the metric, e.g. a host or a file stem.
    pub series: String,
}

impl SeriesKey {
    /// Builds a key, validating every field.
    pub fn new(
        app: impl Into<String>,
        shard_type: impl Into<String>,
        metric: impl Into<String>,
        series: impl Into<String>,
    ) -> Result<Self> {
        let key = Self {
            app: app.into(),
            shard_type: shard_type.into(),
            metric: metric.into(),
            series: series.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks every field: non-empty, at most 256 bytes, no control characters.
    pub fn validate(&self) -> Result<()> {
        validate_field("app", &self.app)?;
        validate_field("shard_type", &self.shard_type)?;
        validate_field("metric", &self.metric)?;
        validate_field("series", &self.series)
    }

    /// The shard type of this series.
    pub fn shard_type(&self) -> ShardType {
        ShardType(self.shard_type.clone())
    }
}

/// Validates one key field; `field` names it in the error.
pub(crate) fn validate_field(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_FIELD_LEN {
        "it is longer than 256 bytes"
    } else if value.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKeyField {
        field,
        value: value.chars().take(64).collect(),
        reason,
    })
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.app, self.shard_type, self.metric, self.series
        )
    }
}

/// The name of a shard type, e.g. `api-cpu`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardType(String);

impl ShardType {
    /// Validates a shard type name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_field("shard_type", &name)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ShardType {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<ShardType> for String {
    fn from(s: ShardType) -> String {
        s.0
    }
}

impl fmt::Display for ShardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fields_are_validated() {
        assert!(SeriesKey::new("shop", "api-cpu", "cpu", "host-1").is_ok());
        let err = SeriesKey::new("", "api-cpu", "cpu", "h").unwrap_err();
        assert!(err.to_string().contains("app"), "{err}");
        assert!(SeriesKey::new("a", "b\n", "c", "d").is_err());
        assert!(SeriesKey::new("a", "b", "c", "x".repeat(300)).is_err());
        assert!(ShardType::new("").is_err());
    }

    #[test]
    fn display_joins_fields() {
        let k = SeriesKey::new("a", "b", "c", "d").unwrap();
        assert_eq!(k.to_string(), "a/b/c/d");
    }
}
