//! The browser demo as the server serves it: the page at `/`, its assets below `/assets/`
//! with their media types, revalidation by `ETag`, and API error bodies for unknown assets.

use crate::server::TestServer;

#[test]
fn web_demo_page_and_assets_are_served_with_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let get = |path: &str| server.http.get(server.url(path)).send().unwrap();

    let page = get("/");
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let html = page.text().unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(r#"src="/assets/app.js""#));
    assert!(html.contains(r#"href="/assets/style.css""#));

    for (path, want) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/api.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
        ("/assets/index.html", "text/html; charset=utf-8"),
    ] {
        let r = get(path);
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], want, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(!r.bytes().unwrap().is_empty(), "{path}");
    }

    // An unchanged asset is revalidated without its body.
    let etag = get("/assets/app.js").headers()["etag"].clone();
    let again = server
        .http
        .get(server.url("/assets/app.js"))
        .header("if-none-match", etag.clone())
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.bytes().unwrap().is_empty());

    // Unknown assets and paths answer with the API's error body.
    for path in ["/assets/nope.js", "/assets/..%2FCargo.toml", "/web/app.js"] {
        let (s, v) = server.get(path);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    // The API is untouched by the page's routes.
    let (s, v) = server.get("/v1/models");
    assert_eq!(s, 200);
    assert_eq!(v["models"][0]["name"], "default");
}
