//! Request metrics and their Prometheus text exposition. Requests are counted by route
//! template (never by raw path, so ids do not explode the label set), method and status;
//! latencies go into one histogram per route. Engine counters are read at scrape time.
//!
//! Every label value comes from a fixed set: the method is one of [`METHODS`] or `other`, the
//! route a template of the router or `unmatched`, the status one the server chose. Metrics
//! are recorded before the key check and the rate limiter, so nothing a client sends may
//! become a label of its own: a method such as `X-4KB-OF-GARBAGE` would otherwise add a
//! series per request, forever.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::engine::Engine;

/// The methods recorded under their own name; any other is recorded as `other`.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The label of a request method: the standard method's name, or `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot counts values above every bound.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (method, route, status) -> count.
    requests: BTreeMap<(&'static str, String, u16), u64>,
    /// (method, route) -> latencies.
    latency: BTreeMap<(&'static str, String), Histogram>,
}

/// The server's request metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counts one request. `method` is a label from [`method_label`] and `route` a route
    /// template (or `unmatched`), never a raw value from the request.
    pub fn record(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().expect("metrics lock");
        *m.requests
            .entry((method, route.to_string(), status))
            .or_default() += 1;
        let h = m.latency.entry((method, route.to_string())).or_default();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        h.buckets[slot] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    /// The Prometheus text exposition (format 0.0.4) of these metrics and the engine's.
    pub fn render(&self, engine: &Engine) -> String {
        let mut out = String::with_capacity(4096);
        {
            let m = self.inner.lock().expect("metrics lock");
            header(
                &mut out,
                "omnibind_http_requests_total",
                "counter",
                "HTTP requests by method, route template and status.",
            );
            for ((method, route, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "omnibind_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(method),
                    escape(route)
                );
            }
            header(
                &mut out,
                "omnibind_http_request_duration_seconds",
                "histogram",
                "HTTP request latency by method and route template.",
            );
            for ((method, route), h) in &m.latency {
                let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
                let mut cumulative = 0;
                for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                    cumulative += h.buckets[i];
                    let _ = writeln!(
                        out,
                        "omnibind_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "omnibind_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "omnibind_http_request_duration_seconds_sum{{{labels}}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "omnibind_http_request_duration_seconds_count{{{labels}}} {}",
                    h.count
                );
            }
        }
        let s = engine.stats();
        let micros = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        let q = engine.queue();
        let rows: [(&str, &str, &str, String); 9] = [
            (
                "omnibind_embed_batches_total",
                "counter",
                "Encoder batches run (one call of the model per batch).",
                s.embed_batches.load(Ordering::Relaxed).to_string(),
            ),
            (
                "omnibind_embed_items_total",
                "counter",
                "Inputs embedded.",
                s.embed_items.load(Ordering::Relaxed).to_string(),
            ),
            (
                "omnibind_embed_seconds_total",
                "counter",
                "Time spent embedding, queue wait included.",
                micros(&s.embed_micros).to_string(),
            ),
            (
                "omnibind_searches_total",
                "counter",
                "Searches answered.",
                s.searches.load(Ordering::Relaxed).to_string(),
            ),
            (
                "omnibind_search_seconds_total",
                "counter",
                "Time spent in searches, query embedding included.",
                micros(&s.search_micros).to_string(),
            ),
            (
                "omnibind_indexed_items",
                "gauge",
                "Vectors in all collections' indexes.",
                engine.indexed_items().to_string(),
            ),
            (
                "omnibind_encoder_queue_depth",
                "gauge",
                "Encoder jobs queued or running.",
                q.depth().to_string(),
            ),
            (
                "omnibind_encoder_queue_capacity",
                "gauge",
                "Encoder jobs admitted at once; beyond it requests get 503.",
                q.capacity().to_string(),
            ),
            (
                "omnibind_encoder_queue_rejected_total",
                "counter",
                "Encoder jobs refused because the queue was full.",
                q.rejected().to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware recording each request under its method's label ([`method_label`]) and its route
/// template (`unmatched` for unknown routes).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    state.metrics.record(
        method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record("GET", "/a", 200, 0.0005);
        m.record("GET", "/a", 200, 0.02);
        m.record("GET", "/a", 404, 100.0);
        let inner = m.inner.lock().unwrap();
        let h = &inner.latency[&("GET", "/a".to_string())];
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS.len()], 1);
        assert_eq!(inner.requests[&("GET", "/a".to_string(), 200)], 2);
    }

    #[test]
    fn methods_outside_the_standard_set_are_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for raw in ["FOO", "get", "X-CUSTOM-METHOD"] {
            assert_eq!(
                method_label(&Method::from_bytes(raw.as_bytes()).unwrap()),
                "other"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
