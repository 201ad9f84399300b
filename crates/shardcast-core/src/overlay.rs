//! Configuration files laid over defaults.
//!
//! A configuration file names only what it changes. Its JSON (TOML is
//! converted to JSON first) is laid over the serialisation of the defaults
//! object by object, so that a field the file leaves out keeps its default
//! also inside nested tables — deserialising the file alone would take each
//! nested table's own `Default` instead — and the result is deserialised
//! again, so that the type's own checks (unknown fields, value types) apply.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Lays `patch` over `base`: objects are merged key by key, recursively;
/// anything else in `patch` replaces what `base` has.
pub fn overlay(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// `defaults` with `patch` laid over them (see [`overlay`]).
pub fn overlaid<T: Serialize + DeserializeOwned>(
    defaults: &T,
    patch: Value,
) -> serde_json::Result<T> {
    let mut merged = serde_json::to_value(defaults)?;
    overlay(&mut merged, patch);
    serde_json::from_value(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        a: u32,
        inner: Inner,
        list: Vec<u32>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        x: f64,
        y: String,
    }

    fn defaults() -> Outer {
        Outer {
            a: 1,
            inner: Inner {
                x: 0.5,
                y: "keep".into(),
            },
            list: vec![1, 2, 3],
        }
    }

    #[test]
    fn what_the_file_leaves_out_keeps_its_default_at_every_depth() {
        let got: Outer = overlaid(&defaults(), json!({"inner": {"x": 2.0}, "list": [9]})).unwrap();
        assert_eq!(
            got,
            Outer {
                a: 1,
                inner: Inner {
                    x: 2.0,
                    y: "keep".into()
                },
                list: vec![9],
            }
        );
        assert_eq!(overlaid(&defaults(), json!({})).unwrap(), defaults());
    }

    #[test]
    fn the_type_still_refuses_unknown_fields_and_wrong_types() {
        let e = overlaid(&defaults(), json!({"inner": {"z": 1}})).unwrap_err();
        assert!(e.to_string().contains("unknown field `z`"), "{e}");
        let e = overlaid(&defaults(), json!({"a": "many"})).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }
}
