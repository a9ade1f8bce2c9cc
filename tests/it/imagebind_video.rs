//! Video input (ZIP archives of frames) against the official ImageBind video pipeline, on the
//! fixtures of `tests/fixtures/imagebind/make_video_fixtures.py`.

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use omnibind::embed::preprocess::video::{self, FrameArchive};
use omnibind::embed::{load_encoder, EmbedError, Input, Modality, ModelSpec};

use crate::common::{cosine, fixtures, load_tensors, max_abs_diff};

const VIDEOS: [&str; 3] = [
    "squares_320x240_24fps",
    "tiny_3frames_200x150",
    "portrait_180x320_10fps",
];
/// Rows and columns of the stored input subset (`SUB` in the fixture script) and the full row.
const SUB: std::ops::Range<usize> = 3..224;
const SUB_STEP: usize = 8;
const ROW: usize = 101;

const INPUT_MAX_ABS: f32 = 1e-5;
const EMB_MAX_ABS: f32 = 1e-4;
const EMB_MIN_COS: f32 = 0.9999;

fn dir() -> PathBuf {
    fixtures().join("imagebind")
}

fn zip_bytes(name: &str) -> Vec<u8> {
    std::fs::read(dir().join("video").join(format!("{name}.zip"))).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn flat_u32(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

#[test]
fn frame_sampling_matches_framevideo() {
    let refs = load_tensors(&dir().join("reference/video.safetensors.gz"));
    let fps = refs["sampling.fps"].to_vec1::<f64>().unwrap();
    let table = flat_u32(&refs["sampling.frames"]);
    let max_n = table.len() / fps.len() / 10;
    let mut checked = 0;
    for (a, &f) in fps.iter().enumerate() {
        for n in 1..=max_n {
            let ours: Vec<u32> = video::sampled_frames(n, f)
                .unwrap()
                .into_iter()
                .flatten()
                .map(|i| i as u32)
                .collect();
            let at = (a * max_n + n - 1) * 10;
            assert_eq!(ours, table[at..at + 10], "{n} frames at {f} fps");
            checked += 1;
        }
    }
    assert!(checked >= 2000, "{checked}");
}

#[test]
fn archives_are_read_in_natural_order() {
    let bytes = zip_bytes("squares_320x240_24fps");
    let a = FrameArchive::open(&bytes).unwrap();
    assert_eq!(a.fps(), 24.0);
    let names: Vec<&str> = a.names().collect();
    let want: Vec<String> = (1..=60).map(|i| format!("frame{i}.png")).collect();
    assert_eq!(names, want);
    let bytes = zip_bytes("tiny_3frames_200x150");
    let a = FrameArchive::open(&bytes).unwrap();
    assert_eq!(a.fps(), video::DEFAULT_FPS);
    assert_eq!(
        a.names().collect::<Vec<_>>(),
        ["clip/0.png", "clip/1.png", "clip/2.png"]
    );
}

#[test]
fn preprocessing_matches_the_official_pipeline() {
    let refs = load_tensors(&dir().join("reference/video.safetensors.gz"));
    let plane = video::SIZE * video::SIZE;
    for name in VIDEOS {
        let bytes = zip_bytes(name);
        let a = FrameArchive::open(&bytes).unwrap();
        let frames: Vec<u32> = video::sampled_frames(a.len(), a.fps())
            .unwrap()
            .into_iter()
            .flatten()
            .map(|i| i as u32)
            .collect();
        assert_eq!(frames, flat_u32(&refs[&format!("{name}.frames")]), "{name}");

        let start = Instant::now();
        let x = video::preprocess(&bytes).unwrap();
        let took = start.elapsed();
        assert_eq!(x.len(), video::INPUT_LEN);
        let planes = x.len() / plane;
        let idx: Vec<usize> = SUB.step_by(SUB_STEP).collect();
        let mut sub = Vec::new();
        let mut row = Vec::new();
        let mut sums = Vec::new();
        for p in 0..planes {
            let pl = &x[p * plane..(p + 1) * plane];
            for &y in &idx {
                for &xx in &idx {
                    sub.push(pl[y * video::SIZE + xx]);
                }
            }
            row.extend_from_slice(&pl[ROW * video::SIZE..(ROW + 1) * video::SIZE]);
            sums.push(pl.iter().map(|&v| v as f64).sum::<f64>());
        }
        let d_sub = max_abs_diff(&sub, &flat(&refs[&format!("{name}.input_sub")]));
        let d_row = max_abs_diff(&row, &flat(&refs[&format!("{name}.input_row")]));
        let ref_sums = refs[&format!("{name}.input_sum")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let d_sum = sums
            .iter()
            .zip(&ref_sums)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{name}: input max abs diff {d_sub:.2e} (subset), {d_row:.2e} (row {ROW}), plane sums {d_sum:.2e}; preprocessing {took:?}"
        );
        assert!(d_sub <= INPUT_MAX_ABS && d_row <= INPUT_MAX_ABS, "{name}");
        // A plane sums 50,176 values: each may differ by an f32 rounding.
        assert!(d_sum < 1e-2, "{name}: plane sums differ by {d_sum}");
    }
}

#[test]
fn video_embeddings_match_the_official_model() {
    let refs = load_tensors(&dir().join("reference/video.safetensors.gz"));
    let model_dir = dir().join("models/imagebind-tiny");
    let enc = load_encoder(&ModelSpec::new(
        "imagebind-tiny",
        model_dir.to_str().unwrap(),
    ))
    .unwrap();
    assert!(enc.modalities().contains(&Modality::Video));
    assert!(enc.info().modalities.contains(&Modality::Video));
    let inputs: Vec<Input> = VIDEOS
        .iter()
        .map(|n| Input::Bytes {
            modality: Modality::Video,
            bytes: zip_bytes(n).into(),
        })
        .collect();
    let start = Instant::now();
    let out = enc.embed_batch(&inputs).unwrap();
    println!(
        "{} videos embedded in {:?} (tiny model, preprocessing included)",
        VIDEOS.len(),
        start.elapsed()
    );
    for (name, got) in VIDEOS.iter().zip(out) {
        let got = got.unwrap();
        let mut want = flat(&refs[&format!("{name}.output")]);
        let n = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        want.iter_mut().for_each(|v| *v /= n);
        let (c, d) = (cosine(&got, &want), max_abs_diff(&got, &want));
        println!("{name}: cosine {c:.7}, max abs diff {d:.2e}");
        assert!(
            c >= EMB_MIN_COS && d <= EMB_MAX_ABS,
            "{name}: cos {c}, max abs {d}"
        );
    }
    // One video alone gives the vector it gets in a batch.
    let one = enc.embed_one(&inputs[1]).unwrap();
    let again = enc.embed_batch(&inputs[1..2]).unwrap().remove(0).unwrap();
    assert_eq!(one, again);
}

pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap();
    }
    buf.into_inner()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Sets the uncompressed size of every central-directory entry.
fn patch_declared_size(zip: &mut [u8], size: u32) {
    let mut i = 0;
    let mut n = 0;
    while i + 46 <= zip.len() {
        if zip[i..i + 4] == *b"PK\x01\x02" {
            zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
            n += 1;
        }
        i += 1;
    }
    assert!(n > 0);
}

fn err(bytes: &[u8]) -> String {
    let e = video::preprocess(bytes).unwrap_err();
    assert!(
        matches!(
            e,
            EmbedError::InvalidInput(_) | EmbedError::Decode(_) | EmbedError::UnsupportedFormat(_)
        ),
        "{e:?}"
    );
    e.to_string()
}

#[test]
fn malformed_archives_are_refused_with_clear_errors() {
    let frame = png(64, 48);
    let e = err(&zip_of(&[]));
    assert!(e.contains("no frames"), "{e}");
    let e = err(&zip_of(&[("notes.txt", b"hello"), ("dir/", b"")]));
    assert!(e.contains("no frames"), "{e}");
    let e = err(b"just some text renamed to clip.zip");
    assert!(e.contains("ZIP archive"), "{e}");
    let e = err(&frame);
    assert!(e.contains("ZIP archive"), "{e}");
    // A corrupt PNG as the first frame (every clip keeps frame 0 of a short video).
    let mut bad = frame.clone();
    bad.truncate(bad.len() / 2);
    let e = err(&zip_of(&[("f0.png", &bad), ("f1.png", &frame)]));
    assert!(e.contains("f0.png"), "{e}");
    // Not an image at all, under an image name.
    let e = err(&zip_of(&[("f0.png", b"plain text")]));
    assert!(e.contains("f0.png"), "{e}");
    // Frames of different sizes.
    let e = err(&zip_of(&[("f0.png", &frame), ("f1.png", &png(48, 64))]));
    assert!(e.contains("differ in size"), "{e}");
    // Frame rates.
    let e = err(&zip_of(&[("f0.png", &frame), ("fps.txt", b"fast")]));
    assert!(e.contains("fps.txt"), "{e}");
    let e = err(&zip_of(&[("f0.png", &frame), ("fps.txt", b"0.1")]));
    assert!(e.contains("outside"), "{e}");
    // A declared size beyond the bound (zip bomb): refused before anything is inflated.
    let mut bomb = zip_of(&[("f0.png", &frame)]);
    patch_declared_size(&mut bomb, 0xFFFF_FFF0);
    let e = err(&bomb);
    assert!(e.contains("MiB accepted"), "{e}");
    // An entry that holds more than it declares: the read is capped at the declared size.
    let mut liar = zip_of(&[("f0.png", &frame)]);
    patch_declared_size(&mut liar, 16);
    let e = err(&liar);
    assert!(e.contains("f0.png") && e.contains("declared"), "{e}");
    // Too many entries.
    let many: Vec<(String, &[u8])> = (0..=video::MAX_ENTRIES)
        .map(|i| (format!("f{i}.txt"), &b""[..]))
        .collect();
    let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let e = err(&zip_of(&refs));
    assert!(e.contains("entries"), "{e}");
    // A valid one for contrast: junk is skipped, one frame is enough.
    let ok = zip_of(&[
        ("__MACOSX/._f0.png", b"junk"),
        (".DS_Store", b"junk"),
        ("f0.png", &frame),
    ]);
    assert_eq!(video::preprocess(&ok).unwrap().len(), video::INPUT_LEN);
}

#[test]
fn video_errors_fail_alone_in_a_batch() {
    let model_dir = dir().join("models/imagebind-tiny");
    let mut spec = ModelSpec::new("imagebind-tiny", model_dir.to_str().unwrap());
    spec.modalities = Some(vec![Modality::Video]);
    let enc = load_encoder(&spec).unwrap();
    assert_eq!(enc.modalities(), &[Modality::Video]);
    let out = enc
        .embed_batch(&[
            Input::Bytes {
                modality: Modality::Video,
                bytes: zip_of(&[]).into(),
            },
            Input::Bytes {
                modality: Modality::Video,
                bytes: zip_bytes("tiny_3frames_200x150").into(),
            },
            Input::Bytes {
                modality: Modality::Image,
                bytes: png(32, 32).into(),
            },
        ])
        .unwrap();
    assert!(out[0].is_err() && out[2].is_err());
    assert_eq!(out[1].as_ref().unwrap().len(), 24);
}

#[test]
fn zip_uploads_to_an_imagebind_collection_are_searchable() {
    use reqwest::blocking::multipart;
    use serde_json::json;

    let data = tempfile::tempdir().unwrap();
    let model_dir = dir().join("models/imagebind-tiny");
    let server = crate::server::TestServer::start_with(data.path(), |s| {
        s.models = vec![ModelSpec::new("default", model_dir.to_str().unwrap())];
    });
    server.create("clips");
    let mut form = multipart::Form::new();
    for name in VIDEOS {
        form = form
            .part(
                "file",
                multipart::Part::bytes(zip_bytes(name)).file_name(format!("{name}.zip")),
            )
            .text("id", name.to_string());
    }
    let (s, v) = server.post_form("/v1/collections/clips/items", form);
    assert_eq!(s, 200, "{v}");
    for item in v["items"].as_array().unwrap() {
        assert_eq!(item["modality"], "video", "{item}");
        assert_eq!(item["status"], "created", "{item}");
    }
    // Detected from its bytes: a video query ranks the same video first.
    let form = multipart::Form::new()
        .part(
            "file",
            multipart::Part::bytes(zip_bytes(VIDEOS[2])).file_name("q.zip"),
        )
        .text("k", "3");
    let (s, v) = server.post_form("/v1/collections/clips/search", form);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], VIDEOS[2], "{v}");
    assert!(v["hits"][0]["score"].as_f64().unwrap() > 0.9999, "{v}");
    // A broken archive is refused with a client error.
    let form = multipart::Form::new()
        .part(
            "file",
            multipart::Part::bytes(zip_of(&[])).file_name("empty.zip"),
        )
        .text("modality", "video");
    let (s, v) = server.post_form("/v1/collections/clips/items", form);
    let status = v["items"][0]["status"].clone();
    assert!(
        (400..500).contains(&s) || status == "error",
        "{s} {v} ({})",
        json!(status)
    );
    server.stop();
}
