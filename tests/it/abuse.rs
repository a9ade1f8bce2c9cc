//! Hostile input over HTTP against a real server: a body that never arrives, an image that
//! claims to be enormous, a file name that climbs out of the data directory, content that is
//! not what it says, a file that makes a decoder panic, a burst over the rate limit. (Oversize bodies, wrong content types and unknown routes are in
//! `server.rs`; API keys in `auth.rs`.) Every answer is a 4xx with the API's error body, and
//! the server keeps serving.

use std::io::Write;

use reqwest::blocking::multipart;
use serde_json::json;

use crate::server::{assert_error, file_part, raw_request, TestServer};

/// Appends a PNG chunk: its length, kind, data and CRC.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG of `width` x `height` RGB pixels whose data is a few bytes: the header alone says how
/// much memory a decoder would need.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    png_chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&[0u8; 64]).unwrap();
    png_chunk(&mut png, b"IDAT", &z.finish().unwrap());
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// Whether the JPEG decoder's AVX2 upsampler (the one that panics on the fuzzer's file) runs.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[test]
fn hostile_inputs_get_a_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| s.server.request_timeout_s = 5);
    server.create("c");
    let items = "/v1/collections/c/items";

    // A body that never arrives (declared 100 bytes, 1 sent): 408 after the request timeout.
    let t = std::time::Instant::now();
    let head = format!(
        "POST {items} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n"
    );
    assert_error(
        raw_request(server.addr, head, b"{".to_vec()),
        408,
        "request_timeout",
    );
    assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());

    // A decompression bomb: a tiny PNG claiming 50,000 x 50,000 pixels (7.5 GB of RGB) is
    // refused from its header.
    let bomb = png_claiming(50_000, 50_000);
    assert!(bomb.len() < 100, "{} bytes", bomb.len());
    let (s, v) = server.post_form(
        items,
        multipart::Form::new().part("file", file_part(bomb, "bomb.png")),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_media")),
        "{v}"
    );
    // The same as a search query and an embedding.
    let (s, _) = server.post_form(
        "/v1/collections/c/search",
        multipart::Form::new().part("file", file_part(png_claiming(50_000, 50_000), "q.png")),
    );
    assert_eq!(s, 400);
    let (s, v) = server.post_form(
        "/v1/embed",
        multipart::Form::new()
            .part("file", file_part(png_claiming(50_000, 50_000), "q.png"))
            .text("model", "default"),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_media")),
        "{v}"
    );

    // A file name that climbs out of the data directory is ignored: the text is stored as an
    // item like any other, served back, and nothing is written beside the data directory.
    let outside = dir.path().parent().unwrap().join("escaped.txt");
    let _ = std::fs::remove_file(&outside);
    let (s, v) = server.post_form(
        items,
        multipart::Form::new().part("file", file_part(b"a note".to_vec(), "../../escaped.txt")),
    );
    assert_eq!(s, 200, "{v}");
    let id = v["items"][0]["id"].as_str().unwrap().to_string();
    let r = server
        .http
        .get(server.url(&format!("{items}/{id}/content")))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"a note");
    assert!(!outside.exists());
    assert!(!dir.path().join("escaped.txt").exists());

    // Content that is not what it claims: HTML named .png, and an SVG (never accepted as an
    // image: it can carry script).
    for (bytes, name) in [
        (b"<html><script>alert(1)</script></html>".to_vec(), "x.png"),
        (
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec(),
            "x.svg",
        ),
    ] {
        let form = multipart::Form::new()
            .part("file", file_part(bytes, name))
            .text("modality", "image");
        let (s, v) = server.post_form(items, form);
        assert!(
            (400..500).contains(&s) && v["error"]["code"].is_string(),
            "{name}: {s} {v}"
        );
    }

    // A malformed progressive JPEG on which the JPEG decoder itself panics (found by the
    // fuzzer, kept in its seeds): a 400 for that file, as an item, a query and an embedding,
    // not a 500.
    let crasher = include_bytes!("../../fuzz/seeds/image/jpeg_regress_upsampler_panic");
    for path in [items, "/v1/collections/c/search", "/v1/embed"] {
        let mut form = multipart::Form::new().part("file", file_part(crasher.to_vec(), "x.jpg"));
        if path == "/v1/embed" {
            form = form.text("model", "default");
        }
        let (s, v) = server.post_form(path, form);
        if avx2() {
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some("invalid_media")),
                "{path}: {v}"
            );
        } else {
            // The scalar upsampler may decode it: any answer but a 500, and no item left over.
            assert_ne!(s, 500, "{path}: {v}");
            if let (200, Some(id)) = (s, v["items"][0]["id"].as_str()) {
                server.delete(&format!("{items}/{id}"));
            }
        }
    }

    // Still serving.
    let (s, v) = server.get("/v1/collections/c");
    assert_eq!((s, v["total"].as_u64()), (200, Some(1)), "{v}");
    let (s, _) = server.post(
        "/v1/collections/c/search",
        &json!({"query": {"text": "a note"}, "k": 1}),
    );
    assert_eq!(s, 200);
}

#[test]
fn a_burst_over_the_rate_limit_gets_429_per_client() {
    const ADMIN: &str = "admin-key-for-limits-01";
    const READ: &str = "read-key-for-limits-002";
    let dir = tempfile::tempdir().unwrap();
    // One request per 100 s after a burst of 3: nothing refills during the test.
    let server = TestServer::start_with(dir.path(), |s| {
        s.server.rate_limit_per_s = 0.01;
        s.server.rate_limit_burst = 3;
        s.auth.admin_key = Some(ADMIN.into());
        s.auth.read_key = Some(READ.into());
    });
    let get = |key: Option<&str>| {
        crate::auth::with_key(server.http.get(server.url("/v1/collections")), key)
            .send()
            .unwrap()
    };
    // Public routes are never limited.
    for _ in 0..10 {
        assert_eq!(
            server
                .http
                .get(server.url("/healthz"))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    // Without a key (or with a wrong one) the address is the client: 3 answers, then 429.
    let statuses: Vec<u16> = (0..5).map(|_| get(None).status().as_u16()).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let r = get(Some("a-wrong-key-0000000000"));
    assert_eq!(r.status(), 429, "guessing keys counts against the address");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    let (_, v) = crate::server::answer(r);
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    // Each valid key has its own bucket.
    for key in [ADMIN, READ] {
        let statuses: Vec<u16> = (0..4).map(|_| get(Some(key)).status().as_u16()).collect();
        assert_eq!(statuses, [200, 200, 200, 429], "{key}");
    }
}

/// A valid 1-bit greyscale PNG of `width` x `height` black pixels (a few kilobytes).
fn one_bit_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; 1 + (width as usize).div_ceil(8)];
    for _ in 0..height {
        z.write_all(&row).unwrap();
    }
    png_chunk(&mut png, b"IDAT", &z.finish().unwrap());
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A FLAC of `channels` channels of 16-bit silence at 44.1 kHz whose STREAMINFO claims
/// `claimed` samples per channel, with `blocks` frames of 4096 samples (CONSTANT subframes).
fn flac_silence(channels: u8, claimed: u64, blocks: u32) -> Vec<u8> {
    fn crc8(data: &[u8]) -> u8 {
        data.iter().fold(0u8, |mut c, &b| {
            c ^= b;
            for _ in 0..8 {
                c = if c & 0x80 != 0 {
                    (c << 1) ^ 0x07
                } else {
                    c << 1
                };
            }
            c
        })
    }
    fn crc16(data: &[u8]) -> u16 {
        data.iter().fold(0u16, |mut c, &b| {
            c ^= (b as u16) << 8;
            for _ in 0..8 {
                c = if c & 0x8000 != 0 {
                    (c << 1) ^ 0x8005
                } else {
                    c << 1
                };
            }
            c
        })
    }
    let mut f = b"fLaC\x80\x00\x00\x22".to_vec();
    f.extend_from_slice(&[0x10, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    let packed: u64 = (44_100u64 << 44) | (((channels - 1) as u64) << 41) | (15u64 << 36) | claimed;
    f.extend_from_slice(&packed.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    for n in 0..blocks {
        let mut frame = vec![0xff, 0xf8, 0xc9, ((channels - 1) << 4) | 0x08];
        if n < 0x80 {
            frame.push(n as u8);
        } else if n < 0x800 {
            frame.extend_from_slice(&[0xc0 | (n >> 6) as u8, 0x80 | (n & 0x3f) as u8]);
        } else {
            let (hi, mid, lo) = ((n >> 12) as u8, (n >> 6 & 0x3f) as u8, (n & 0x3f) as u8);
            frame.extend_from_slice(&[0xe0 | hi, 0x80 | mid, 0x80 | lo]);
        }
        frame.push(crc8(&frame));
        frame.extend(std::iter::repeat_n(0u8, 3 * channels as usize));
        let crc = crc16(&frame);
        f.extend_from_slice(&frame);
        f.extend_from_slice(&crc.to_be_bytes());
    }
    f
}

/// Weakness #4 of the review: small files that decode to gigabytes. A 1-bit PNG of 16384 x
/// 16384 pixels (16 KB here) went through `/v1/embed` with a 200 after a gigabyte of decoding:
/// it is refused from its header with `400 invalid_media` naming the limit. A FLAC of 8 channels
/// and 20 minutes (440 KB) made the server hold 2.4 GB: it is embedded, keeping only the
/// seconds its clips read. The server keeps serving.
#[test]
fn files_decoding_past_the_memory_budget_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        s.models.push(crate::server::imagebind_spec());
    });
    let png = one_bit_png(16_384, 16_384);
    assert!(png.len() < 64 << 10, "{} bytes", png.len());
    for model in ["default", "imagebind"] {
        let t = std::time::Instant::now();
        let (s, v) = server.post_form(
            "/v1/embed",
            multipart::Form::new()
                .part("file", file_part(png.clone(), "bomb.png"))
                .text("model", model),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_media")),
            "{model}: {v}"
        );
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("over the limit of 512 MiB"), "{m}");
        assert!(t.elapsed().as_secs() < 10, "{model}: {:?}", t.elapsed());
    }
    let blocks = 20 * 60 * 44_100 / 4096;
    let flac = flac_silence(8, blocks as u64 * 4096, blocks);
    let (s, v) = server.post_form(
        "/v1/embed",
        multipart::Form::new()
            .part("file", file_part(flac, "long.flac"))
            .text("model", "imagebind"),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = server.post(
        "/v1/embed",
        &json!({"model": "default", "text": "still here"}),
    );
    assert_eq!(s, 200);
}
