//! The HTTP API end to end: a real server (the library's `app::run`, in-process) on
//! 127.0.0.1:0 over a temporary data directory, with the tiny fixture CLIP model, driven over
//! HTTP. Rankings are checked against the reference implementation's embeddings committed in
//! tests/fixtures/clip/reference, never against this code's own earlier output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::DType;
use omnibind::app::{self, AppState};
use omnibind::config::{Overrides, Settings};
use omnibind::embed::registry::Registry;
use omnibind::embed::ModelSpec;
use omnibind::engine::Engine;
use reqwest::blocking::{multipart, Client, Response};
use serde_json::{json, Value};

use crate::common::{fixtures, load_tensors, read_json};

const MODEL: &str = "clip-tiny-quickgelu";
/// Texts of the fixture uploaded to the reference collection.
const N_TEXTS: usize = 40;
/// Error bound (L2) of our embedding of an input against the reference's: 16 components each
/// within 5e-7 (measured in clip.rs) for texts and for PNG, GIF and WebP images, whose decoded
/// pixels are bit-identical to PIL's.
const ERR_EXACT: f32 = 2e-6;
/// The same for JPEG images, whose decoder rounds differently from libjpeg-turbo: clip.rs
/// measures cosine >= 0.999997 with the reference, so the L2 error is at most
/// sqrt(2 * 3e-6) = 2.45e-3.
const ERR_JPEG: f32 = 2.5e-3;

fn clip_dir() -> PathBuf {
    fixtures().join("clip")
}

fn model_dir() -> PathBuf {
    clip_dir().join("models").join(MODEL)
}

/// The ImageBind test model (every modality) as `imagebind`.
pub fn imagebind_spec() -> ModelSpec {
    let dir = crate::common::fixtures().join("imagebind/models/imagebind-tiny");
    ModelSpec::new("imagebind", dir.to_str().unwrap())
}

fn image_names() -> Vec<String> {
    read_json(&clip_dir().join("images.json"))
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(clip_dir().join("images").join(name)).unwrap()
}

/// A running server on a data directory. Stops (gracefully, persisting indexes) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub http: Client,
}

impl TestServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, |_| {})
    }

    /// Starts a server with the fixture model as `default`; `tweak` may change any setting.
    pub fn start_with(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_configured(dir, |settings| {
            settings.models = vec![ModelSpec::new("default", model_dir().to_str().unwrap())];
            tweak(settings);
        })
    }

    /// Starts a server with the built-in default settings (the repository's `config.toml`)
    /// on `dir`; `tweak` may change any setting.
    pub fn start_configured(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::load(
            None,
            &Overrides {
                data_dir: Some(dir.to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        tweak(&mut settings);
        let registry = Registry::load(&settings.models).unwrap();
        let engine = Arc::new(Engine::open(&settings, registry).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let state = AppState::new(engine, settings);
                app::run(listener, state, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        TestServer {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful shutdown; returns once the engine is closed and its data directory free.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        answer(self.http.get(self.url(path)).send().unwrap())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.http.post(self.url(path)).json(body).send().unwrap())
    }

    pub fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        answer(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .unwrap(),
        )
    }

    pub fn post_form(&self, path: &str, form: multipart::Form) -> (u16, Value) {
        answer(
            self.http
                .post(self.url(path))
                .multipart(form)
                .send()
                .unwrap(),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        answer(self.http.delete(self.url(path)).send().unwrap())
    }

    pub fn create(&self, name: &str) {
        let (s, v) = self.post(
            "/v1/collections",
            &json!({"name": name, "model": "default"}),
        );
        assert_eq!(s, 201, "{v}");
    }

    /// `(id, score)` of a JSON search.
    /// The `/v1/models` entry of the model `name`.
    pub fn model(&self, name: &str) -> Value {
        let (s, v) = self.get("/v1/models");
        assert_eq!(s, 200, "{v}");
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no model {name} in {v}"))
            .clone()
    }

    pub fn search(&self, coll: &str, body: &Value) -> Vec<(String, f32)> {
        let (s, v) = self.post(&format!("/v1/collections/{coll}/search"), body);
        assert_eq!(s, 200, "{body} -> {v}");
        hits(&v)
    }
}

/// Asserts that a `/v1/models` entry lists every one of `modalities`.
#[track_caller]
pub fn assert_lists_modalities(model: &Value, modalities: &[&str]) {
    let listed: Vec<&str> = model["modalities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in modalities {
        assert!(listed.contains(m), "{m} not in {listed:?}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.halt();
    }
}

pub fn answer(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, v)
}

/// Sends a request over a plain socket, writing from another thread so that a server that
/// answers before reading the whole body is seen answering; returns the status and JSON body.
pub(crate) fn raw_request(addr: SocketAddr, head: String, body: Vec<u8>) -> (u16, Value) {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut reader = stream;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    // Read until the server closes; a reset after the answer arrived is fine.
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    parse_answer(&got)
}

/// The status and JSON body of a raw HTTP/1.1 answer.
pub(crate) fn parse_answer(got: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(got).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

pub(crate) fn hits(v: &Value) -> Vec<(String, f32)> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

pub(crate) fn file_part(bytes: Vec<u8>, name: &str) -> multipart::Part {
    multipart::Part::bytes(bytes).file_name(name.to_string())
}

/// Asserts an error answer: status, code, and the error body's shape.
#[track_caller]
pub(crate) fn assert_error(answer: (u16, Value), status: u16, code: &str) {
    let (s, v) = answer;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn normalized(v: Vec<f32>) -> Vec<f32> {
    let n = dot(&v, &v).sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// The reference collection: the fixture images and the first texts, with the reference
/// implementation's embedding of each and its error bound.
struct Reference {
    /// Item id -> (reference vector, error bound of our embedding).
    items: BTreeMap<String, (Vec<f32>, f32)>,
    /// Item id -> metadata as uploaded.
    metadata: BTreeMap<String, Value>,
    modality: BTreeMap<String, &'static str>,
    image_ids: Vec<String>,
    text_ids: Vec<String>,
    texts: Vec<String>,
}

fn image_id(name: &str) -> String {
    // One id that needs percent-encoding in URLs.
    if name.starts_with("gif_") {
        "gif #1 animé?".to_string()
    } else {
        name.to_string()
    }
}

fn image_metadata(i: usize, name: &str) -> Value {
    let format = name.split('_').next().unwrap();
    let size = name.rsplit('_').next().unwrap().split('.').next().unwrap();
    let (w, h) = size.split_once('x').unwrap();
    json!({
        "name": name,
        "format": format,
        "width": w.parse::<u32>().unwrap(),
        "height": h.parse::<u32>().unwrap(),
        "index": i,
    })
}

fn reference() -> Reference {
    let refs = load_tensors(
        &clip_dir()
            .join("reference")
            .join(format!("{MODEL}.safetensors")),
    );
    let rows = |name: &str| -> Vec<Vec<f32>> {
        refs[name]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let image_embeds = rows("image_embeds");
    let text_embeds = rows("text_embeds");
    let all_texts: Vec<String> = read_json(&clip_dir().join("texts.json"));
    let mut r = Reference {
        items: BTreeMap::new(),
        metadata: BTreeMap::new(),
        modality: BTreeMap::new(),
        image_ids: Vec::new(),
        text_ids: Vec::new(),
        texts: all_texts[..N_TEXTS].to_vec(),
    };
    for (i, name) in image_names().iter().enumerate() {
        let id = image_id(name);
        let err = if name.starts_with("jpeg") {
            ERR_JPEG
        } else {
            ERR_EXACT
        };
        r.items
            .insert(id.clone(), (normalized(image_embeds[i].clone()), err));
        let mut meta = image_metadata(i, name);
        meta["source"] = json!("fixtures");
        r.metadata.insert(id.clone(), meta);
        r.modality.insert(id.clone(), "image");
        r.image_ids.push(id);
    }
    for (i, v) in text_embeds.iter().take(N_TEXTS).enumerate() {
        let id = format!("text-{i:02}");
        r.items
            .insert(id.clone(), (normalized(v.clone()), ERR_EXACT));
        r.metadata
            .insert(id.clone(), json!({"kind": "caption", "index": i}));
        r.modality.insert(id.clone(), "text");
        r.text_ids.push(id);
    }
    r
}

impl Reference {
    fn vector(&self, id: &str) -> &[f32] {
        &self.items[id].0
    }

    /// Asserts that `hits` rank exactly `candidates` by the reference cosine to `query`: all
    /// of them, each score within the error bound of the reference score, and in reference
    /// order except where two items' reference scores are closer than their error bounds
    /// (only JPEG images have bounds large enough for that). Returns those close pairs.
    #[track_caller]
    fn assert_ranking(
        &self,
        what: &str,
        hits: &[(String, f32)],
        query: &[f32],
        query_err: f32,
        candidates: &[String],
    ) -> usize {
        let reference: HashMap<&str, f32> = candidates
            .iter()
            .map(|id| (id.as_str(), dot(query, self.vector(id))))
            .collect();
        let got: BTreeSet<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
        let want: BTreeSet<&str> = reference.keys().copied().collect();
        assert_eq!(got, want, "{what}: the hits are not the candidates");
        assert_eq!(hits.len(), candidates.len(), "{what}: repeated hits");
        let err = |id: &str| self.items[id].1;
        for (id, score) in hits {
            let bound = query_err + err(id) + 1e-5;
            assert!(
                (score - reference[id.as_str()]).abs() <= bound,
                "{what}: {id} scored {score}, reference {}",
                reference[id.as_str()]
            );
        }
        let mut close = 0;
        for (i, (a, _)) in hits.iter().enumerate() {
            for (b, _) in &hits[i + 1..] {
                let (ra, rb) = (reference[a.as_str()], reference[b.as_str()]);
                if ra >= rb {
                    continue;
                }
                let tol = 2.0 * query_err + err(a) + err(b);
                assert!(
                    rb - ra <= tol,
                    "{what}: {a} (reference {ra}) ranked above {b} (reference {rb})"
                );
                close += 1;
            }
        }
        close
    }
}

/// Creates `coll` and uploads the reference items: images as one multipart form (default
/// metadata first, then each file followed by its id and metadata), texts as JSON.
fn populate(server: &TestServer, coll: &str, r: &Reference) {
    server.create(coll);
    let mut form =
        multipart::Form::new().text("metadata", json!({"source": "fixtures"}).to_string());
    for (i, name) in image_names().iter().enumerate() {
        form = form
            .part("file", file_part(image_bytes(name), name))
            .text("id", image_id(name))
            .text("metadata", image_metadata(i, name).to_string());
    }
    let (s, v) = server.post_form(&format!("/v1/collections/{coll}/items"), form);
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<(&str, &str, &str)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap(),
                i["modality"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str)> = r
        .image_ids
        .iter()
        .map(|id| (id.as_str(), "image", "created"))
        .collect();
    assert_eq!(statuses, want, "per-item answers in input order");
    let items: Vec<Value> = r
        .texts
        .iter()
        .zip(&r.text_ids)
        .map(|(t, id)| json!({"id": id, "text": t, "metadata": r.metadata[id]}))
        .collect();
    let (s, v) = server.post(
        &format!("/v1/collections/{coll}/items"),
        &json!({ "items": items }),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "created" && i["modality"] == "text"));
}

#[test]
fn searches_rank_as_the_reference_embeddings_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    // exact_threshold 0: the default path walks the HNSW graph even on this small collection,
    // so it is compared with `exact: true` (a scan).
    let graph = |s: &mut Settings| s.index.exact_threshold = 0;
    let server = TestServer::start_with(dir.path(), graph);
    populate(&server, "ref", &r);
    let (s, info) = server.get("/v1/collections/ref");
    assert_eq!(s, 200);
    assert_eq!(info["counts"], json!({"image": 13, "text": N_TEXTS}));
    assert_eq!(info["total"], 13 + N_TEXTS);
    assert_eq!(info["index"]["len"], 13 + N_TEXTS);

    let all: Vec<String> = r.items.keys().cloned().collect();
    let n = all.len();
    let mut close_pairs = 0;
    let mut answers: Vec<(Value, Vec<(String, f32)>)> = Vec::new();
    let mut check = |body: Value,
                     query: Vec<f32>,
                     query_err: f32,
                     candidates: &[String],
                     answers: &mut Vec<(Value, Vec<(String, f32)>)>| {
        let exact = server.search("ref", &{
            let mut b = body.clone();
            b["exact"] = json!(true);
            b
        });
        close_pairs += r.assert_ranking(&body.to_string(), &exact, &query, query_err, candidates);
        let default = server.search("ref", &body);
        let ids = |h: &[(String, f32)]| h.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&default), ids(&exact), "graph vs exact: {body}");
        answers.push((body, exact));
    };

    // Text -> everything, and text -> images.
    for t in [0, 1, 2, 7, 19, 33] {
        let q = r.vector(&r.text_ids[t]).to_vec();
        check(
            json!({"query": r.texts[t], "k": n}),
            q.clone(),
            ERR_EXACT,
            &all,
            &mut answers,
        );
        check(
            json!({"query": {"text": r.texts[t]}, "k": 13, "filter": {"modality": ["image"]}}),
            q,
            ERR_EXACT,
            &r.image_ids,
            &mut answers,
        );
    }
    // Image -> texts, by stored item (a PNG, a WebP and a JPEG).
    for name in [
        "png_rgb_1024x768.png",
        "webp_lossy_333x333.webp",
        "jpeg_420_640x480.jpg",
    ] {
        let id = image_id(name);
        let (q, err) = r.items[&id].clone();
        check(
            json!({"query": {"item": id}, "k": N_TEXTS, "filter": {"modality": ["text"]}}),
            q,
            err,
            &r.text_ids,
            &mut answers,
        );
    }
    // A vector query: the reference embedding of a text.
    let q = r.vector(&r.text_ids[5]).to_vec();
    check(
        json!({"query": q, "k": n}),
        q.clone(),
        0.0,
        &all,
        &mut answers,
    );
    check(
        json!({"query": {"vector": q}, "k": n}),
        q.clone(),
        0.0,
        &all,
        &mut answers,
    );
    // Weighted terms: the normalised weighted sum of the normalised term vectors.
    let png = image_id("png_panorama_1000x200.png");
    let weighted: Vec<f32> = normalized(
        (0..16)
            .map(|d| {
                r.vector(&r.text_ids[3])[d] + 0.5 * r.vector(&png)[d]
                    - 0.5 * r.vector(&r.text_ids[9])[d]
            })
            .collect(),
    );
    check(
        json!({"query": [
            {"text": r.texts[3]},
            {"item": png, "weight": 0.5},
            {"text": r.texts[9], "weight": -0.5}
        ], "k": n}),
        weighted,
        2.0 * ERR_EXACT,
        &all,
        &mut answers,
    );
    // Filters: metadata equality, membership, ranges, combined with modality.
    let q = r.vector(&r.text_ids[4]).to_vec();
    let select = |f: &dyn Fn(&str, &Value) -> bool| -> Vec<String> {
        r.items
            .keys()
            .filter(|id| f(r.modality[id.as_str()], &r.metadata[id.as_str()]))
            .cloned()
            .collect()
    };
    let cases: Vec<(Value, Vec<String>)> = vec![
        (
            json!({"metadata": {"format": "png"}}),
            select(&|_, m| m["format"] == "png"),
        ),
        (
            json!({"metadata": {"format": {"in": ["webp", "gif"]}}}),
            select(&|_, m| m["format"] == "webp" || m["format"] == "gif"),
        ),
        (
            json!({"metadata": {"width": {"gte": 500}}}),
            select(&|_, m| m["width"].as_u64().is_some_and(|w| w >= 500)),
        ),
        (
            json!({"metadata": {"width": {"gt": 200, "lt": 1000}, "source": "fixtures"}}),
            select(&|_, m| m["width"].as_u64().is_some_and(|w| w > 200 && w < 1000)),
        ),
        (
            json!({"modality": ["text"], "metadata": {"index": {"gte": 10, "lt": 20}}}),
            select(&|md, m| {
                md == "text" && m["index"].as_u64().is_some_and(|i| (10..20).contains(&i))
            }),
        ),
    ];
    for (filter, want) in cases {
        assert!(!want.is_empty() && want.len() < n, "{filter}");
        check(
            json!({"query": r.texts[4], "k": n, "filter": filter}),
            q.clone(),
            ERR_EXACT,
            &want,
            &mut answers,
        );
    }
    // A file query (multipart) ranks as the stored item of the same bytes.
    let name = "png_rgb_1024x768.png";
    let form = multipart::Form::new()
        .part("file", file_part(image_bytes(name), name))
        .text("k", N_TEXTS.to_string())
        .text("filter", json!({"modality": ["text"]}).to_string());
    let (s, v) = server.post_form("/v1/collections/ref/search", form);
    assert_eq!(s, 200, "{v}");
    let by_file = hits(&v);
    let by_item = server.search(
        "ref",
        &json!({"query": {"item": image_id(name)}, "k": N_TEXTS, "filter": {"modality": ["text"]}}),
    );
    assert_eq!(by_file.len(), N_TEXTS);
    for (a, b) in by_file.iter().zip(&by_item) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-6);
    }
    // k, offset and min_score cut the same ranking.
    let full = server.search("ref", &json!({"query": r.texts[0], "k": n, "exact": true}));
    let page = server.search(
        "ref",
        &json!({"query": r.texts[0], "k": 5, "offset": 5, "exact": true}),
    );
    assert_eq!(page, full[5..10].to_vec());
    let threshold = full[7].1;
    let above = server.search(
        "ref",
        &json!({"query": r.texts[0], "k": n, "min_score": threshold, "exact": true}),
    );
    assert_eq!(above, full[..above.len()].to_vec());
    assert!(above.len() >= 8 && above.iter().all(|h| h.1 >= threshold));
    eprintln!(
        "{} searches match the reference ranking; {close_pairs} pairs ordered within the JPEG \
         error bound",
        answers.len()
    );

    // Restart on the same data directory: the same answers.
    server.stop();
    let server = TestServer::start_with(dir.path(), graph);
    assert!(
        dir.path().join("index").join("ref").exists(),
        "index dump written at shutdown"
    );
    for (body, before) in &answers {
        let mut exact = body.clone();
        exact["exact"] = json!(true);
        let after = server.search("ref", &exact);
        assert_eq!(
            after.iter().map(|h| &h.0).collect::<Vec<_>>(),
            before.iter().map(|h| &h.0).collect::<Vec<_>>(),
            "after restart: {body}"
        );
        for (a, b) in after.iter().zip(before) {
            assert!((a.1 - b.1).abs() < 1e-6, "after restart: {body}");
        }
        let default = server.search("ref", body);
        assert_eq!(
            default.iter().map(|h| &h.0).collect::<Vec<_>>(),
            before.iter().map(|h| &h.0).collect::<Vec<_>>(),
            "graph after restart: {body}"
        );
    }
}

#[test]
fn item_lifecycle_pagination_content_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let (s, v) = server.post("/v1/collections", &json!({"name": "c", "model": "default"}));
    assert_error((s, v), 409, "collection_exists");

    // The multipart metadata rule: fields before the first file are defaults; fields after a
    // file apply to it and win over the defaults.
    let png = "png_rgba_256x256.png";
    let jpg = "jpeg_exif_orientation8_240x320.jpg";
    let webp = "webp_lossless_500x200.webp";
    let form = multipart::Form::new()
        .text("metadata", json!({"album": "a", "n": 0}).to_string())
        .part("file", file_part(image_bytes(png), png))
        .text("metadata", json!({"n": 1}).to_string())
        .part("file", file_part(image_bytes(jpg), jpg))
        .part("file", file_part(image_bytes(webp), webp))
        .text("id", "third")
        .text("metadata", json!({"album": "b"}).to_string())
        .text("text", "a caption sent as a form field");
    let (s, v) = server.post_form("/v1/collections/c/items", form);
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[2]["id"], "third");
    assert_eq!(items[3]["modality"], "text");
    let (png_id, jpg_id) = (
        items[0]["id"].as_str().unwrap().to_string(),
        items[1]["id"].as_str().unwrap().to_string(),
    );
    let meta =
        |id: &str| server.get(&format!("/v1/collections/c/items/{id}")).1["metadata"].clone();
    assert_eq!(meta(&png_id), json!({"album": "a", "n": 1}));
    assert_eq!(meta(&jpg_id), json!({"album": "a", "n": 0}));
    assert_eq!(meta("third"), json!({"album": "b", "n": 0}));
    // A field the rule cannot place.
    let form = multipart::Form::new()
        .text("id", "x")
        .part("file", file_part(image_bytes(png), png));
    assert_error(
        server.post_form("/v1/collections/c/items", form),
        400,
        "invalid_multipart",
    );

    // Duplicates: the same bytes are not stored twice and name the existing item.
    let form = multipart::Form::new()
        .part("file", file_part(image_bytes(jpg), "renamed.jpg"))
        .part("file", file_part(image_bytes(png), png));
    let (s, v) = server.post_form("/v1/collections/c/items", form);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["items"],
        json!([
            {"id": jpg_id, "modality": "image", "status": "duplicate"},
            {"id": png_id, "modality": "image", "status": "duplicate"},
        ])
    );

    // An item read back.
    let (s, item) = server.get(&format!("/v1/collections/c/items/{png_id}"));
    assert_eq!(s, 200);
    assert_eq!(item["content_type"], "image/png");
    assert_eq!(item["content_len"], image_bytes(png).len());
    assert_eq!(item["model"], "default");
    assert_eq!(
        item["content_url"],
        format!("/v1/collections/c/items/{png_id}/content")
    );

    // Content: original bytes, stored type, nosniff; attachment unless an inline image.
    let content = |id: &str| {
        let r = server
            .http
            .get(server.url(&format!("/v1/collections/c/items/{id}/content")))
            .send()
            .unwrap();
        let h = r.headers().clone();
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            get("content-type"),
            get("x-content-type-options"),
            get("content-disposition"),
            r.bytes().unwrap().to_vec(),
        )
    };
    let (s, ct, nosniff, disp, body) = content(&png_id);
    assert_eq!(
        (s, ct.as_deref(), nosniff.as_deref(), disp),
        (200, Some("image/png"), Some("nosniff"), None)
    );
    assert_eq!(body, image_bytes(png));
    let (_, ct, _, disp, body) = content(&jpg_id);
    assert_eq!((ct.as_deref(), disp), (Some("image/jpeg"), None));

    // A long text: its record keeps the first 4096 bytes and says so; the content is whole,
    // and short texts are not marked.
    let long = "word ".repeat(2000);
    let (s, v) = server.post(
        "/v1/collections/c/items",
        &json!({"items": [{"id": "long", "text": long}]}),
    );
    assert_eq!(s, 200, "{v}");
    let (_, item) = server.get("/v1/collections/c/items/long");
    assert_eq!(item["text_truncated"], true, "{item}");
    assert_eq!(item["text"].as_str().unwrap(), &long[..4096]);
    assert_eq!(content("long").4, long.as_bytes());
    let (_, item) = server.get("/v1/collections/c/items/third");
    assert!(item.get("text_truncated").is_none(), "{item}");
    assert_eq!(server.delete("/v1/collections/c/items/long").0, 204);
    assert_eq!(body, image_bytes(jpg));
    let (s, v) = server.post(
        "/v1/collections/c/items",
        &json!({"items": [{"text": "<script>alert(1)</script>", "id": "html"}]}),
    );
    assert_eq!(s, 200, "{v}");
    let (_, ct, nosniff, disp, body) = content("html");
    assert_eq!(ct.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(nosniff.as_deref(), Some("nosniff"));
    assert_eq!(disp.as_deref(), Some("attachment"));
    assert_eq!(body, b"<script>alert(1)</script>");

    // Pagination over more items than a page: every item once, in id order.
    let texts: Vec<Value> = (0..30)
        .map(|i| json!({"text": format!("caption number {i}"), "metadata": {"i": i}}))
        .collect();
    let (s, v) = server.post("/v1/collections/c/items", &json!({ "items": texts }));
    assert_eq!(s, 200, "{v}");
    let (_, info) = server.get("/v1/collections/c");
    let total = info["total"].as_u64().unwrap() as usize;
    assert_eq!(total, 4 + 1 + 30);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/collections/c/items?limit=7&cursor={c}"),
            None => "/v1/collections/c/items?limit=7".to_string(),
        };
        let (s, page) = server.get(&path);
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), total);
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        total,
        "no duplicates"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert!(pages >= 5);
    let (_, default_page) = server.get("/v1/collections/c/items");
    assert_eq!(default_page["items"].as_array().unwrap().len(), total);
    assert!(default_page["next_cursor"].is_null());
    assert_error(
        server.get("/v1/collections/c/items?limit=0"),
        400,
        "invalid_request",
    );
    assert_error(
        server.get("/v1/collections/c/items?limit=1001"),
        400,
        "invalid_request",
    );
    assert_error(
        server.get("/v1/collections/c/items?limit=x"),
        400,
        "invalid_request",
    );

    // Delete, then the item is gone everywhere.
    let query = json!({"query": {"item": "third"}, "k": 100});
    assert_eq!(server.search("c", &query)[0].0, "third");
    let (s, _) = server.delete("/v1/collections/c/items/third");
    assert_eq!(s, 204);
    assert_error(
        server.get("/v1/collections/c/items/third"),
        404,
        "item_not_found",
    );
    assert_error(
        server.delete("/v1/collections/c/items/third"),
        404,
        "item_not_found",
    );
    assert_error(
        server.post("/v1/collections/c/search", &query),
        404,
        "item_not_found",
    );
    let left = server.search("c", &json!({"query": "a caption", "k": 100, "exact": true}));
    assert_eq!(left.len(), total - 1);
    assert!(left.iter().all(|h| h.0 != "third"));
    let (_, info) = server.get("/v1/collections/c");
    assert_eq!(info["total"], total - 1);

    // Collections: list, delete.
    server.create("d");
    let (_, list) = server.get("/v1/collections");
    let names: Vec<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(server.delete("/v1/collections/c").0, 204);
    assert_error(server.get("/v1/collections/c"), 404, "collection_not_found");
    assert_error(
        server.get("/v1/collections/c/items"),
        404,
        "collection_not_found",
    );
}

#[test]
fn bad_requests_get_the_right_status_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        s.server.body_limit = 64 << 10;
        s.server.upload_limit = 1 << 20;
    });
    server.create("c");
    let items = "/v1/collections/c/items";
    let form_with = |bytes: Vec<u8>| multipart::Form::new().part("file", file_part(bytes, "f"));

    assert_error(
        server.post(
            "/v1/collections/nope/items",
            &json!({"items": [{"text": "a"}]}),
        ),
        404,
        "collection_not_found",
    );
    assert_error(
        server.post("/v1/collections/nope/search", &json!({"query": "a"})),
        404,
        "collection_not_found",
    );
    assert_error(
        server.post("/v1/collections", &json!({"name": "x", "model": "nope"})),
        404,
        "model_not_found",
    );
    assert_error(
        server.post(
            "/v1/collections",
            &json!({"name": "bad name!", "model": "default"}),
        ),
        400,
        "invalid_request",
    );
    // Files.
    assert_error(
        server.post_form(items, form_with(Vec::new())),
        400,
        "empty_file",
    );
    let jpeg = image_bytes("jpeg_420_640x480.jpg");
    assert_error(
        server.post_form(items, form_with(jpeg[..jpeg.len() / 2].to_vec())),
        400,
        "invalid_media",
    );
    assert_error(
        server.post_form(items, form_with(b"\x00\x01\x02binary\xff".to_vec())),
        415,
        "unsupported_media_type",
    );
    // All or nothing: a bad file fails the whole request, naming its position.
    let form = multipart::Form::new()
        .part(
            "file",
            file_part(image_bytes("png_tiny_31x17.png"), "a.png"),
        )
        .part("file", file_part(Vec::new(), "b"));
    let (s, v) = server.post_form(items, form);
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("item 1"),
        "{v}"
    );
    assert_eq!(server.get("/v1/collections/c").1["total"], 0);
    // JSON.
    assert_error(server.post_raw(items, "{\"items\": ["), 400, "invalid_json");
    assert_error(server.post_raw(items, ""), 400, "invalid_json");
    assert_error(
        server.post(items, &json!({"items": [{"txt": "a"}]})),
        400,
        "invalid_json",
    );
    assert_error(
        server.post(items, &json!({"items": [{"text": "a", "vector": [1.0]}]})),
        400,
        "invalid_request",
    );
    assert_error(
        server.post(items, &json!({"items": [{"vector": vec![0.5; 15]}]})),
        400,
        "wrong_dimension",
    );
    assert_error(
        server.post(items, &json!({"items": [{"text": "a", "metadata": [1]}]})),
        400,
        "invalid_metadata",
    );
    // Non-finite numbers: JSON has no NaN; 1e400 does not parse as a number; 1e39 parses but
    // is infinite as f32.
    let mut inf = "{\"items\":[{\"vector\":[1e39".to_string();
    inf.push_str(&",0.1".repeat(15));
    inf.push_str("]}]}");
    let inf: &'static str = Box::leak(inf.into_boxed_str());
    assert_error(server.post_raw(items, inf), 400, "non_finite_vector");
    assert_error(
        server.post_raw(items, "{\"items\":[{\"vector\":[1e400]}]}"),
        400,
        "invalid_json",
    );
    assert_error(
        server.post_raw(items, "{\"items\":[{\"vector\":[NaN]}]}"),
        400,
        "invalid_json",
    );
    // Searches.
    let search = "/v1/collections/c/search";
    assert_error(
        server.post(search, &json!({"query": vec![0.1; 3]})),
        400,
        "wrong_dimension",
    );
    let q = format!("{{\"query\":[1e39{}]}}", ",0.1".repeat(15));
    let q: &'static str = Box::leak(q.into_boxed_str());
    assert_error(server.post_raw(search, q), 400, "non_finite_vector");
    assert_error(
        server.post(search, &json!({"query": 5})),
        400,
        "invalid_query",
    );
    assert_error(
        server.post(search, &json!({"query": []})),
        400,
        "invalid_query",
    );
    assert_error(
        server.post(search, &json!({"query": "a", "k": 0})),
        400,
        "invalid_request",
    );
    assert_error(
        server.post(
            search,
            &json!({"query": "a", "filter": {"metadata": {"x": {"near": 1}}}}),
        ),
        400,
        "invalid_filter",
    );
    assert_error(
        server.post(search, &json!({"query": "a", "filter": {"colour": "red"}})),
        400,
        "invalid_filter",
    );
    assert_error(
        server.post(search, &json!({"query": {"item": "nope"}})),
        404,
        "item_not_found",
    );
    assert_error(
        server.post(
            search,
            &json!({"query": [{"text": "a"}, {"text": "a", "weight": -1}]}),
        ),
        400,
        "invalid_query",
    );
    let form = multipart::Form::new()
        .part("file", file_part(b"\x00junk".to_vec(), "f"))
        .text("k", "3");
    assert_error(
        server.post_form(search, form),
        415,
        "unsupported_media_type",
    );
    let form = multipart::Form::new().text("k", "3");
    assert_error(server.post_form(search, form), 400, "invalid_query");
    let form = multipart::Form::new().text("k", "three").text("text", "a");
    assert_error(server.post_form(search, form), 400, "invalid_multipart");
    // Embed and classify.
    assert_error(
        server.post("/v1/embed", &json!({"model": "nope", "text": "a"})),
        404,
        "model_not_found",
    );
    assert_error(
        server.post(
            "/v1/classify",
            &json!({"model": "default", "text": "a", "labels": []}),
        ),
        400,
        "invalid_request",
    );
    // Sizes: JSON over body_limit, multipart over upload_limit (each 413), while a multipart
    // body between the two limits is accepted by the upload route.
    // (Sent over a plain socket: the server answers without reading the body, and an HTTP
    // client still sending may see the closed connection instead of the answer.)
    let big = format!("{{\"items\":[{{\"text\":\"{}\"}}]}}", "a".repeat(70 << 10));
    let head = format!(
        "POST {items} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    assert_error(
        raw_request(server.addr, head, big.into_bytes()),
        413,
        "payload_too_large",
    );
    // Over the upload limit, declared up front (refused before the body is read) or streamed
    // in chunks (refused once the limit is crossed).
    let part = |n: usize| {
        let mut b =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n"
                .to_vec();
        b.extend(std::iter::repeat_n(b'a', n));
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    };
    let body = part(2 << 20);
    let head = format!(
        "POST {items} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    assert_error(
        raw_request(server.addr, head, body),
        413,
        "payload_too_large",
    );
    let mut chunked = Vec::new();
    for chunk in part(2 << 20).chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {items} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    assert_error(
        raw_request(server.addr, head, chunked),
        413,
        "payload_too_large",
    );
    let mid = image_bytes("png_rgb_1024x768.png"); // 96 KiB: over body_limit, under upload_limit
    assert!(mid.len() > 64 << 10);
    let (s, v) = server.post_form(items, form_with(mid));
    assert_eq!(s, 200, "{v}");
    // Routing and content types.
    assert_error(server.get("/v1/nope"), 404, "not_found");
    assert_error(server.delete("/v1/models"), 405, "method_not_allowed");
    assert_error(
        server.post_form("/v1/collections", multipart::Form::new().text("name", "x")),
        415,
        "unsupported_content_type",
    );
}

#[test]
fn embed_classify_health_metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let r = reference();
    assert_eq!(server.get("/healthz"), (200, json!({"status": "ok"})));
    assert_eq!(server.get("/readyz"), (200, json!({"status": "ready"})));
    let (s, models) = server.get("/v1/models");
    assert_eq!(s, 200);
    let m = &models["models"][0];
    assert_eq!(
        (
            &m["name"],
            &m["dim"],
            &m["family"],
            &m["device"],
            &m["precision"]
        ),
        (
            &json!("default"),
            &json!(16),
            &json!("clip"),
            &json!("cpu"),
            &json!("f32")
        )
    );
    assert_eq!(m["modalities"], json!(["text", "image"]));
    assert_eq!(m["weights_sha256"].as_str().unwrap().len(), 64);
    assert!(m["license"].is_string());

    // Embeddings over HTTP equal the reference's.
    let (s, e) = server.post(
        "/v1/embed",
        &json!({"model": "default", "text": r.texts[2]}),
    );
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        (&e["model"], &e["modality"], &e["dim"]),
        (&json!("default"), &json!("text"), &json!(16))
    );
    let v: Vec<f32> = serde_json::from_value(e["vector"].clone()).unwrap();
    let want = r.vector(&r.text_ids[2]);
    assert!(
        v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
        "{v:?} vs {want:?}"
    );
    let name = "webp_lossy_333x333.webp";
    let form = multipart::Form::new()
        .text("model", "default")
        .part("file", file_part(image_bytes(name), name));
    let (s, e) = server.post_form("/v1/embed", form);
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["modality"], "image");
    let v: Vec<f32> = serde_json::from_value(e["vector"].clone()).unwrap();
    let want = r.vector(&image_id(name));
    assert!(
        v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
        "{v:?} vs {want:?}"
    );

    // Classification: softmax over 100 * cosine with the prompted labels.
    let labels = ["cat", "dog", "car"];
    let (s, c) = server.post(
        "/v1/classify",
        &json!({"model": "default", "text": "a photo", "labels": labels, "template": "{}"}),
    );
    assert_eq!(s, 200, "{c}");
    let got: Vec<(String, f32)> = c["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap().to_string(),
                l["probability"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(got.len(), 3);
    assert!((got.iter().map(|g| g.1).sum::<f32>() - 1.0).abs() < 1e-5);
    assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
    let embed = |t: &str| -> Vec<f32> {
        let (_, e) = server.post("/v1/embed", &json!({"model": "default", "text": t}));
        serde_json::from_value(e["vector"].clone()).unwrap()
    };
    let x = embed("a photo");
    let logits: Vec<f32> = labels.iter().map(|l| 100.0 * dot(&x, &embed(l))).collect();
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    for (label, p) in &got {
        let i = labels.iter().position(|l| l == label).unwrap();
        assert!((p - (logits[i] - max).exp() / z).abs() < 1e-4, "{label}");
    }
    let form = multipart::Form::new()
        .text("model", "default")
        .part("file", file_part(image_bytes(name), name))
        .text("labels", "cat")
        .text("labels", "dog");
    let (s, c) = server.post_form("/v1/classify", form);
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["labels"].as_array().unwrap().len(), 2);

    // A search, so that the search metrics move.
    server.create("m");
    let (s, _) = server.post(
        "/v1/collections/m/items",
        &json!({"items": [{"text": "a"}]}),
    );
    assert_eq!(s, 200);
    server.search("m", &json!({"query": "a"}));
    let _ = server.get("/no/such/route");

    let metrics = server.http.get(server.url("/metrics")).send().unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = metrics.text().unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("omnibind_http_requests_total{method=\"POST\",route=\"/v1/collections/{name}/search\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("omnibind_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("omnibind_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/embed\"}"),
        6.0
    );
    assert!(metrics.contains("omnibind_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/embed\",le=\"+Inf\"} 6"));
    assert!(value("omnibind_embed_batches_total") >= 8.0);
    assert!(value("omnibind_embed_items_total") >= 12.0);
    assert!(value("omnibind_embed_seconds_total") > 0.0);
    assert_eq!(value("omnibind_searches_total"), 1.0);
    assert!(value("omnibind_search_seconds_total") > 0.0);
    assert_eq!(value("omnibind_indexed_items"), 1.0);
    assert_eq!(value("omnibind_encoder_queue_depth"), 0.0);
    assert_eq!(value("omnibind_encoder_queue_capacity"), 64.0);
    assert_eq!(value("omnibind_encoder_queue_rejected_total"), 0.0);
    for name in [
        "omnibind_http_requests_total",
        "omnibind_http_request_duration_seconds",
    ] {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "{name}");
    }

    let (s, doc) = server.get("/openapi.json");
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "/v1/models",
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/items",
        "/v1/collections/{name}/items/{id}",
        "/v1/collections/{name}/items/{id}/content",
        "/v1/collections/{name}/search",
        "/v1/embed",
        "/v1/classify",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ]
    .into_iter()
    .collect();
    assert_eq!(paths, want);
    let items = &doc["paths"]["/v1/collections/{name}/items"]["post"]["requestBody"]["content"];
    assert!(items["application/json"].is_object() && items["multipart/form-data"].is_object());
    for schema in [
        "ErrorBody",
        "SearchBody",
        "HitDto",
        "CollectionDto",
        "ModelDto",
        "ItemDto",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[test]
fn a_full_encoder_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        s.embed.queue_capacity = 1;
        s.embed.workers = 1;
    });
    server.create("q");
    let names = image_names();
    let url = server.url("/v1/collections/q/items");
    let mut overloaded = None;
    let mut ok = 0;
    // Concurrent uploads of every fixture image: one is embedded, the others find the queue
    // full. Repeated a few times in case the scheduler serialises one burst.
    for _round in 0..5 {
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (url, names, barrier, http) = (
                    url.clone(),
                    names.clone(),
                    barrier.clone(),
                    server.http.clone(),
                );
                std::thread::spawn(move || {
                    let mut form = multipart::Form::new();
                    for n in &names {
                        form = form.part("file", file_part(image_bytes(n), n));
                    }
                    barrier.wait();
                    let r = http.post(&url).multipart(form).send().unwrap();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let (s, v) = answer(r);
                    (s, v, retry)
                })
            })
            .collect();
        for t in threads {
            let (s, v, retry) = t.join().unwrap();
            match s {
                200 => ok += 1,
                503 => overloaded = Some((v, retry)),
                _ => panic!("{s} {v}"),
            }
        }
        if overloaded.is_some() && ok > 0 {
            break;
        }
    }
    let (v, retry) = overloaded.expect("no request was refused with 503");
    assert!(ok > 0);
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        !metrics.contains("omnibind_encoder_queue_rejected_total 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("omnibind_encoder_queue_capacity 1\n"));
}

#[test]
fn cli_ingest_is_resumable_and_search_prints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("junk.bin"), b"\x00\x01\x02\x03junk").unwrap();
    std::fs::write(extra.path().join("note.txt"), "a dog on a beach").unwrap();
    std::fs::write(extra.path().join(".hidden.png"), b"skipped").unwrap();
    std::fs::create_dir(extra.path().join("sub")).unwrap();
    std::fs::write(extra.path().join("sub").join("empty.jpg"), b"").unwrap();
    let images = clip_dir().join("images");
    let args = omnibind::cli::IngestArgs {
        collection: "ing".into(),
        model: None,
        batch: 4,
        server: format!("http://{}", server.addr),
        api_key: None,
        paths: vec![images.clone(), extra.path().to_path_buf()],
    };
    let files_in_images = std::fs::read_dir(&images).unwrap().count();
    let t = Instant::now();
    let first = omnibind::cli::ingest(args.clone()).unwrap();
    let elapsed = t.elapsed();
    // The images folder (13 images and a text LICENSE.md) and note.txt are stored; junk.bin
    // (415) and the empty file (400) fail alone; the hidden file is skipped.
    assert_eq!(
        (first.created, first.duplicate, first.failed),
        (files_in_images + 1, 0, 2)
    );
    eprintln!(
        "ingest: {} files in {:.2} s ({:.1} files/s, tiny model, debug build of the crate)",
        files_in_images + 3,
        elapsed.as_secs_f64(),
        (files_in_images + 3) as f64 / elapsed.as_secs_f64()
    );
    let second = omnibind::cli::ingest(args).unwrap();
    assert_eq!(
        (second.created, second.duplicate, second.failed),
        (0, files_in_images + 1, 2),
        "a rerun stores nothing twice"
    );
    let (_, info) = server.get("/v1/collections/ing");
    assert_eq!(info["total"], files_in_images + 1);
    assert_eq!(info["counts"]["image"], 13);
    let (_, page) = server.get("/v1/collections/ing/items?limit=1000");
    let paths: BTreeSet<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["path"].as_str().unwrap().to_string())
        .collect();
    assert!(paths.contains(&images.join("png_tiny_31x17.png").display().to_string()));

    for (text, file) in [
        (Some("a dog".to_string()), None),
        (None, Some(images.join("png_tiny_31x17.png"))),
    ] {
        omnibind::cli::search(omnibind::cli::SearchArgs {
            collection: "ing".into(),
            text,
            file,
            k: 3,
            filter: Some(r#"{"modality":["image"]}"#.into()),
            server: format!("http://{}", server.addr),
            api_key: None,
        })
        .unwrap();
    }
    let missing = omnibind::cli::search(omnibind::cli::SearchArgs {
        collection: "nope".into(),
        text: Some("a".into()),
        file: None,
        k: 3,
        filter: None,
        server: format!("http://{}", server.addr),
        api_key: None,
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("collection_not_found"),
        "{missing}"
    );
}
