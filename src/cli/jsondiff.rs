//! A field-level diff of two decoded states.
//!
//! Paths read like jq's: `.balance`, `.history[3]`, `.owners["first name"]`, and `.` for the
//! whole value. Arrays are compared index by index, which reads naturally for the append-mostly
//! histories that checkpointed objects usually keep.

use serde::Serialize;
use serde_json::Value as Json;

/// One difference between two values.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Change {
    /// The path exists only in the newer value.
    Added {
        /// Where.
        path: String,
        /// The new value.
        value: Json,
    },
    /// The path exists only in the older value.
    Removed {
        /// Where.
        path: String,
        /// The old value.
        value: Json,
    },
    /// The path holds another value.
    Changed {
        /// Where.
        path: String,
        /// The old value.
        from: Json,
        /// The new value.
        to: Json,
    },
}

#[cfg(test)]
impl Change {
    /// The path the change is at.
    pub(crate) fn path(&self) -> &str {
        match self {
            Change::Added { path, .. }
            | Change::Removed { path, .. }
            | Change::Changed { path, .. } => path,
        }
    }
}

/// The changes that turn `old` into `new`, in path order; empty when they are equal.
pub(crate) fn diff(old: &Json, new: &Json) -> Vec<Change> {
    let mut out = Vec::new();
    walk(&mut String::new(), old, new, &mut out);
    out
}

/// Recursion is bounded by the decoder's depth limit on both inputs.
fn walk(path: &mut String, old: &Json, new: &Json, out: &mut Vec<Change>) {
    match (old, new) {
        (Json::Object(a), Json::Object(b)) => {
            // serde_json's map is sorted, so a merge walk yields sorted paths.
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                push_key(path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(path, x, y, out),
                    (Some(x), None) => out.push(Change::Removed {
                        path: shown(path),
                        value: x.clone(),
                    }),
                    (None, Some(y)) => out.push(Change::Added {
                        path: shown(path),
                        value: y.clone(),
                    }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(path, x, y, out),
                    (Some(x), None) => out.push(Change::Removed {
                        path: shown(path),
                        value: x.clone(),
                    }),
                    (None, Some(y)) => out.push(Change::Added {
                        path: shown(path),
                        value: y.clone(),
                    }),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change::Changed {
            path: shown(path),
            from: a.clone(),
            to: b.clone(),
        }),
    }
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        path.to_owned()
    }
}

fn push_key(path: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        // A JSON string literal is unambiguous, whatever the key holds.
        path.push('[');
        path.push_str(&Json::String(key.to_owned()).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(Change::path).collect()
    }

    #[test]
    fn equal_values_have_no_changes() {
        let v = json!({"a": [1, {"b": null}], "c": "x"});
        assert!(diff(&v, &v).is_empty());
    }

    #[test]
    fn field_and_index_paths() {
        let old = json!({"balance": 10, "history": [1, 2, 3], "gone": true});
        let new = json!({"balance": 20, "history": [1, 2, 3, 4], "fresh": {"x": 1}});
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                Change::Changed {
                    path: ".balance".into(),
                    from: json!(10),
                    to: json!(20)
                },
                Change::Added {
                    path: ".fresh".into(),
                    value: json!({"x": 1})
                },
                Change::Removed {
                    path: ".gone".into(),
                    value: json!(true)
                },
                Change::Added {
                    path: ".history[3]".into(),
                    value: json!(4)
                },
            ]
        );
    }

    #[test]
    fn nested_and_odd_keys() {
        let old = json!({"owners": {"first name": "a", "17": [0, {"k": 1}]}});
        let new = json!({"owners": {"first name": "b", "17": [0, {"k": 2}]}});
        assert_eq!(
            paths(&diff(&old, &new)),
            vec![r#".owners["17"][1].k"#, r#".owners["first name"]"#]
        );
    }

    #[test]
    fn shrinking_arrays_and_type_changes() {
        assert_eq!(
            diff(&json!([1, 2, 3]), &json!([1])),
            vec![
                Change::Removed {
                    path: "[1]".into(),
                    value: json!(2)
                },
                Change::Removed {
                    path: "[2]".into(),
                    value: json!(3)
                },
            ]
        );
        assert_eq!(
            diff(&json!({"a": 1}), &json!([1])),
            vec![Change::Changed {
                path: ".".into(),
                from: json!({"a": 1}),
                to: json!([1])
            }]
        );
    }

    #[test]
    fn json_form_is_tagged_by_op() {
        let changes = diff(&json!({"a": 1}), &json!({"a": 2}));
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!([{"op": "changed", "path": ".a", "from": 1, "to": 2}])
        );
    }
}
