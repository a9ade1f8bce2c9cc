//! The server: shared state, the router with its middleware, and `run`, which serves until a
//! shutdown signal, then persists the indexes.
//!
//! Index dumps are a cache (the store is the truth): they are written every
//! [`PERSIST_INTERVAL`] and at shutdown so that the next start loads instead of rebuilding.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::api::auth::Keys;
use crate::api::metrics::Metrics;
use crate::api::ratelimit::Limiter;
use crate::api::{self, ApiError};
use crate::config::Settings;
use crate::engine::Engine;

/// How often index dumps are written while serving.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(30);
/// How often the rate limiter forgets idle clients.
const LIMITER_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// What every handler shares; cloning copies a few `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// The API keys (digests), from `settings.auth`.
    pub keys: Arc<Keys>,
    /// The rate limiter of the API routes, when `server.rate_limit_per_s` is set.
    pub limiter: Option<Arc<Limiter>>,
    ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, settings: Settings) -> Self {
        let keys = Arc::new(Keys::new(&settings.auth));
        let server = &settings.server;
        let limiter = Limiter::new(
            server.rate_limit_per_s,
            server.rate_limit_burst,
            keys.clone(),
        )
        .map(Arc::new);
        AppState {
            engine,
            keys,
            limiter,
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// False once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The API's routes with all middleware.
pub fn router(state: AppState) -> Router {
    let server = &state.settings.server;
    // Upload routes take multipart bodies up to `upload_limit`; their JSON form is still held
    // to `body_limit` by the extractor.
    let upload = DefaultBodyLimit::max(server.upload_limit);
    let routes = Router::new()
        .route("/v1/models", get(api::models::list))
        .route(
            "/v1/collections",
            get(api::collections::list).post(api::collections::create),
        )
        .route(
            "/v1/collections/{name}",
            get(api::collections::get).delete(api::collections::delete),
        )
        .route(
            "/v1/collections/{name}/items",
            get(api::items::list).post(api::items::add.layer(upload)),
        )
        .route(
            "/v1/collections/{name}/items/{id}",
            get(api::items::get).delete(api::items::delete),
        )
        .route(
            "/v1/collections/{name}/items/{id}/content",
            get(api::items::content),
        )
        .route(
            "/v1/collections/{name}/search",
            post(api::search::search.layer(upload)),
        )
        .route("/v1/embed", post(api::embed::embed.layer(upload)))
        .route("/v1/classify", post(api::embed::classify.layer(upload)))
        .route("/metrics", get(api::health::metrics))
        .route("/healthz", get(api::health::healthz))
        .route("/readyz", get(api::health::readyz))
        .route("/openapi.json", get(api::openapi::spec))
        .route("/", get(api::web::index))
        .route("/assets/{file}", get(api::web::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    with_middleware(routes, &state).with_state(state)
}

/// CORS for the configured origins only (`server.cors_origins`); none: no CORS layer at all
/// (no `Access-Control-*` headers, preflights answered like any other request), so browsers
/// keep other sites out.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    Some(layer)
}

/// The middleware every route gets, outermost first: `X-Content-Type-Options: nosniff` on
/// every answer; CORS for the configured origins; metrics by route template; panics become
/// `500 internal_error`; `Authorization` is hidden from logs; tracing; the rate limit
/// ([`api::ratelimit::limit`]); API keys ([`api::auth::require`]); any error answer produced
/// without the API's body (timeouts, limits) gets it; `408` after `server.request_timeout_s`;
/// bodies up to `server.body_limit` (upload routes raise it).
pub fn with_middleware(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    let server = &state.settings.server;
    let timeout = Duration::from_secs(server.request_timeout_s.max(1));
    routes.layer(
        ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .option_layer(cors(&server.cors_origins))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                api::metrics::track,
            ))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]))
            .layer(TraceLayer::new_for_http())
            .layer(middleware::from_fn_with_state(
                state.clone(),
                api::ratelimit::limit,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                api::auth::require,
            ))
            .layer(middleware::from_fn(error_bodies))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            ))
            .layer(DefaultBodyLimit::max(server.body_limit)),
    )
}

async fn not_found() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed() -> ApiError {
    ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal().into_response()
}

/// Gives error answers that were made below the handlers (by tower layers or axum's own
/// rejections) the API's JSON error body.
async fn error_bodies(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut fixed = ApiError::from_status(status).into_response();
    if let Some(v) = retry_after {
        fixed.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(v) = allow {
        fixed.headers_mut().insert(header::ALLOW, v);
    }
    fixed
}

/// Persists the indexes on a blocking thread (dumps can be large).
async fn persist(engine: &Arc<Engine>) {
    let engine = engine.clone();
    let handle = tokio::runtime::Handle::current();
    let result =
        tokio::task::spawn_blocking(move || handle.block_on(engine.persist_indexes())).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not persist the indexes"),
        Err(e) => tracing::error!(error = %e, "index persistence task failed"),
    }
}

/// What one connection may hold and for how long (`server.header_timeout_s`,
/// `server.max_header_bytes`, `server.max_connections`).
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    max_header_bytes: usize,
    max_connections: usize,
}

impl From<&crate::config::ServerSettings> for ConnLimits {
    fn from(s: &crate::config::ServerSettings) -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(s.header_timeout_s.max(1)),
            max_header_bytes: s.max_header_bytes.max(crate::config::MIN_HEADER_BYTES),
            max_connections: s.max_connections.max(1),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and waits
/// for in-flight requests (idle connections are closed at once).
///
/// Each connection must send a request's line and headers within `header_timeout` of opening
/// or of its previous answer (so an idle keep-alive connection is closed after it too), in at
/// most `max_header_bytes` (beyond: `431`, and the connection is closed). At most
/// `max_connections` are served at once; more wait in the listen backlog. Peer addresses reach
/// the handlers as [`ConnectInfo`] (the rate limiter and the spool quotas key callers without
/// an API key by them).
async fn serve<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of `accept`: one connection's failure is skipped; anything else (such as running
/// out of file descriptors) is logged and waited out for a second rather than retried in a
/// busy loop.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "could not accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves `state` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish and writes the index dumps.
pub async fn run<F>(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(tokio::sync::Notify::new());
    let persister = {
        let engine = state.engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + PERSIST_INTERVAL,
                PERSIST_INTERVAL,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => persist(&engine).await,
                    _ = stop.notified() => break,
                }
            }
        })
    };
    let forgetter = state.limiter.clone().map(|limiter| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIMITER_CLEANUP_INTERVAL);
            loop {
                tick.tick().await;
                limiter.forget_idle();
            }
        })
    });
    let ready = state.ready.clone();
    let limits = ConnLimits::from(&state.settings.server);
    let served = serve(listener, router(state.clone()), limits, async move {
        shutdown.await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await;
    stop.notify_one();
    if let Some(f) = forgetter {
        f.abort();
    }
    let _ = persister.await;
    persist(&state.engine).await;
    tracing::info!("index dumps written");
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::embed::registry::Registry;
    use axum::body::Body;
    use std::net::SocketAddr;

    /// A server state without models (none are needed to test the middleware).
    fn state(dir: &std::path::Path) -> AppState {
        state_with(dir, |_| {})
    }

    fn state_with(dir: &std::path::Path, edit: impl FnOnce(&mut Settings)) -> AppState {
        let mut settings = Settings::load(
            None,
            &Overrides {
                data_dir: Some(dir.to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        settings.models.clear();
        settings.server.request_timeout_s = 1;
        edit(&mut settings);
        let engine = Engine::open(&settings, Registry::load(&[]).unwrap()).unwrap();
        AppState::new(Arc::new(engine), settings)
    }

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn timeouts_and_panics_answer_with_the_error_body() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let routes = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("a bug");
                    }
                    "unreachable"
                }),
            );
        let app = with_middleware(routes, &state).with_state(state.clone());
        let t = std::time::Instant::now();
        let (s, v) = call(&app, "GET", "/slow").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::REQUEST_TIMEOUT, Some("request_timeout"))
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        let (s, v) = call(&app, "GET", "/panic").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("internal_error"))
        );
        assert!(!v.to_string().contains("a bug"));
    }

    #[tokio::test]
    async fn readiness_needs_models_and_ends_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let app = router(state.clone());
        let (s, v) = call(&app, "GET", "/readyz").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
        );
        let (s, v) = call(&app, "GET", "/healthz").await;
        assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
        let (s, v) = call(&app, "GET", "/v1/models").await;
        assert_eq!((s, v), (StatusCode::OK, serde_json::json!({"models": []})));
        let (s, v) = call(&app, "POST", "/v1/models").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        state.ready.store(false, Ordering::Relaxed);
        let (s, v) = call(&app, "GET", "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"));
    }

    #[tokio::test]
    async fn metrics_labels_come_from_a_fixed_set() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        for i in 0..20 {
            let method = format!("M{i}{}", "Q".repeat(1000));
            let (s, _) = call(&app, &method, "/v1/models").await;
            assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
            let (s, _) = call(&app, &method, &format!("/no/route/p{i}")).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
            let (s, _) = call(&app, "GET", &format!("/v1/collections/raw{i}/items/x")).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
        }
        let req = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("QQQ") && !text.contains("raw1") && !text.contains("/p1"));
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("omnibind_http_requests_total{"))
            .collect();
        assert_eq!(series.len(), 3, "{series:#?}");
        for want in [
            r#"{method="other",route="/v1/models",status="405"} 20"#,
            r#"{method="other",route="unmatched",status="404"} 20"#,
            r#"{method="GET",route="/v1/collections/{name}/items/{id}",status="404"} 20"#,
        ] {
            assert!(
                series.iter().any(|l| l.ends_with(want)),
                "{want}: {series:#?}"
            );
        }
    }

    /// A server on a free port with `edit` applied to its settings; it stops when the sender
    /// is used or dropped.
    async fn serving(
        dir: &std::path::Path,
        edit: impl FnOnce(&mut Settings),
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let state = state_with(dir, edit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, state, async {
            let _ = rx.await;
        }));
        (addr, tx, server)
    }

    /// Reads until the peer closes the connection (or resets it); the bytes read, or `None`
    /// when it is still open after `wait`.
    async fn read_until_closed(c: &mut tokio::net::TcpStream, wait: Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads the answer of a connection the server closes after it (within 10 s) and checks
    /// that it starts with `HTTP/1.1 {status}` (a prefix such as `4` matches any 4xx).
    async fn assert_answer_then_closed(c: &mut tokio::net::TcpStream, status: &str) {
        let got = read_until_closed(c, Duration::from_secs(10))
            .await
            .expect("the server closes the connection after its answer");
        assert!(
            got.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (addr, _stop, _server) = serving(dir.path(), |s| s.server.header_timeout_s = 1).await;
        let wait = Duration::from_secs(6);
        // A partial request line, and complete request line with partial headers.
        for partial in ["GET /heal", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "] {
            let t = std::time::Instant::now();
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(partial.as_bytes()).await.unwrap();
            assert!(
                read_until_closed(&mut c, wait).await.is_some(),
                "{partial:?} still open after {wait:?}"
            );
            assert!(t.elapsed() >= Duration::from_millis(900), "{partial:?}");
        }
        // Headers trickling in a byte at a time do not restart the clock.
        let t = std::time::Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if c.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
        }
        closed = closed
            || read_until_closed(&mut c, Duration::from_millis(100))
                .await
                .is_some();
        assert!(closed, "a trickling header is cut off");
        assert!(t.elapsed() < Duration::from_secs(4));
        // A connection idle after an answer (keep-alive) is closed too, after the answer.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let t = std::time::Instant::now();
        assert!(
            read_until_closed(&mut c, wait).await.is_some(),
            "an idle connection is still open after {wait:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn request_heads_over_the_limit_are_refused() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let (addr, _stop, _server) =
            serving(dir.path(), |s| s.server.max_header_bytes = 16 * 1024).await;
        let head = |pad: usize| {
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
                "p".repeat(pad)
            )
        };
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(head(8 * 1024).as_bytes()).await.unwrap();
        assert_answer_then_closed(&mut c, "200").await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may close before reading it all.
        let _ = c.write_all(head(100 * 1024).as_bytes()).await;
        assert_answer_then_closed(&mut c, "431").await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_free_one() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let (addr, _stop, _server) = serving(dir.path(), |s| s.server.max_connections = 2).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            held.push(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        third.write_all(get).await.unwrap();
        assert_eq!(
            read_until_closed(&mut third, Duration::from_millis(500)).await,
            None,
            "not served while two connections are open"
        );
        drop(held.pop());
        assert_answer_then_closed(&mut third, "200").await;
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let (addr, stop, server) = serving(dir.path(), |_| {}).await;
        let body = br#"{"name":"c","model":"none"}"#;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/collections HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&body[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!server.is_finished(), "waits for the request in flight");
        c.write_all(&body[5..]).await.unwrap();
        assert_answer_then_closed(&mut c, "4").await;
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn run_stops_on_the_shutdown_signal() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, state, async {
            let _ = rx.await;
        }));
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}
