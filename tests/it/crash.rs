//! Crash safety of acknowledged writes: the real server binary is killed with SIGKILL at random
//! moments while several clients upload; after every restart each acknowledged item must be
//! there with its content, metadata and vector, and the index must answer for it.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::fixtures;

const KILLS: usize = 20;
const WRITERS: usize = 3;

#[derive(Clone, Debug)]
struct Acked {
    content: Vec<u8>,
    metadata: Value,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(config: &Path, data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_omnibind"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts")
}

fn wait_ready(client: &reqwest::blocking::Client, base: &str) -> Duration {
    let t = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send() {
            if r.status().is_success() {
                return t.elapsed();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small PNG of seeded noise, unique to (writer, n), so embeddings differ clearly.
fn png(writer: usize, n: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64((writer as u64) << 32 | n as u64);
    let img = image::RgbImage::from_fn(64, 48, |_, _| image::Rgb(rng.random::<[u8; 3]>()));
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

#[test]
fn acknowledged_uploads_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("clip/models/clip-tiny-quickgelu");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"tiny\"\npath = \"{}\"\ndevice = \"cpu\"\n",
            model.display()
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let counter = Arc::new(AtomicUsize::new(0));
    let mut restart_times = Vec::new();

    for round in 0..=KILLS {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut server = start(&config, &data, port);
        restart_times.push(wait_ready(&client, &base));
        if round == 0 {
            let r = client
                .post(format!("{base}/v1/collections"))
                .json(&json!({"name": "c", "model": "tiny"}))
                .send()
                .unwrap();
            assert!(r.status().is_success(), "create: {}", r.text().unwrap());
        }
        // Everything acknowledged so far is present, intact and searchable.
        let snapshot = acked.lock().unwrap().clone();
        for (id, item) in &snapshot {
            let r = client
                .get(format!("{base}/v1/collections/c/items/{id}"))
                .send()
                .unwrap();
            assert!(
                r.status().is_success(),
                "round {round}: acknowledged item {id} lost"
            );
            let v: Value = r.json().unwrap();
            assert_eq!(v["metadata"], item.metadata, "round {round}: {id} metadata");
            let bytes = client
                .get(format!("{base}/v1/collections/c/items/{id}/content"))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert_eq!(&bytes[..], &item.content[..], "round {round}: {id} content");
            let hits: Value = client
                .post(format!("{base}/v1/collections/c/search"))
                .json(&json!({"query": {"item": id}, "k": 5, "exact": true}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            // The item's stored vector finds the item itself (score 1; near-identical items may
            // tie with it, hence the top 5).
            let found = hits["hits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["id"] == json!(id) && h["score"].as_f64().unwrap() > 0.9999);
            assert!(
                found,
                "round {round}: {id} not answered by the index: {hits}"
            );
        }
        if round == KILLS {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        // Concurrent writers until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, base, acked, stop) =
                (client.clone(), base.clone(), acked.clone(), stop.clone());
            let counter = counter.clone();
            writers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let id = format!("w{w}-{n}");
                    let metadata = json!({"writer": w, "n": n});
                    let (content, req) = if n.is_multiple_of(2) {
                        let text = format!("writer {w} item {n}");
                        let body =
                            json!({"items": [{"id": id, "text": text, "metadata": metadata}]});
                        (
                            text.into_bytes(),
                            client
                                .post(format!("{base}/v1/collections/c/items"))
                                .json(&body),
                        )
                    } else {
                        let bytes = png(w, n);
                        let form = reqwest::blocking::multipart::Form::new()
                            .part(
                                "file",
                                reqwest::blocking::multipart::Part::bytes(bytes.clone())
                                    .file_name("x.png"),
                            )
                            .text("id", id.clone())
                            .text("metadata", metadata.to_string());
                        (
                            bytes,
                            client
                                .post(format!("{base}/v1/collections/c/items"))
                                .multipart(form),
                        )
                    };
                    match req.send() {
                        Ok(r) if r.status().is_success() => {
                            // A response cut off by the kill is no acknowledgement.
                            let Ok(v) = r.json::<Value>() else { break };
                            assert_eq!(v["items"][0]["status"], "created", "{v}");
                            acked
                                .lock()
                                .unwrap()
                                .insert(id, Acked { content, metadata });
                        }
                        Ok(r) if r.status().as_u16() == 503 => {}
                        Ok(r) => panic!(
                            "upload failed: {} {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        ),
                        Err(_) => break, // the server is gone
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    let n = acked.lock().unwrap().len();
    restart_times.sort();
    eprintln!(
        "crash test: {KILLS} SIGKILLs, {n} acknowledged items checked after every restart, 0 lost; \
         restart-to-ready median {:?}, max {:?}",
        restart_times[restart_times.len() / 2],
        restart_times.last().unwrap()
    );
    assert!(
        n >= 50,
        "too few uploads acknowledged to mean anything: {n}"
    );
}
