//! Multipart files are written to the upload spool (`<data_dir>/spool`) while they arrive rather
//! than held in memory, and the spool is empty again once the request is done with them:
//! answered, refused for its size, or abandoned by the client half-way.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::server::{answer, assert_error, parse_answer, raw_request, TestServer};

const BOUNDARY: &str = "spool-test-boundary";

/// A PNG of seeded noise (it does not compress, so its size is about 3 bytes per pixel).
fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.random::<[u8; 3]>()));
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

/// The body of a form with one `file` field holding `bytes`, as (before, bytes, after).
fn one_file_form(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let before = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let after = format!("\r\n--{BOUNDARY}--\r\n");
    (before.into_bytes(), bytes.to_vec(), after.into_bytes())
}

fn post_head(path: &str, length: Option<usize>) -> String {
    let length = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{length}\r\n"
    )
}

/// Sends the head of an upload of the form `[before, file, after]` with its length, the part
/// before the file, and the first `sent` bytes of the file.
fn start_upload(server: &TestServer, form: [&[u8]; 3], sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let length: usize = form.iter().map(|p| p.len()).sum();
    stream
        .write_all(post_head("/v1/collections/c/items", Some(length)).as_bytes())
        .unwrap();
    stream.write_all(form[0]).unwrap();
    stream.write_all(&form[1][..sent]).unwrap();
    stream.flush().unwrap();
    stream
}

/// The files in the spool with their sizes.
fn spooled(spool: &Path) -> Vec<(PathBuf, u64)> {
    match std::fs::read_dir(spool) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.unwrap();
                (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_answer(mut stream: TcpStream) -> (u16, serde_json::Value) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    parse_answer(&got)
}

#[test]
fn an_uploaded_file_is_spooled_to_disk_as_it_arrives_and_stored_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let spool = dir.path().join("spool");
    let png = noise_png(1024, 1024);
    assert!(png.len() > 3_000_000, "{}", png.len());
    let (before, file, after) = one_file_form(&png);
    let half = file.len() / 2;

    let mut stream = start_upload(&server, [&before, &file, &after], half);
    // Half the file sent, the rest held back: what arrived is in a spool file (all but the
    // last write buffer), not waiting in memory for the whole body.
    wait_until("the first half reaches the spool", || {
        spooled(&spool)
            .iter()
            .any(|(_, n)| *n as usize >= half - 300 * 1024)
    });
    stream.write_all(&file[half..]).unwrap();
    stream.write_all(&after).unwrap();
    let (s, v) = read_answer(stream);
    assert_eq!(
        (s, v["items"][0]["status"].as_str()),
        (200, Some("created")),
        "{v}"
    );

    // The spool file is gone; the stored original is the upload, byte for byte.
    assert_eq!(spooled(&spool), Vec::new());
    let id = v["items"][0]["id"].as_str().unwrap();
    let r = server
        .http
        .get(server.url(&format!("/v1/collections/c/items/{id}/content")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().as_ref() == png.as_slice());
    // And it is searchable by the same file, from memory this time (a JSON-free form).
    let (s, v) = server.post_form(
        "/v1/collections/c/search",
        reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(png.clone()).file_name("q.png"),
        ),
    );
    assert_eq!((s, v["hits"][0]["id"].as_str()), (200, Some(id)), "{v}");
    assert_eq!(spooled(&spool), Vec::new());
}

#[test]
fn abandoned_and_oversize_uploads_leave_nothing_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let server = TestServer::start_with(dir.path(), |s| s.server.upload_limit = limit);
    server.create("c");
    let spool = dir.path().join("spool");
    let png = noise_png(400, 400);
    assert!(png.len() > 400_000 && png.len() < limit, "{}", png.len());

    // A client that goes away half-way through its file.
    let (before, file, after) = one_file_form(&png);
    let stream = start_upload(&server, [&before, &file, &after], file.len() - 1000);
    wait_until("the received part reaches the spool", || {
        !spooled(&spool).is_empty()
    });
    drop(stream);
    wait_until("the abandoned file is removed", || {
        spooled(&spool).is_empty()
    });

    // A file over the upload limit, sent without a declared length: refused once its bytes
    // are counted past the limit, and the part already spooled is removed.
    let big = noise_png(700, 700);
    assert!(big.len() > limit, "{}", big.len());
    let (before, file, after) = one_file_form(&big);
    let mut chunked = Vec::new();
    for part in [before.as_slice(), file.as_slice(), after.as_slice()] {
        for piece in part.chunks(64 * 1024) {
            write!(chunked, "{:x}\r\n", piece.len()).unwrap();
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_error(
        raw_request(
            server.addr,
            post_head("/v1/collections/c/items", None),
            chunked,
        ),
        413,
        "payload_too_large",
    );
    wait_until("the refused file is removed", || spooled(&spool).is_empty());

    // Nothing was stored, and the server still takes a file within the limit.
    let (s, v) = server.get("/v1/collections/c");
    assert_eq!((s, v["total"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) = server.post_form(
        "/v1/collections/c/items",
        reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(png).file_name("ok.png"),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(spooled(&spool), Vec::new());
}

#[test]
fn leftovers_in_the_spool_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("upload-left-by-a-crash"), vec![0u8; 4096]).unwrap();
    let server = TestServer::start(dir.path());
    assert_eq!(spooled(&spool), Vec::new());
    drop(server);
}

#[test]
fn a_form_over_the_item_limit_is_refused_and_its_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let mut form = reqwest::blocking::multipart::Form::new();
    for i in 0..1100 {
        form = form.part(
            "file",
            reqwest::blocking::multipart::Part::bytes(format!("note {i}").into_bytes())
                .file_name("n.txt"),
        );
    }
    let (s, v) = server.post_form("/v1/collections/c/items", form);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1024"),
        "{v}"
    );
    assert_eq!(spooled(&dir.path().join("spool")), Vec::new());
    let (s, v) = server.get("/v1/collections/c");
    assert_eq!((s, v["total"].as_u64()), (200, Some(0)), "{v}");
}

#[test]
fn one_client_holds_at_most_its_spool_quota_and_other_clients_still_get_through() {
    const ADMIN: &str = "admin-key-for-tests-0001";
    const READ: &str = "read-key-for-tests-0002";
    let dir = tempfile::tempdir().unwrap();
    let limit: usize = 1 << 20;
    let server = TestServer::start_with(dir.path(), |s| {
        s.auth.admin_key = Some(ADMIN.into());
        s.auth.read_key = Some(READ.into());
        s.server.upload_limit = limit;
        s.server.spool_per_client = 2 * limit as u64;
        s.server.spool_total = 8 * limit as u64;
    });
    let (s, v) = answer(
        server
            .http
            .post(server.url("/v1/collections"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .json(&serde_json::json!({"name": "c", "model": "default"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 201, "{v}");
    let spool = dir.path().join("spool");
    let png = noise_png(500, 500);
    assert!(png.len() > 700_000 && png.len() < limit, "{}", png.len());
    let (before, file, after) = one_file_form(&png);
    let length = before.len() + file.len() + after.len();
    // Slow uploads from one client: each sends 700 KB of its file and holds the rest back.
    let start = |key: &str, path: &str| {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let head = post_head(path, Some(length)).replace(
            "Host: x\r\n",
            &format!("Host: x\r\nAuthorization: Bearer {key}\r\n"),
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&before).unwrap();
        stream.write_all(&file[..700_000]).unwrap();
        stream.flush().unwrap();
        stream
    };
    let first = start(ADMIN, "/v1/collections/c/items");
    let second = start(ADMIN, "/v1/collections/c/items");
    // Each file is on disk but for its last write buffer (256 KiB).
    wait_until("two uploads reach the spool", || {
        let files = spooled(&spool);
        files.len() == 2 && files.iter().all(|(_, n)| *n >= 700_000 - 256 * 1024)
    });
    std::thread::sleep(Duration::from_millis(200));
    // A third would take the client past 2 MiB: refused with 503 and Retry-After while the
    // first two are still in progress, and its spooled part removed.
    let mut third = start(ADMIN, "/v1/collections/c/items");
    third.write_all(&file[700_000..]).unwrap();
    third.write_all(&after).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("\r\nretry-after: 5\r\n"), "{text}");
    assert_error(parse_answer(&got), 503, "overloaded");
    // Another client (the read key) is not held to the first one's quota.
    let (s, v) = answer(
        server
            .http
            .post(server.url("/v1/embed"))
            .header("authorization", format!("Bearer {READ}"))
            .multipart(
                reqwest::blocking::multipart::Form::new()
                    .text("model", "default")
                    .part(
                        "file",
                        reqwest::blocking::multipart::Part::bytes(png.clone()).file_name("q.png"),
                    ),
            )
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    // Once the first client's uploads end, its quota is free again.
    drop(first);
    drop(second);
    wait_until("the abandoned files are removed", || {
        spooled(&spool).is_empty()
    });
    let mut again = start(ADMIN, "/v1/collections/c/items");
    again.write_all(&file[700_000..]).unwrap();
    again.write_all(&after).unwrap();
    let (s, v) = read_answer(again);
    assert_eq!(
        (s, v["items"][0]["status"].as_str()),
        (200, Some("created")),
        "{v}"
    );
}

#[test]
fn originals_are_streamed_with_ranges_and_validators() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create("c");
    let png = noise_png(300, 300);
    let (s, v) = server.post_form(
        "/v1/collections/c/items",
        reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(png.clone()).file_name("x.png"),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let id = v["items"][0]["id"].as_str().unwrap().to_string();
    let (_, item) = server.get(&format!("/v1/collections/c/items/{id}"));
    let etag = format!("\"{}\"", item["content_sha256"].as_str().unwrap());
    let url = server.url(&format!("/v1/collections/c/items/{id}/content"));
    let get = |headers: &[(&str, &str)]| {
        let mut r = server.http.get(&url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().unwrap()
    };

    let r = get(&[]);
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["etag"], etag.as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "default-src 'none'; sandbox");
    assert_eq!(h["content-length"], png.len().to_string().as_str());
    assert!(h.contains_key("last-modified"));
    assert!(r.bytes().unwrap().as_ref() == png.as_slice());

    // One range.
    let r = get(&[("range", "bytes=100-199")]);
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", png.len()).as_str()
    );
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.bytes().unwrap().as_ref() == &png[100..200]);
    // A range for other content (If-Range with another tag): the whole file.
    let r = get(&[("range", "bytes=100-199"), ("if-range", "\"0000\"")]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().len(), png.len());
    let r = get(&[("range", "bytes=100-199"), ("if-range", etag.as_str())]);
    assert_eq!(r.status(), 206);
    // A range outside the content.
    let r = get(&[("range", "bytes=99999999-")]);
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", png.len()).as_str()
    );
    let (_, v) = answer(r);
    assert_eq!(v["error"]["code"], "range_not_satisfiable", "{v}");
    // The client's copy is current.
    let r = get(&[("if-none-match", etag.as_str())]);
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().unwrap().is_empty());
    assert_eq!(get(&[("if-none-match", "\"0000\"")]).status(), 200);
}
