//! Search filters: result modalities and conditions on metadata, compiled once per query and
//! evaluated for each candidate inside the index's graph walk.

use serde_json::Value;

use super::types::Filter;

/// A compiled [`Filter`].
#[derive(Debug, Clone)]
pub struct Matcher {
    modalities: Option<Vec<String>>,
    conditions: Vec<(String, Condition)>,
}

#[derive(Debug, Clone)]
enum Condition {
    Eq(Value),
    In(Vec<Value>),
    Range {
        gt: Option<f64>,
        gte: Option<f64>,
        lt: Option<f64>,
        lte: Option<f64>,
    },
}

/// Checks a filter and returns a readable reason when it is malformed.
pub fn validate_filter(f: &Filter) -> Result<(), String> {
    Matcher::new(f).map(|_| ())
}

impl Matcher {
    pub fn new(f: &Filter) -> Result<Self, String> {
        let mut conditions = Vec::new();
        for (key, v) in &f.metadata {
            if key.is_empty() {
                return Err("metadata filter keys must not be empty".into());
            }
            let cond = match v {
                Value::Object(ops) if ops.keys().all(|k| ["in", "gt", "gte", "lt", "lte"].contains(&k.as_str())) && !ops.is_empty() => {
                    if let Some(list) = ops.get("in") {
                        if ops.len() > 1 {
                            return Err(format!("`{key}`: `in` cannot be combined with range operators"));
                        }
                        match list {
                            Value::Array(a) => Condition::In(a.clone()),
                            _ => return Err(format!("`{key}`: `in` takes an array")),
                        }
                    } else {
                        let num = |op: &str| -> Result<Option<f64>, String> {
                            match ops.get(op) {
                                None => Ok(None),
                                Some(n) => n
                                    .as_f64()
                                    .filter(|x| x.is_finite())
                                    .map(Some)
                                    .ok_or_else(|| format!("`{key}`: `{op}` takes a number")),
                            }
                        };
                        Condition::Range {
                            gt: num("gt")?,
                            gte: num("gte")?,
                            lt: num("lt")?,
                            lte: num("lte")?,
                        }
                    }
                }
                Value::Object(_) => {
                    return Err(format!(
                        "`{key}`: operators are `in`, `gt`, `gte`, `lt`, `lte` (a plain value means equality)"
                    ))
                }
                other => Condition::Eq(other.clone()),
            };
            conditions.push((key.clone(), cond));
        }
        Ok(Self {
            modalities: f
                .modality
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.as_str().to_string()).collect()),
            conditions,
        })
    }

    /// Whether an item with this modality and metadata passes.
    pub fn matches(&self, modality: &str, metadata: &Value) -> bool {
        if let Some(ms) = &self.modalities {
            if !ms.iter().any(|m| m == modality) {
                return false;
            }
        }
        self.conditions.iter().all(|(key, cond)| {
            let Some(v) = metadata.get(key) else {
                return false;
            };
            match cond {
                Condition::Eq(want) => {
                    value_eq(v, want)
                        || v.as_array()
                            .is_some_and(|a| a.iter().any(|x| value_eq(x, want)))
                }
                Condition::In(list) => list.iter().any(|w| value_eq(v, w)),
                Condition::Range { gt, gte, lt, lte } => match v.as_f64() {
                    Some(x) => {
                        gt.is_none_or(|b| x > b)
                            && gte.is_none_or(|b| x >= b)
                            && lt.is_none_or(|b| x < b)
                            && lte.is_none_or(|b| x <= b)
                    }
                    None => false,
                },
            }
        })
    }
}

/// JSON equality where numbers compare by value (1 == 1.0).
fn value_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Modality;
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn equality_in_and_ranges() {
        let m = Matcher::new(&filter(json!({"metadata": {"color": "red", "year": {"gte": 2000, "lt": 2010}, "kind": {"in": ["a", "b"]}}}))).unwrap();
        assert!(m.matches("image", &json!({"color": "red", "year": 2005, "kind": "b"})));
        assert!(!m.matches("image", &json!({"color": "red", "year": 2010, "kind": "b"})));
        assert!(!m.matches(
            "image",
            &json!({"color": "blue", "year": 2005, "kind": "b"})
        ));
        assert!(!m.matches("image", &json!({"color": "red", "year": 2005})));
        // Equality also matches a member of an array (tags).
        let t = Matcher::new(&filter(json!({"metadata": {"tags": "dog"}}))).unwrap();
        assert!(t.matches("text", &json!({"tags": ["cat", "dog"]})));
        assert!(Matcher::new(&filter(json!({"metadata": {"n": 1}})))
            .unwrap()
            .matches("text", &json!({"n": 1.0})));
    }

    #[test]
    fn modality_restriction() {
        let f = Filter {
            modality: Some(vec![Modality::Image]),
            ..Default::default()
        };
        let m = Matcher::new(&f).unwrap();
        assert!(m.matches("image", &json!({})));
        assert!(!m.matches("text", &json!({})));
    }

    #[test]
    fn malformed_filters_are_explained() {
        for bad in [
            json!({"metadata": {"x": {"between": [1, 2]}}}),
            json!({"metadata": {"x": {"in": 3}}}),
            json!({"metadata": {"x": {"gt": "a"}}}),
            json!({"metadata": {"x": {"in": [1], "gt": 0}}}),
        ] {
            assert!(Matcher::new(&filter(bad)).is_err());
        }
        assert!(serde_json::from_value::<Filter>(json!({"colour": 1})).is_err());
    }
}
