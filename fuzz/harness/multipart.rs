//! Multipart forms on the upload routes, end to end through the real router and the bundled
//! default model: the form parser, field handling, content detection, every decoder and the
//! encoders. The input's first byte picks the route, the rest is the body (boundary `B`).
//! Any answer below 500 is fine; a 5xx (or a panic, which the server would turn into one)
//! fails the run.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use omnibind::app::{router, AppState};
use omnibind::config::{Overrides, Settings};
use omnibind::embed::registry::{ModelSpec, Registry};
use omnibind::engine::Engine;
use tower::ServiceExt;

const ROUTES: [&str; 5] = [
    "/v1/collections/fz/items",
    "/v1/collections/fz/search",
    "/v1/embed",
    "/v1/classify",
    "/v1/collections/vec/items",
];

struct Server {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::load(
            None,
            &Overrides {
                data_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        settings.models = vec![ModelSpec::new("default", "builtin:default")];
        let registry = Registry::load(&settings.models).unwrap();
        let engine = Engine::open(&settings, registry).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = router(AppState::new(Arc::new(engine), settings));
        for body in [
            r#"{"name":"fz","model":"default"}"#,
            r#"{"name":"vec","model":"default"}"#,
        ] {
            let req = Request::post("/v1/collections")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let res = runtime.block_on(app.clone().oneshot(req)).unwrap();
            assert!(res.status().is_success(), "{}", res.status());
        }
        Server {
            _dir: dir,
            runtime,
            app,
        }
    })
}

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(input: &[u8]) {
    let Some((route, body)) = input.split_first() else {
        return;
    };
    let s = server();
    let req = Request::post(ROUTES[usize::from(*route) % ROUTES.len()])
        .header("content-type", "multipart/form-data; boundary=B")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let res = s.runtime.block_on(s.app.clone().oneshot(req)).unwrap();
    let status = res.status();
    let text = s.runtime.block_on(async {
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap_or_default()
    });
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(&text)
    );
}
