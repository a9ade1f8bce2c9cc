//! Multipart forms on the upload routes, end to end through the real router and the bundled
//! default model: the form parser, field handling, content detection, every decoder and the
//! encoders. The input's first byte picks the route, the rest is the body (boundary `B`).
//! Any answer below 500 is fine; a 5xx (or a panic, which the server would turn into one)
//! fails the run.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use libfuzzer_sys::fuzz_target;
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
        let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default");
        settings.models = vec![ModelSpec::new("default", model_dir)];
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

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |input: &[u8]| {
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
);
