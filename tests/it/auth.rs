//! Access control over HTTP: API keys (admin and read-only) on a real server, the CLI clients and
//! the HTTP bench with a key, and CORS only for the configured origins.

use reqwest::blocking::RequestBuilder;
use serde_json::{json, Value};

use crate::server::{answer, TestServer};

const ADMIN: &str = "admin-key-for-tests-0001";
const READ: &str = "read-key-for-tests-0002";

/// `r` with `Authorization: Bearer <key>` when there is a key.
pub fn with_key(r: RequestBuilder, key: Option<&str>) -> RequestBuilder {
    match key {
        Some(k) => r.header("authorization", format!("Bearer {k}")),
        None => r,
    }
}

fn send(r: RequestBuilder, key: Option<&str>) -> (u16, Value) {
    answer(with_key(r, key).send().unwrap())
}

fn with_keys(dir: &std::path::Path) -> TestServer {
    TestServer::start_with(dir, |s| {
        s.auth.admin_key = Some(ADMIN.into());
        s.auth.read_key = Some(READ.into());
    })
}

#[test]
fn keys_guard_every_api_route_and_the_read_key_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_keys(dir.path());
    let get = |path: &str, key| send(server.http.get(server.url(path)), key);
    let post =
        |path: &str, body: &Value, key| send(server.http.post(server.url(path)).json(body), key);
    let delete = |path: &str, key| send(server.http.delete(server.url(path)), key);

    // Public: the demo page, health, readiness, the API description.
    for path in ["/", "/healthz", "/readyz", "/openapi.json"] {
        let r = server.http.get(server.url(path)).send().unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    // No key, a wrong key, another scheme: 401 with a challenge, on known and unknown routes.
    for path in [
        "/v1/collections",
        "/v1/models",
        "/metrics",
        "/v1/nothing-here",
    ] {
        let r = server.http.get(server.url(path)).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"omnibind\"");
        let (_, v) = answer(r);
        assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    }
    let (s, v) = get("/v1/collections", Some("not-the-key-0000000"));
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (401, Some("the API key is not valid"))
    );
    let r = server
        .http
        .get(server.url("/v1/collections"))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The admin key does everything.
    let (s, v) = post(
        "/v1/collections",
        &json!({"name": "c", "model": "default"}),
        Some(ADMIN),
    );
    assert_eq!(s, 201, "{v}");
    let items = json!({"items": [{"id": "a", "text": "a dog on a beach"}, {"id": "b", "text": "a red car"}]});
    let (s, v) = post("/v1/collections/c/items", &items, Some(ADMIN));
    assert_eq!(s, 200, "{v}");

    // The read key reads, searches, embeds; every write is 403 and changes nothing.
    assert_eq!(get("/v1/collections/c", Some(READ)).0, 200);
    assert_eq!(get("/v1/collections/c/items/a", Some(READ)).0, 200);
    let content = |key: Option<&str>| {
        let r = server
            .http
            .get(server.url("/v1/collections/c/items/a/content"));
        with_key(r, key).send().unwrap()
    };
    let r = content(Some(READ));
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "a dog on a beach");
    assert_eq!(content(None).status(), 401);
    let (s, v) = post(
        "/v1/collections/c/search",
        &json!({"query": {"text": "a dog"}, "k": 1}),
        Some(READ),
    );
    assert_eq!((s, v["hits"][0]["id"].as_str()), (200, Some("a")), "{v}");
    assert_eq!(
        post(
            "/v1/embed",
            &json!({"model": "default", "text": "x"}),
            Some(READ)
        )
        .0,
        200
    );
    for (s, v) in [
        post(
            "/v1/collections",
            &json!({"name": "d", "model": "default"}),
            Some(READ),
        ),
        post(
            "/v1/collections/c/items",
            &json!({"items": [{"text": "x"}]}),
            Some(READ),
        ),
        delete("/v1/collections/c/items/a", Some(READ)),
        delete("/v1/collections/c", Some(READ)),
    ] {
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{v}"
        );
    }
    let (_, info) = get("/v1/collections/c", Some(ADMIN));
    assert_eq!(info["total"], 2, "{info}");
    assert_eq!(get("/v1/collections/d", Some(ADMIN)).0, 404);

    assert_eq!(delete("/v1/collections/c/items/a", Some(ADMIN)).0, 204);
    assert_eq!(delete("/v1/collections/c", Some(ADMIN)).0, 204);
}

#[test]
fn the_cli_clients_send_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_keys(dir.path());
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("note.txt"), "a dog on a beach").unwrap();
    let ingest = |key: Option<&str>| {
        omnibind::cli::ingest(omnibind::cli::IngestArgs {
            collection: "k".into(),
            model: None,
            batch: 4,
            server: format!("http://{}", server.addr),
            api_key: key.map(str::to_string),
            paths: vec![files.path().to_path_buf()],
        })
    };
    let e = ingest(None).unwrap_err();
    assert!(e.to_string().contains("401"), "{e:#}");
    let e = ingest(Some(READ)).unwrap_err();
    assert!(e.to_string().contains("403"), "{e:#}");
    assert_eq!(ingest(Some(ADMIN)).unwrap().created, 1);
    let search = |key: Option<&str>| {
        omnibind::cli::search(omnibind::cli::SearchArgs {
            collection: "k".into(),
            text: Some("a dog".into()),
            file: None,
            k: 1,
            filter: None,
            server: format!("http://{}", server.addr),
            api_key: key.map(str::to_string),
        })
    };
    assert!(search(None).is_err());
    search(Some(READ)).unwrap();
}

#[test]
fn cors_answers_only_the_configured_origins() {
    let preflight = |server: &TestServer, origin: &str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/v1/collections"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .unwrap()
    };
    let get_from = |server: &TestServer, origin: &str| {
        server
            .http
            .get(server.url("/v1/collections"))
            .header("origin", origin)
            .send()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        s.auth.admin_key = Some(ADMIN.into());
        s.server.cors_origins = vec!["https://app.example".into()];
    });
    let r = preflight(&server, "https://app.example");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = preflight(&server, "https://evil.example");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A refused key still carries the CORS header, so the page can read the 401.
    let r = get_from(&server, "https://app.example");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    drop(server);

    // The default: no CORS at all.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let r = preflight(&server, "https://app.example");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = get_from(&server, "https://app.example");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn the_http_bench_sends_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_keys(dir.path());
    let args = |key: Option<&str>| omnibind::bench::HttpBenchArgs {
        server: format!("http://{}", server.addr),
        model: "default".into(),
        items: 40,
        queries: 5,
        batch: 4,
        upload_batches: 1,
        seed: 1,
        connections: 3,
        load_seconds: 1,
        api_key: key.map(str::to_string),
    };
    let e = omnibind::bench::http(args(None)).unwrap_err();
    assert!(e.to_string().contains("401"), "{e:#}");
    omnibind::bench::http(args(Some(ADMIN))).unwrap();
    // The bench removed its collections.
    let (s, v) = send(server.http.get(server.url("/v1/collections")), Some(READ));
    assert_eq!(
        (s, v["collections"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
}
