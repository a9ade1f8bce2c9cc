//! Limits on what an upload asks the server to keep and on the values of requests, over HTTP:
//! metadata size and depth (JSON and multipart, a form's default metadata included), item ids
//! that URLs would resolve as path segments, HNSW settings out of range, and multipart search
//! fields that a JSON body could not carry (`nan`, a repeated key).

use reqwest::blocking::multipart;
use serde_json::json;

use crate::server::{assert_error, TestServer};

fn texts(form: multipart::Form, n: usize) -> multipart::Form {
    (0..n).fold(form, |f, i| f.text("text", format!("text number {i}")))
}

#[test]
fn metadata_limits_hold_for_json_and_multipart_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let items = "/v1/collections/c/items";

    // The review's case: a 2 MB default metadata (a 1,000,000-element array) before 32 texts,
    // which each item would have copied. Refused as the default arrives.
    let array = format!("{{\"a\":[{}0]}}", "0,".repeat(999_999));
    let form = texts(multipart::Form::new().text("metadata", array), 32);
    assert_error(server.post_form(items, form), 413, "payload_too_large");

    // Defaults under the per-item limit, copied into enough items to pass the request's.
    let default = json!({"s": "x".repeat(40_000)}).to_string();
    let form = texts(
        multipart::Form::new().text("metadata", default.clone()),
        110,
    );
    let (s, v) = server.post_form(items, form);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per request"),
        "{v}"
    );
    // An item's own metadata over the per-item limit, in a form and in JSON.
    let big = json!({"s": "x".repeat(70_000)}).to_string();
    let form = texts(multipart::Form::new(), 1).text("metadata", big);
    let (s, v) = server.post_form(items, form);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("item 0: "),
        "{v}"
    );
    assert_error(
        server.post(
            items,
            &json!({"items": [{"text": "a", "metadata": {"s": "x".repeat(70_000)}}]}),
        ),
        413,
        "payload_too_large",
    );
    // Nested deeper than 32 levels.
    let deep = format!("{{\"d\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    let form = texts(multipart::Form::new().text("metadata", deep), 1);
    assert_error(server.post_form(items, form), 400, "invalid_metadata");
    let (s, v) = server.get("/v1/collections/c");
    assert_eq!((s, v["total"].as_u64()), (200, Some(0)), "{v}");

    // Within the limits the defaults still apply to every item.
    let form = texts(multipart::Form::new().text("metadata", default), 3);
    let (s, v) = server.post_form(items, form);
    assert_eq!(s, 200, "{v}");
    let (_, v) = server.get("/v1/collections/c");
    assert_eq!(v["total"], 3);
}

#[test]
fn ids_that_urls_would_resolve_and_ids_over_128_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let items = "/v1/collections/c/items";
    for id in [".".to_string(), "..".to_string(), "é".repeat(65)] {
        assert_error(
            server.post(items, &json!({"items": [{"id": id, "text": "a"}]})),
            400,
            "invalid_request",
        );
        let form = multipart::Form::new().text("text", "a").text("id", id);
        assert_error(server.post_form(items, form), 400, "invalid_request");
    }
    // 128 bytes of two-byte characters, and dots inside an id, are fine.
    let (s, v) = server.post(
        items,
        &json!({"items": [{"id": "é".repeat(64), "text": "a"}, {"id": "a.b..", "text": "b"}]}),
    );
    assert_eq!(s, 200, "{v}");
}

#[test]
fn hnsw_settings_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let big = 1u64 << 32;
    for hnsw in [
        json!({"m": big + 16}),
        json!({"ef_construction": big + 200}),
        json!({"ef_search": big + 64}),
    ] {
        assert_error(
            server.post(
                "/v1/collections",
                &json!({"name": "c", "model": "default", "hnsw": hnsw}),
            ),
            400,
            "invalid_request",
        );
    }
    let (s, v) = server.post(
        "/v1/collections",
        &json!({"name": "c", "model": "default", "hnsw": {"m": 8, "ef_construction": 4096}}),
    );
    assert_eq!((s, v["index"]["m"].as_u64()), (201, Some(8)), "{v}");
}

#[test]
fn multipart_search_refuses_what_json_search_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let (s, v) = server.post(
        "/v1/collections/c/items",
        &json!({"items": [{"text": "a dog"}, {"text": "a cat"}]}),
    );
    assert_eq!(s, 200, "{v}");
    let search = "/v1/collections/c/search";
    // JSON refuses a repeated key and has no NaN; 1e39 parses, as an infinite f32.
    assert_error(
        server.post_raw(search, "{\"query\":\"a dog\",\"k\":1,\"k\":2}"),
        400,
        "invalid_json",
    );
    assert_error(
        server.post_raw(search, "{\"query\":\"a dog\",\"min_score\":1e39}"),
        400,
        "invalid_request",
    );
    // A form refuses the same.
    let form = || multipart::Form::new().text("text", "a dog");
    for bad in ["nan", "NaN", "inf", "-inf"] {
        assert_error(
            server.post_form(search, form().text("min_score", bad)),
            400,
            "invalid_request",
        );
    }
    for field in ["k", "offset", "min_score", "exact", "ef_search", "modality"] {
        let value = match field {
            "exact" => "true",
            "modality" => "text",
            "min_score" => "0.1",
            _ => "1",
        };
        let (s, v) = server.post_form(search, form().text(field, value).text(field, value));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_multipart")),
            "{field}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate field"),
            "{v}"
        );
    }
    let form = form().text("filter", "{}").text("filter", "{}");
    assert_error(server.post_form(search, form), 400, "invalid_multipart");
    let (s, v) = server.post_form(
        search,
        multipart::Form::new()
            .text("text", "a dog")
            .text("k", "1")
            .text("min_score", "-1"),
    );
    assert_eq!(
        (s, v["hits"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
}
