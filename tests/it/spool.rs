//! Multipart files are written to the upload spool (`<data_dir>/spool`) while they arrive rather
//! than held in memory, and the spool is empty again once the request is done with them:
//! answered, refused for its size, or abandoned by the client half-way.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::server::{assert_error, parse_answer, raw_request, TestServer};

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
