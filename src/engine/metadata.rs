//! Limits on items' JSON metadata: its serialised size per item and per upload, and its
//! nesting depth. Metadata is held in memory for search filters, so these bound what one
//! upload can make the server keep. The API layer calls the same checks while it reads a
//! multipart form, before default metadata is copied into each item; the engine checks every
//! upload again before anything is embedded or stored.

use std::io;

use serde_json::Value;

use super::{EngineError, Result};
use crate::config::MetadataSettings;

/// A writer that only counts, and fails once more than `cap` bytes were written, so a value
/// far over the limit is not serialised in full.
struct Counter {
    written: usize,
    cap: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.cap {
            return Err(io::Error::other("over the cap"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of `value` as compact JSON, or `None` when that is more than `cap`.
pub fn json_len_within(value: &Value, cap: usize) -> Option<usize> {
    let mut c = Counter { written: 0, cap };
    serde_json::to_writer(&mut c, value)
        .ok()
        .map(|()| c.written)
}

/// Nesting depth of arrays and objects (a scalar is 0, `{}` and `[]` are 1), without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// Checks one item's metadata (as it will be stored) against the per-item limits and returns
/// its size in bytes of compact JSON. `what` names it in messages (`metadata`, `default
/// metadata`).
pub fn check_item(value: &Value, limits: &MetadataSettings, what: &str) -> Result<usize> {
    let d = depth(value);
    if d > limits.max_depth {
        return Err(EngineError::invalid(
            "invalid_metadata",
            format!(
                "{what} nests arrays and objects {d} deep; at most {} levels are allowed",
                limits.max_depth
            ),
        ));
    }
    json_len_within(value, limits.max_item_bytes).ok_or_else(|| {
        EngineError::TooLarge(format!(
            "{what} is over the limit of {} bytes of JSON per item",
            limits.max_item_bytes
        ))
    })
}

/// The running total of an upload's metadata against the per-request limit.
#[derive(Debug)]
pub struct RequestBudget {
    limit: usize,
    used: usize,
}

impl RequestBudget {
    pub fn new(limits: &MetadataSettings) -> Self {
        RequestBudget {
            limit: limits.max_request_bytes,
            used: 0,
        }
    }

    /// Adds `bytes` of metadata; fails once the total is over the limit.
    pub fn charge(&mut self, bytes: usize) -> Result<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(EngineError::TooLarge(format!(
                "the metadata of this upload's items is over the limit of {} bytes of JSON per \
                 request (a multipart form's default metadata counts once for every item)",
                self.limit
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> MetadataSettings {
        MetadataSettings {
            max_item_bytes: 20,
            max_request_bytes: 30,
            max_depth: 3,
        }
    }

    #[test]
    fn sizes_and_depths() {
        assert_eq!(json_len_within(&json!({"a": 1}), 100), Some(7));
        assert_eq!(json_len_within(&json!({"a": 1}), 7), Some(7));
        assert_eq!(json_len_within(&json!({"a": 1}), 6), None);
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}], "c": 2})), 4);
    }

    #[test]
    fn limits_answer_413_or_400() {
        let l = limits();
        assert_eq!(
            check_item(&json!({"a": [[1]]}), &l, "metadata").unwrap(),
            11
        );
        let deep = check_item(&json!({"a": [[[1]]]}), &l, "metadata").unwrap_err();
        assert_eq!(deep.code(), "invalid_metadata");
        assert!(deep.to_string().contains("4 deep"), "{deep}");
        let big = check_item(&json!({"a": "x".repeat(20)}), &l, "metadata").unwrap_err();
        assert_eq!(big.code(), "payload_too_large");
        let mut budget = RequestBudget::new(&l);
        budget.charge(20).unwrap();
        budget.charge(10).unwrap();
        assert_eq!(budget.charge(1).unwrap_err().code(), "payload_too_large");
    }
}
