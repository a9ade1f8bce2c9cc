//! The whole evaluation with the tiny random ImageBind fixture over the mini OpenMoji dataset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::data::{openmoji, AudioFile, OpenMojiOptions};
use crate::embed::{load_encoder, ModelSpec};

fn encoder() -> Arc<dyn Encoder> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/imagebind/models/imagebind-tiny");
    load_encoder(&ModelSpec::new("imagebind-tiny", dir.to_str().unwrap())).unwrap()
}

/// The mini dataset (224 px, no audio) in a temporary directory.
fn dataset(dir: &Path) -> PathBuf {
    let out = dir.join("ds");
    let mut o = OpenMojiOptions::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openmoji-mini/openmoji-mini-1.0.0.tgz"),
        &out,
    );
    o.audio = false;
    openmoji(&o).unwrap();
    out
}

/// A 1 s 16 kHz mono 16-bit WAV tone.
fn wav(freq: f32) -> Vec<u8> {
    let n = 16_000u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(2 * n).to_le_bytes());
    for i in 0..n {
        let x = (i as f32 * freq * std::f32::consts::TAU / 16_000.0).sin();
        b.extend_from_slice(&((x * 8000.0) as i16).to_le_bytes());
    }
    b
}

fn in_unit(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

#[test]
fn evaluates_every_pair_and_modality_of_the_mini_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let enc = encoder();
    let mut opts = EvalOptions::new(&data);
    opts.split = SplitChoice::All;
    opts.batch_size = 3; // several batches per modality
    let report = evaluate(enc.as_ref(), &opts).unwrap();
    assert_eq!(report.items, 7);
    assert_eq!(report.dim, 24);
    let counts: Vec<(Modality, usize)> = report.vectors.clone().into_iter().collect();
    use Modality::*;
    assert_eq!(
        counts,
        [
            (Text, 7),
            (Image, 7),
            (Audio, 0),
            (Depth, 7),
            (Thermal, 7),
            (Imu, 4)
        ]
    );

    // No audio in the data: 5 modalities, 20 ordered pairs, in table order. Queries: the items
    // with both modalities; gallery: every item with the target modality (IMU queries are
    // ranked against all 7 captions, not only the 4 of the motion items).
    let pairs: Vec<(Modality, Modality, usize, usize, bool)> = report
        .retrieval
        .iter()
        .map(|r| (r.query, r.target, r.n, r.gallery, r.emergent))
        .collect();
    assert_eq!(pairs.len(), 20);
    assert_eq!(pairs[0], (Image, Text, 7, 7, false));
    assert_eq!(pairs[3], (Image, Imu, 4, 4, false));
    assert_eq!(pairs[4], (Text, Image, 7, 7, false));
    assert_eq!(pairs[5], (Text, Depth, 7, 7, true));
    assert_eq!(pairs[16], (Imu, Image, 4, 7, false));
    assert_eq!(pairs[19], (Imu, Thermal, 4, 7, true));
    for r in &report.retrieval {
        assert!(
            in_unit(r.r_at_1) && in_unit(r.r_at_5) && in_unit(r.r_at_10),
            "{r:?}"
        );
        assert!(r.r_at_1 <= r.r_at_5 && r.r_at_5 <= r.r_at_10);
        // Fewer than 10 items: the own item is always within the top 10.
        assert_eq!((r.r_at_10, r.chance_at_10), (1.0, 1.0));
        let imu = r.query == Imu || r.target == Imu;
        assert_eq!(r.class_r_at.is_some(), imu, "{r:?}");
        if let Some(c) = r.class_r_at {
            assert!(c[0] >= r.r_at_1 && c.iter().all(|&x| in_unit(x)));
        }
    }

    assert_eq!(
        report.classes,
        [
            "face-smiling",
            "geometric",
            "person-activity",
            "sky-weather",
            "transport-ground"
        ]
    );
    let rows: Vec<(Modality, usize)> = report
        .classification
        .iter()
        .map(|c| (c.modality, c.n))
        .collect();
    assert_eq!(rows, [(Image, 7), (Depth, 7), (Thermal, 7), (Imu, 4)]);
    for c in &report.classification {
        assert!(in_unit(c.accuracy));
        assert_eq!(c.chance, 0.2);
    }
    // IMU items: 2 person-activity (running), 2 transport-ground (bicycle, car).
    assert_eq!(report.classification[3].majority, 0.5);
    assert_eq!(report.classification[0].majority, 2.0 / 7.0);

    let md = table::markdown(&report);
    assert!(md.contains("| image → text |") && md.contains("| imu → thermal |"));
    assert!(md.starts_with("Model `imagebind-tiny` (24-d) on `"));
    assert!(md.contains("split `all`: 7 items"));
    assert!(md.contains("| thermal | ") && md.contains("\"an emoji of {subgroup}\""));
    assert_eq!(md.lines().filter(|l| l.contains(" → ")).count(), 21);

    // Deterministic, and the JSON carries the same figures.
    let again = evaluate(enc.as_ref(), &opts).unwrap();
    assert_eq!(again.retrieval, report.retrieval);
    assert_eq!(again.classification, report.classification);
    let json = tmp.path().join("eval.json");
    write_json(&report, &json).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["retrieval"].as_array().unwrap().len(), 20);
    assert_eq!(v["retrieval"][0]["query"], "image");
    assert_eq!(v["vectors"]["imu"], 4);
    assert_eq!(v["split"], "all");
}

#[test]
fn split_limit_audio_and_missing_modalities() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    // Give two items a WAV each (16 kHz tones), as the data command would with espeak-ng.
    let manifest = data.join("manifest.jsonl");
    let mut items = read_manifest(&manifest).unwrap();
    std::fs::create_dir_all(data.join("audio")).unwrap();
    for (k, item) in items.iter_mut().take(2).enumerate() {
        let path = format!("audio/{}-0.wav", item.hexcode);
        std::fs::write(data.join(&path), wav(300.0 + 200.0 * k as f32)).unwrap();
        item.audio.push(AudioFile {
            path,
            voice: crate::data::audio::Voice {
                voice: "en".into(),
                rate: 175,
                pitch: 50,
            },
        });
    }
    let text: String = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap() + "\n")
        .collect();
    std::fs::write(&manifest, text).unwrap();

    let enc = encoder();
    let mut opts = EvalOptions::new(&data);
    opts.split = SplitChoice::All;
    let report = evaluate(enc.as_ref(), &opts).unwrap();
    assert_eq!(report.vectors[&Modality::Audio], 2);
    let audio_text = report
        .retrieval
        .iter()
        .find(|r| r.query == Modality::Audio && r.target == Modality::Text)
        .unwrap();
    assert!(audio_text.emergent && audio_text.n == 2);
    assert_eq!(report.retrieval.len(), 30);
    assert!(report
        .classification
        .iter()
        .any(|c| c.modality == Modality::Audio && c.n == 2));

    // --limit and the split filters.
    opts.limit = Some(3);
    assert_eq!(evaluate(enc.as_ref(), &opts).unwrap().items, 3);
    let held = items.iter().filter(|i| i.split == Split::Heldout).count();
    assert!(held > 0 && held < 7, "the computed split holds some out");
    let mut h = EvalOptions::new(&data);
    assert_eq!(evaluate(enc.as_ref(), &h).unwrap().items, held);
    h.limit = Some(0);
    let e = evaluate(enc.as_ref(), &h).unwrap_err().to_string();
    assert!(e.contains("no items of split `heldout`"), "{e}");
    h.limit = None;
    h.split = SplitChoice::Train;
    assert_eq!(evaluate(enc.as_ref(), &h).unwrap().items, 7 - held);

    // A model with image and depth only: two pairs, no classification.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/imagebind/models/imagebind-tiny");
    let mut spec = ModelSpec::new("tiny-id", dir.to_str().unwrap());
    spec.modalities = Some(vec![Modality::Image, Modality::Depth]);
    let small = load_encoder(&spec).unwrap();
    let r = evaluate(small.as_ref(), &opts).unwrap();
    let pairs: Vec<(Modality, Modality)> =
        r.retrieval.iter().map(|p| (p.query, p.target)).collect();
    assert_eq!(
        pairs,
        [
            (Modality::Image, Modality::Depth),
            (Modality::Depth, Modality::Image)
        ]
    );
    assert!(r.classes.is_empty() && r.classification.is_empty());
    assert!(table::markdown(&r).contains("not run"));
}
