//! `omnibind bench http`: measures a running server from a separate process, through its public
//! HTTP API only: upload throughput (texts and 224 px images, in batches), search latency
//! (p50/p95/p99) at a given collection size one request at a time, with the server's own
//! time per search read from `/metrics` over the same requests (what the HTTP layer adds), and
//! search throughput under load from many connections at once. Prints a table. Collections it
//! creates are named `bench-*` and deleted at the end.

use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Arguments of `omnibind bench http`.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpBenchArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:6600")]
    pub server: String,
    /// Model to create the benchmark collections with.
    #[arg(long)]
    pub model: String,
    /// Items in the search collection.
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
    /// Search requests timed per query kind.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Items per upload request.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Upload requests timed per modality.
    #[arg(long, default_value_t = 10)]
    pub upload_batches: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Connections searching at once in the load phase.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Seconds of the load phase (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub load_seconds: u64,
    /// Admin API key for a server with keys (prefer the environment variable).
    #[arg(long, env = "OMNIBIND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Vectors per fill request: a 512-d vector takes about 11 KB as JSON, and the default JSON
/// body limit is 2 MiB.
const FILL_CHUNK: usize = 100;

struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization` header value, if a key was given.
    auth: Option<String>,
}

impl Client {
    /// A client with its own connection pool; requests give up after `timeout`.
    fn new(base: String, auth: Option<String>, timeout: Duration) -> Self {
        Client {
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            base,
            auth,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        crate::cli::keyed_request(&self.agent, method, &self.url(path), self.auth.as_deref())
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let req = self.request(method, path);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) if r.status() == 204 => Ok(Value::Null),
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "{method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => Err(e).with_context(|| format!("{method} {path}")),
        }
    }

    fn multipart(&self, path: &str, files: &[Vec<u8>]) -> Result<Value> {
        let boundary = "omnibind-bench-boundary-7d1f0c";
        let mut body = Vec::new();
        for (i, f) in files.iter().enumerate() {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.png\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(f);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let r = self
            .request("POST", path)
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send_bytes(&body);
        match r {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "POST {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The server's counters of searches answered and seconds spent in them (`/metrics`).
    fn search_counters(&self) -> Result<(f64, f64)> {
        let text = match self.request("GET", "/metrics").call() {
            Ok(r) => r.into_string()?,
            Err(e) => bail!("GET /metrics: {e}"),
        };
        let value = |name: &str| -> Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("/metrics has no {name}"))?
                .trim()
                .parse()
                .with_context(|| format!("/metrics: {name} is not a number"))
        };
        Ok((
            value("omnibind_searches_total")?,
            value("omnibind_search_seconds_total")?,
        ))
    }
}

/// Searches from `connections` threads at once, each on its own connection, for `seconds`:
/// (queries per second, latencies, failed requests).
fn load(
    client: &Client,
    path: &str,
    queries: &[Vec<f32>],
    connections: usize,
    seconds: u64,
) -> (f64, Vec<Duration>, usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let t = Instant::now();
    let per_thread: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                scope.spawn(move || {
                    let own = Client::new(
                        client.base.clone(),
                        client.auth.clone(),
                        Duration::from_secs(60),
                    );
                    let (mut times, mut failed) = (Vec::new(), 0);
                    let mut i = c;
                    while Instant::now() < deadline {
                        let body = json!({"query": queries[i % queries.len()], "k": 10});
                        let t = Instant::now();
                        match own.json("POST", path, Some(body)) {
                            Ok(_) => times.push(t.elapsed()),
                            Err(_) => failed += 1,
                        }
                        i += connections;
                    }
                    (times, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    });
    let elapsed = t.elapsed().as_secs_f64();
    let failed = per_thread.iter().map(|(_, f)| f).sum();
    let times: Vec<Duration> = per_thread.into_iter().flat_map(|(t, _)| t).collect();
    (times.len() as f64 / elapsed, times, failed)
}

/// Builds the JSON body of the i-th query of a kind.
type QueryBody<'a> = Box<dyn Fn(usize) -> Value + 'a>;

/// Latency percentiles of a sample, in milliseconds.
fn percentiles(mut d: Vec<Duration>) -> (f64, f64, f64, f64) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    let mean = d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64 * 1e3;
    (at(0.5), at(0.95), at(0.99), mean)
}

/// A 224x224 PNG with a pattern unique to `n`.
fn synthetic_png(n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let (a, b, c): (u8, u8, u8) = (rng.random(), rng.random(), rng.random());
    let img = image::RgbImage::from_fn(224, 224, |x, y| {
        let t = (x as usize * 3 + y as usize * 5 + n * 7) as u8;
        image::Rgb([
            t.wrapping_add(a),
            (x as u8).wrapping_mul(b | 1),
            (y as u8) ^ c,
        ])
    });
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .expect("encoding to memory");
    buf
}

/// `omnibind bench http`.
pub fn http(args: HttpBenchArgs) -> Result<()> {
    let client = Client::new(
        args.server.clone(),
        crate::cli::authorization(args.api_key.as_deref()),
        Duration::from_secs(600),
    );
    let models = client.json("GET", "/v1/models", None)?;
    let model = models["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == args.model.as_str()))
        .with_context(|| format!("model `{}` is not loaded by the server", args.model))?
        .clone();
    let dim = model["dim"].as_u64().context("model dim")? as usize;
    let accepts = |m: &str| {
        model["modalities"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == m))
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Upload throughput, one collection per modality.
    for modality in ["text", "image"] {
        if !accepts(modality) {
            continue;
        }
        let name = format!("bench-{modality}-{stamp}");
        client.json(
            "POST",
            "/v1/collections",
            Some(json!({"name": name, "model": args.model})),
        )?;
        let path = format!("/v1/collections/{name}/items");
        let mut times = Vec::new();
        for b in 0..args.upload_batches {
            let t = if modality == "text" {
                let items: Vec<Value> = (0..args.batch)
                    .map(|i| json!({"text": format!("benchmark caption {b} {i}: a photo of thing number {}", rng.random::<u32>())}))
                    .collect();
                let t = Instant::now();
                client.json("POST", &path, Some(json!({ "items": items })))?;
                t.elapsed()
            } else {
                let files: Vec<Vec<u8>> = (0..args.batch)
                    .map(|i| synthetic_png(b * args.batch + i, &mut rng))
                    .collect();
                let t = Instant::now();
                client.multipart(&path, &files)?;
                t.elapsed()
            };
            times.push(t);
        }
        let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
        let (p50, _, p99, _) = percentiles(times.clone());
        rows.push((
            format!("upload {modality}, batch {}", args.batch),
            format!(
                "{:.1} items/s ({} requests, p50 {p50:.0} ms, p99 {p99:.0} ms per request)",
                (args.batch * args.upload_batches) as f64 / total,
                times.len()
            ),
        ));
        client.json("DELETE", &format!("/v1/collections/{name}"), None)?;
    }

    // Search latency at `items` items: the collection is filled with seeded vectors (this
    // measures the index and HTTP path; encoder cost is measured separately above and by the
    // text-query row below).
    let name = format!("bench-search-{stamp}");
    client.json(
        "POST",
        "/v1/collections",
        Some(json!({"name": name, "model": args.model})),
    )?;
    let data = super::clustered_vectors(args.items, dim, &mut rng);
    let t = Instant::now();
    for (c, chunk) in data.chunks(FILL_CHUNK).enumerate() {
        let items: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"vector": v, "metadata": {"group": (c * FILL_CHUNK + i) % 10}}))
            .collect();
        client.json(
            "POST",
            &format!("/v1/collections/{name}/items"),
            Some(json!({ "items": items })),
        )?;
    }
    rows.push((
        format!("fill {} vectors of dim {dim}", args.items),
        format!(
            "{:.0} items/s",
            args.items as f64 / t.elapsed().as_secs_f64()
        ),
    ));
    let queries = super::clustered_vectors(args.queries, dim, &mut rng);
    let search = format!("/v1/collections/{name}/search");
    let mut kinds: Vec<(&str, QueryBody)> = vec![
        (
            "search vector k=10",
            Box::new(|i| json!({"query": queries[i], "k": 10})),
        ),
        (
            "search vector k=10, metadata filter",
            Box::new(
                |i| json!({"query": queries[i], "k": 10, "filter": {"metadata": {"group": 3}}}),
            ),
        ),
        (
            "search vector k=10, exact",
            Box::new(|i| json!({"query": queries[i], "k": 10, "exact": true})),
        ),
    ];
    if accepts("text") {
        kinds.push((
            "search text k=10 (includes encoding)",
            Box::new(|i| json!({"query": format!("query number {i}"), "k": 10})),
        ));
    }
    for (label, body) in kinds {
        let mut times = Vec::with_capacity(args.queries);
        let (n0, s0) = client.search_counters()?;
        for i in 0..args.queries {
            let b = body(i);
            let t = Instant::now();
            client.json("POST", &search, Some(b))?;
            times.push(t.elapsed());
        }
        let (n1, s1) = client.search_counters()?;
        // The server's own mean time per search over the same requests: the rest of the
        // client's mean is the HTTP layer (connection, parsing, JSON, routing, middleware).
        let in_server = (s1 - s0) / (n1 - n0).max(1.0) * 1e3;
        let (p50, p95, p99, mean) = percentiles(times);
        rows.push((
            format!("{label} at {} items", args.items),
            format!(
                "p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms, mean {mean:.2} ms ({} queries); \
                 in the server {in_server:.3} ms, HTTP adds {:.3} ms (means)",
                args.queries,
                mean - in_server
            ),
        ));
    }
    if args.load_seconds > 0 && args.connections > 0 {
        let (qps, times, failed) = load(
            &client,
            &search,
            &queries,
            args.connections,
            args.load_seconds,
        );
        if times.is_empty() {
            bail!("no search succeeded under load ({failed} failed)");
        }
        let (p50, p95, p99, _) = percentiles(times);
        rows.push((
            format!(
                "search vector k=10 at {} items, {} connections, {} s",
                args.items, args.connections, args.load_seconds
            ),
            format!(
                "{qps:.0} queries/s, p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms, \
                 {failed} failed"
            ),
        ));
    }
    client.json("DELETE", &format!("/v1/collections/{name}"), None)?;

    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
