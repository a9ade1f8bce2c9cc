//! The HTTP API: one file per resource, each a set of axum handlers over the engine.
//!
//! Owns: request and response shapes (the DTOs here derive `ToSchema`, so `/openapi.json` is
//! generated from the code), parsing of JSON and multipart bodies, and the one mapping of
//! errors to statuses (`error.rs`). Must not own: anything the engine decides (validation of
//! vectors, detection of media, search semantics); handlers translate, then call the engine.

pub mod auth;
pub mod collections;
pub mod embed;
pub mod error;
pub mod extract;
pub mod health;
pub mod items;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod ratelimit;
pub mod search;
pub mod web;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use error::{ApiError, ApiResult, ErrorBody};
pub use extract::Json;

/// Everything but RFC 3986's unreserved characters is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Where an item's original content is served.
pub fn content_url(collection: &str, id: &str) -> String {
    format!(
        "/v1/collections/{}/items/{}/content",
        encode_segment(collection),
        encode_segment(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_urls_escape_ids() {
        assert_eq!(
            content_url("c", "a b?#%é"),
            "/v1/collections/c/items/a%20b%3F%23%25%C3%A9/content"
        );
        assert_eq!(
            content_url("c", "x-1_2.~"),
            "/v1/collections/c/items/x-1_2.~/content"
        );
    }
}
