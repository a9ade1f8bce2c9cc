//! Crash safety, modelled on Qdrant's crasher: the real server binary is killed with SIGKILL at
//! random moments ([`KILLS`] times, `OMNIBIND_CRASH_KILLS` to change) while clients upload,
//! delete and search at once. After every restart:
//! - every acknowledged item is there with its content, metadata and vector, and the index
//!   answers for it (a random sample each round, all of them after the last kill);
//! - no acknowledged delete is undone, and no search ever returns an item whose delete was
//!   acknowledged before the search was sent;
//! - the store and the index agree: the collection's item count equals the indexed vectors,
//!   and lies between the acknowledged items and those plus the writes in flight at a kill.
//!
//! Then the index dumps are truncated and corrupted: the server must rebuild them and serve
//! every item.

use std::collections::{BTreeMap, BTreeSet};
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

/// SIGKILLs of one run (`OMNIBIND_CRASH_KILLS` overrides).
const KILLS: usize = 200;
const WRITERS: usize = 3;
/// Acknowledged items checked in full after each restart (all of them after the last kill).
const SAMPLE: usize = 48;

fn kills() -> usize {
    std::env::var("OMNIBIND_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILLS)
}

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

/// SIGTERM, and the wait for a graceful exit (index dumps written).
fn terminate(server: &mut Child) {
    let pid = libc::pid_t::try_from(server.id()).unwrap();
    // SAFETY: `kill` only sends a signal to the child process we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(server.wait().unwrap().success(), "graceful exit");
}

/// What the clients know: acknowledged items, acknowledged deletes, and writes or deletes whose
/// answer a kill cut off (either outcome is allowed for those).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, Acked>,
    deleted: BTreeSet<String>,
    in_doubt: BTreeSet<String>,
}

/// One item checked in full: present, intact, and found by the index with its own vector.
fn check_item(
    client: &reqwest::blocking::Client,
    base: &str,
    round: usize,
    id: &str,
    item: &Acked,
) {
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
        .json(&json!({"query": {"item": id}, "k": 5, "ef_search": 256}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // The item's stored vector finds the item itself through the graph (score 1;
    // near-identical items may tie with it, hence the top 5). The walk is widened: at the
    // default ef_search = 64 the graph of these near-duplicate texts once missed an item's
    // own vector in about 9,000 checks: approximate search, not a lost item.
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

/// The collection's item count (store) and the indexed vectors (`/metrics`).
fn counts(client: &reqwest::blocking::Client, base: &str) -> (usize, usize) {
    let info: Value = client
        .get(format!("{base}/v1/collections/c"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let indexed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("omnibind_indexed_items "))
        .expect("indexed items gauge")
        .trim()
        .parse()
        .unwrap();
    (info["total"].as_u64().unwrap() as usize, indexed)
}

/// Checks every invariant after a restart: `all` checks every acknowledged item in full,
/// otherwise a random sample.
fn check_all(
    client: &reqwest::blocking::Client,
    base: &str,
    round: usize,
    ledger: &Ledger,
    all: bool,
    rng: &mut rand::rngs::StdRng,
) -> usize {
    let mut ids: Vec<&String> = ledger.acked.keys().collect();
    if !all {
        for i in 0..ids.len().min(SAMPLE) {
            let j = rng.random_range(i..ids.len());
            ids.swap(i, j);
        }
        ids.truncate(SAMPLE);
    }
    for id in &ids {
        check_item(client, base, round, id, &ledger.acked[*id]);
    }
    // Acknowledged deletes stay deleted.
    for id in ledger
        .deleted
        .iter()
        .take(if all { usize::MAX } else { SAMPLE })
    {
        let r = client
            .get(format!("{base}/v1/collections/c/items/{id}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "round {round}: deleted item {id} is back");
    }
    // Store and index agree, and hold what was acknowledged, plus at most the writes in doubt.
    let (total, indexed) = counts(client, base);
    assert_eq!(total, indexed, "round {round}: store and index disagree");
    let (lo, hi) = (
        ledger.acked.len(),
        ledger.acked.len() + ledger.in_doubt.len(),
    );
    assert!(
        (lo..=hi).contains(&total),
        "round {round}: {total} items, expected {lo}..={hi}"
    );
    ids.len()
}

#[test]
fn acknowledged_writes_survive_sigkill_loops() {
    let kills = kills();
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
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let counter = Arc::new(AtomicUsize::new(0));
    let searches = Arc::new(AtomicUsize::new(0));
    let mut restart_times = Vec::new();
    let mut checked = 0usize;

    for round in 0..=kills {
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
        checked += check_all(
            &client,
            &base,
            round,
            &ledger.lock().unwrap(),
            round == kills,
            &mut rng,
        );
        if round == kills {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        // Writers, a deleter and a searcher until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..WRITERS {
            let (client, base, ledger, stop) =
                (client.clone(), base.clone(), ledger.clone(), stop.clone());
            let counter = counter.clone();
            threads.push(std::thread::spawn(move || {
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
                    ledger.lock().unwrap().in_doubt.insert(id.clone());
                    match req.send() {
                        Ok(r) if r.status().is_success() => {
                            // A response cut off by the kill is no acknowledgement.
                            let Ok(v) = r.json::<Value>() else { break };
                            assert_eq!(v["items"][0]["status"], "created", "{v}");
                            let mut l = ledger.lock().unwrap();
                            l.in_doubt.remove(&id);
                            l.acked.insert(id, Acked { content, metadata });
                        }
                        Ok(r) if r.status().as_u16() == 503 => {
                            ledger.lock().unwrap().in_doubt.remove(&id);
                        }
                        Ok(r) => panic!(
                            "upload failed: {} {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        ),
                        Err(_) => break, // the server is gone; the write stays in doubt
                    }
                }
            }));
        }
        {
            let (client, base, ledger, stop) =
                (client.clone(), base.clone(), ledger.clone(), stop.clone());
            let seed = rng.random::<u64>();
            threads.push(std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
                    // Delete one acknowledged item in five.
                    let id = {
                        let mut l = ledger.lock().unwrap();
                        if l.acked.len() < 5 || rng.random_range(0..5) != 0 {
                            continue;
                        }
                        let k = rng.random_range(0..l.acked.len());
                        let id = l.acked.keys().nth(k).unwrap().clone();
                        // Until its answer comes, the item may or may not be there.
                        l.acked.remove(&id);
                        l.in_doubt.insert(id.clone());
                        id
                    };
                    match client
                        .delete(format!("{base}/v1/collections/c/items/{id}"))
                        .send()
                    {
                        Ok(r) if r.status().as_u16() == 204 => {
                            let mut l = ledger.lock().unwrap();
                            l.in_doubt.remove(&id);
                            l.deleted.insert(id);
                        }
                        Ok(r) => panic!("delete of acknowledged {id}: {}", r.status()),
                        Err(_) => break,
                    }
                }
            }));
        }
        {
            let (client, base, ledger, stop) =
                (client.clone(), base.clone(), ledger.clone(), stop.clone());
            let searches = searches.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Deletes acknowledged before the search is sent must not be returned.
                    let gone = ledger.lock().unwrap().deleted.clone();
                    let r = client
                        .post(format!("{base}/v1/collections/c/search"))
                        .json(&json!({"query": "writer item", "k": 50}))
                        .send();
                    let Ok(r) = r else { break };
                    if r.status().as_u16() == 503 {
                        continue;
                    }
                    assert!(r.status().is_success(), "search: {}", r.status());
                    let Ok(v) = r.json::<Value>() else { break };
                    for h in v["hits"].as_array().unwrap() {
                        let id = h["id"].as_str().unwrap();
                        assert!(!gone.contains(id), "search returned deleted item {id}");
                    }
                    searches.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..700)));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
    }

    // Damaged index dumps: truncated, then overwritten with garbage. The server rebuilds the
    // index from the store and serves every item. First a graceful start and stop, which writes
    // the dumps (the killed servers rarely lived the 30 s between periodic dumps).
    let port = free_port();
    let mut server = start(&config, &data, port);
    wait_ready(&client, &format!("http://127.0.0.1:{port}"));
    terminate(&mut server);
    let dump_files = || -> Vec<std::path::PathBuf> {
        walkdir::WalkDir::new(&data)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| p.components().any(|c| c.as_os_str() == "index"))
            .collect()
    };
    let mut damaged = 0;
    let ledger = ledger.lock().unwrap();
    for (k, damage) in ["truncate", "garbage"].into_iter().enumerate() {
        let dumps = dump_files();
        assert!(!dumps.is_empty(), "no index dumps were written");
        damaged += dumps.len();
        for d in &dumps {
            let len = std::fs::metadata(d).unwrap().len();
            match damage {
                "truncate" => std::fs::OpenOptions::new()
                    .write(true)
                    .open(d)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap(),
                _ => std::fs::write(d, vec![0xA5u8; len.max(64) as usize]).unwrap(),
            }
        }
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut server = start(&config, &data, port);
        wait_ready(&client, &base);
        check_all(&client, &base, kills + 1 + k, &ledger, true, &mut rng);
        // A graceful stop writes fresh dumps for the next damage.
        terminate(&mut server);
    }

    let n = ledger.acked.len();
    restart_times.sort();
    eprintln!(
        "crash test: {kills} SIGKILLs with {WRITERS} writers, a deleter and a searcher; \
         {} writes acknowledged, {n} items alive and {} deletes acknowledged at the end, \
         {checked} item checks after restarts, {} searches, 0 lost, 0 resurrected; index dumps \
         ({} files in two rounds) truncated and corrupted: rebuilt; restart-to-ready median {:?}, max {:?}",
        n + ledger.deleted.len(),
        ledger.deleted.len(),
        searches.load(Ordering::Relaxed),
        damaged,
        restart_times[restart_times.len() / 2],
        restart_times.last().unwrap()
    );
    assert!(
        n >= 50 && !ledger.deleted.is_empty(),
        "too little acknowledged to mean anything: {n} items, {} deletes",
        ledger.deleted.len()
    );
}
