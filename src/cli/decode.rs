//! Generic msgpack → JSON decoding, so that `inspect` and `diff` work without the application's
//! types.
//!
//! The mapping is total and deterministic:
//!
//! | msgpack | JSON |
//! |---|---|
//! | nil, bool, int, string | the same |
//! | float | a number; NaN and ±infinity, which JSON lacks, as the strings `"NaN"`, `"inf"`, `"-inf"` |
//! | binary (and a string that is not UTF-8) | base64 text, or an array of byte values (`--binary array`) |
//! | array | array |
//! | map whose keys are all strings or integers, each distinct as text | object (integer keys as decimal text) |
//! | any other map | array of `[key, value]` pairs, sorted by the JSON text of the key |
//! | extension | `{"$ext": type, "data": <binary as above>}` |

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

/// How binary data is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BinaryAs {
    /// Standard base64 text with padding.
    #[default]
    Base64,
    /// An array of byte values, 0-255.
    Array,
}

/// Nesting deeper than this is refused rather than risking the stack; real states are far
/// shallower.
const MAX_DEPTH: usize = 512;

/// Decodes one msgpack value that must fill `payload` exactly.
pub(crate) fn msgpack_to_json(payload: &[u8], binary: BinaryAs) -> anyhow::Result<Json> {
    let mut rest = payload;
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_DEPTH)
        .context("the payload is not valid msgpack")?;
    if !rest.is_empty() {
        bail!(
            "the payload has {} trailing bytes after its msgpack value",
            rest.len()
        );
    }
    Ok(to_json(&value, binary))
}

/// Converts a decoded msgpack value. Recursion is bounded by the decoder's depth limit.
pub(crate) fn to_json(value: &rmpv::Value, binary: BinaryAs) -> Json {
    use rmpv::Value as V;
    match value {
        V::Nil => Json::Null,
        V::Boolean(b) => Json::Bool(*b),
        V::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::Number(u.into()),
            (None, Some(s)) => Json::Number(s.into()),
            // rmpv integers are always u64 or i64; keep a lossless fallback regardless.
            (None, None) => Json::String(i.to_string()),
        },
        V::F32(f) => float(f64::from(*f)),
        V::F64(f) => float(*f),
        V::String(s) => match s.as_str() {
            Some(text) => Json::String(text.to_owned()),
            None => bytes(s.as_bytes(), binary),
        },
        V::Binary(b) => bytes(b, binary),
        V::Array(items) => Json::Array(items.iter().map(|v| to_json(v, binary)).collect()),
        V::Map(pairs) => map(pairs, binary),
        V::Ext(kind, data) => {
            let mut obj = Map::new();
            obj.insert("$ext".into(), Json::Number((*kind).into()));
            obj.insert("data".into(), bytes(data, binary));
            Json::Object(obj)
        }
    }
}

fn float(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("inf".into()),
        None => Json::String("-inf".into()),
    }
}

fn bytes(data: &[u8], binary: BinaryAs) -> Json {
    match binary {
        BinaryAs::Base64 => Json::String(base64::engine::general_purpose::STANDARD.encode(data)),
        BinaryAs::Array => Json::Array(data.iter().map(|b| Json::Number((*b).into())).collect()),
    }
}

fn map(pairs: &[(rmpv::Value, rmpv::Value)], binary: BinaryAs) -> Json {
    let keys: Option<Vec<String>> = pairs
        .iter()
        .map(|(k, _)| match k {
            rmpv::Value::String(s) => s.as_str().map(str::to_owned),
            rmpv::Value::Integer(i) => Some(i.to_string()),
            _ => None,
        })
        .collect();
    if let Some(keys) = keys {
        let mut obj = Map::new();
        let mut distinct = true;
        for (key, (_, v)) in keys.into_iter().zip(pairs) {
            if obj.insert(key, to_json(v, binary)).is_some() {
                distinct = false;
                break;
            }
        }
        if distinct {
            return Json::Object(obj);
        }
    }
    // Keys that JSON cannot hold, or that collide as text: ordered pairs, sorted so that the
    // output does not depend on the writer's (often hash) iteration order.
    let mut entries: Vec<(String, Json, Json)> = pairs
        .iter()
        .map(|(k, v)| {
            let key = to_json(k, binary);
            (key.to_string(), key, to_json(v, binary))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Json::Array(
        entries
            .into_iter()
            .map(|(_, k, v)| Json::Array(vec![k, v]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::json;

    use super::*;

    fn named<T: Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[derive(Serialize)]
    struct Account {
        balance: i64,
        history: Vec<i64>,
        owner: Option<String>,
        ratio: f64,
    }

    #[test]
    fn structs_become_objects_with_named_fields() {
        let bytes = named(&Account {
            balance: -5,
            history: vec![1, 2, 3],
            owner: None,
            ratio: 0.5,
        });
        assert_eq!(
            msgpack_to_json(&bytes, BinaryAs::Base64).unwrap(),
            json!({"balance": -5, "history": [1, 2, 3], "owner": null, "ratio": 0.5})
        );
    }

    #[test]
    fn binary_as_base64_or_array() {
        let bytes = named(&rmpv::Value::Binary(vec![0, 1, 255]));
        assert_eq!(
            msgpack_to_json(&bytes, BinaryAs::Base64).unwrap(),
            json!("AAH/")
        );
        assert_eq!(
            msgpack_to_json(&bytes, BinaryAs::Array).unwrap(),
            json!([0, 1, 255])
        );
    }

    #[test]
    fn integer_keys_become_text_keys() {
        let m: BTreeMap<u64, &str> = [(2, "b"), (10, "a")].into();
        assert_eq!(
            msgpack_to_json(&named(&m), BinaryAs::Base64).unwrap(),
            json!({"2": "b", "10": "a"})
        );
    }

    #[test]
    fn other_keys_become_sorted_pairs_whatever_the_insertion_order() {
        // Each HashMap has its own random hasher, so their iteration orders differ; the output
        // must not.
        let outputs: Vec<Json> = (0..8)
            .map(|_| {
                let m: HashMap<(u8, u8), u8> = (0..16u8).map(|i| ((i, 15 - i), i)).collect();
                msgpack_to_json(&named(&m), BinaryAs::Base64).unwrap()
            })
            .collect();
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        let pairs = outputs[0].as_array().unwrap();
        assert_eq!(pairs.len(), 16);
        assert_eq!(pairs[0], json!([[0, 15], 0]));
    }

    #[test]
    fn colliding_keys_fall_back_to_pairs() {
        let v = rmpv::Value::Map(vec![
            (rmpv::Value::from(1), rmpv::Value::from("int")),
            (rmpv::Value::from("1"), rmpv::Value::from("text")),
        ]);
        assert_eq!(
            to_json(&v, BinaryAs::Base64),
            json!([["1", "text"], [1, "int"]])
        );
    }

    #[test]
    fn non_finite_floats_and_ext() {
        let v = rmpv::Value::Array(vec![
            rmpv::Value::F64(f64::NAN),
            rmpv::Value::F32(f32::INFINITY),
            rmpv::Value::F64(f64::NEG_INFINITY),
            rmpv::Value::Ext(-3, vec![9]),
            rmpv::Value::from(u64::MAX),
            rmpv::Value::from(i64::MIN),
        ]);
        assert_eq!(
            to_json(&v, BinaryAs::Base64),
            json!(["NaN", "inf", "-inf", {"$ext": -3, "data": "CQ=="}, u64::MAX, i64::MIN])
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        // Truncated array, trailing bytes, absurd length prefix, deep nesting.
        assert!(msgpack_to_json(&[0x93, 0x01], BinaryAs::Base64).is_err());
        assert!(msgpack_to_json(&[0x01, 0x02], BinaryAs::Base64).is_err());
        assert!(msgpack_to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff], BinaryAs::Base64).is_err());
        assert!(msgpack_to_json(&vec![0x91; 100_000], BinaryAs::Base64).is_err());
        assert!(msgpack_to_json(&[], BinaryAs::Base64).is_err());
    }
}
