//! The bundled default model (`models/default`): its model card's figures on the committed
//! held-out sample are what the committed weights give, and a server started with the built-in
//! configuration alone (the model embedded in the binary) finds across modalities with it.

use std::path::PathBuf;

use omnibind::embed::registry::load_encoder;
use omnibind::embed::ModelSpec;
use omnibind::eval::{evaluate, table, EvalOptions};
use reqwest::blocking::multipart;
use serde_json::{json, Value};

use crate::common::fixtures;
use crate::imagebind_video::zip_of;
use crate::server::{assert_lists_modalities, file_part, hits, TestServer};

const CARD_BEGIN: &str = "<!-- eval-sample:begin -->";
const CARD_END: &str = "<!-- eval-sample:end -->";

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

pub fn sample_dir() -> PathBuf {
    fixtures().join("openmoji-heldout-sample")
}

/// The Markdown table rows (separator rows left out) of a text, as cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("|:"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_model_card_states_what_the_weights_give_on_the_heldout_sample() {
    let card = std::fs::read_to_string(model_dir().join("MODEL_CARD.md")).unwrap();
    let start = card
        .find(CARD_BEGIN)
        .expect("the card has the sample block");
    let end = card.find(CARD_END).expect("the card's sample block ends");
    let stated = &card[start + CARD_BEGIN.len()..end];

    let encoder = load_encoder(&ModelSpec::new("default", model_dir().to_str().unwrap())).unwrap();
    let report = evaluate(encoder.as_ref(), &EvalOptions::new(sample_dir())).unwrap();
    assert_eq!(report.items, 32);
    let measured = table::markdown(&report);

    let (want, got) = (table_rows(stated), table_rows(&measured));
    assert!(want.len() > 30, "the card's block has {} rows", want.len());
    assert_eq!(want.len(), got.len(), "rows:\n{stated}\nvs\n{measured}");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.len(), g.len(), "{w:?} vs {g:?}");
        for (a, b) in w.iter().zip(g) {
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => assert!((x - y).abs() <= 0.01, "{w:?} vs {g:?}"),
                _ => assert_eq!(a, b, "{w:?} vs {g:?}"),
            }
        }
    }
}

/// Sample items: hexcode and the manifest line.
pub fn sample_items() -> Vec<(String, Value)> {
    std::fs::read_to_string(sample_dir().join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["hexcode"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Held-out cases (never seen in training) with a clear margin: a caption whose emoji must rank
/// first among the 32 sample images (the model gets 13 of 32 annotations right at rank 1 here).
const TEXT_TO_IMAGE: &[(&str, &str)] = &[
    ("an emoji of grinning face", "1F600"),
    ("a picture of a person surfing", "1F3C4"),
    ("an emoji of person climbing", "1F9D7"),
    ("a picture of a woman juggling", "1F939-200D-2640-FE0F"),
    ("a picture of a jar with green content", "1FAD9-200D-1F7E9"),
];
/// Spoken annotations whose emoji the model ranks first among the sample images. Audio is the
/// model's weakest tower: these are the 3 of 32 held-out clips it gets right at rank 1 (the
/// card gives its recall); the test guards the served audio path against regressions.
const AUDIO_TO_IMAGE: &[&str] = &["1F64C-1F3FB", "1F917", "1F336"];
/// Emoji whose still picture, sent as a video (a ZIP of 3 identical frames), must find itself.
const VIDEO_TO_IMAGE: &[&str] = &["1F415", "1F3E0"];
/// IMU traces of held-out motion emoji and the caption (among one per motion class) that must
/// rank first: the one class of 9 the model gets right at rank 1 here (see the card).
const IMU_TO_TEXT: &[(&str, &str)] = &[("1F939-200D-2640-FE0F", "person juggling")];
const MOTION_CAPTIONS: &[&str] = &[
    "person running",
    "person climbing",
    "person surfing",
    "person bouncing ball",
    "person cartwheeling",
    "person juggling",
    "train",
    "car",
    "boat",
];

#[test]
fn the_default_server_finds_images_from_text_and_sound_and_captions_from_motion() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_configured(dir.path(), |s| {
        assert_eq!(
            s.models.len(),
            1,
            "the built-in configuration has one model"
        );
        // The bundled model, embedded in the binary: nothing is read from models/default.
        assert_eq!(s.models[0].path, "builtin:default");
    });
    let (s, v) = server.get("/v1/models");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["models"].as_array().unwrap().len(), 1, "{v}");
    let model = server.model("default");
    assert_eq!(model["family"], "imagebind", "{model}");
    assert_eq!(model["dim"], 128, "{model}");
    assert_eq!(model["license"], "CC-BY-SA-4.0", "{model}");
    assert_lists_modalities(
        &model,
        &["text", "image", "video", "audio", "depth", "thermal", "imu"],
    );

    let items = sample_items();
    for coll in ["images", "captions"] {
        let (s, v) = server.post(
            "/v1/collections",
            &json!({"name": coll, "model": "default"}),
        );
        assert_eq!(s, 201, "{coll}: {v}");
    }
    let mut form = multipart::Form::new();
    for (hex, v) in &items {
        let path = sample_dir().join(v["image"].as_str().unwrap());
        form = form
            .part("file", file_part(std::fs::read(path).unwrap(), "emoji.png"))
            .text("id", hex.clone())
            .text("modality", "image");
    }
    let (s, v) = server.post_form("/v1/collections/images/items", form);
    assert_eq!(s, 200, "{v}");
    let captions: Vec<Value> = MOTION_CAPTIONS
        .iter()
        .map(|c| json!({"id": c, "text": c}))
        .collect();
    let (s, v) = server.post(
        "/v1/collections/captions/items",
        &json!({"items": captions}),
    );
    assert_eq!(s, 200, "{v}");

    let top = |coll: &str, form: multipart::Form| -> Vec<(String, f32)> {
        let (s, v) = server.post_form(
            &format!("/v1/collections/{coll}/search"),
            form.text("k", "3").text("exact", "true"),
        );
        assert_eq!(s, 200, "{v}");
        hits(&v)
    };
    let file = |hex: &str, key: &str| -> Vec<u8> {
        let (_, v) = items.iter().find(|(h, _)| h == hex).unwrap();
        let rel = match &v[key] {
            Value::Array(a) => a[0]
                .get("path")
                .unwrap_or(&a[0])
                .as_str()
                .unwrap()
                .to_string(),
            other => other.as_str().unwrap().to_string(),
        };
        std::fs::read(sample_dir().join(rel)).unwrap()
    };
    for (text, want) in TEXT_TO_IMAGE {
        let got = top("images", multipart::Form::new().text("text", *text));
        assert_eq!(got[0].0, *want, "text {text:?} -> {got:?}");
    }
    for hex in AUDIO_TO_IMAGE {
        let form = multipart::Form::new()
            .part("file", file_part(file(hex, "audio"), "speech.wav"))
            .text("modality", "audio");
        let got = top("images", form);
        assert_eq!(got[0].0, *hex, "audio of {hex} -> {got:?}");
    }
    for hex in VIDEO_TO_IMAGE {
        let png = file(hex, "image");
        let zip = zip_of(&[("f1.png", &png), ("f2.png", &png), ("f3.png", &png)]);
        let form = multipart::Form::new()
            .part("file", file_part(zip, "clip.zip"))
            .text("modality", "video");
        let got = top("images", form);
        assert_eq!(got[0].0, *hex, "video of {hex} -> {got:?}");
    }
    for (hex, want) in IMU_TO_TEXT {
        let form = multipart::Form::new()
            .part("file", file_part(file(hex, "imu"), "trace.npy"))
            .text("modality", "imu");
        let got = top("captions", form);
        assert_eq!(got[0].0, *want, "IMU of {hex} -> {got:?}");
    }
    server.stop();
}
