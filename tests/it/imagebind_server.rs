//! An ImageBind collection served over HTTP: one item of every modality uploaded through the
//! public API, searched from every modality; rankings must equal those of the official model's
//! vectors (tests/fixtures/imagebind/reference).

use std::collections::HashMap;
use std::path::PathBuf;

use omnibind::embed::ModelSpec;
use reqwest::blocking::multipart;
use serde_json::{json, Value};

use crate::common::{fixtures, load_tensors, read_json};
use crate::server::{assert_lists_modalities, dot, file_part, hits, normalized, TestServer};

fn ib() -> PathBuf {
    fixtures().join("imagebind")
}

fn row(t: &candle_core::Tensor, i: usize) -> Vec<f32> {
    normalized(t.get(i).unwrap().to_vec1::<f32>().unwrap())
}

/// One uploaded item: id, modality as the API names it, the file (None for text), the text,
/// and the official model's vector.
struct Item {
    id: &'static str,
    modality: &'static str,
    file: Option<(PathBuf, &'static str)>,
    text: Option<String>,
    reference: Vec<f32>,
}

fn items() -> Vec<Item> {
    let refs = load_tensors(&ib().join("reference/model.safetensors"));
    let images = load_tensors(&ib().join("reference/images.safetensors.gz"));
    let audio = load_tensors(&ib().join("reference/audio.safetensors.gz"));
    let video = load_tensors(&ib().join("reference/video.safetensors.gz"));
    let meta: Value = read_json(&ib().join("reference/meta.json"));
    let files = |m: &str, i: usize| meta["files"][m][i].as_str().unwrap().to_string();
    let image_names: Vec<String> = serde_json::from_value(meta["images"].clone()).unwrap();
    let img = image_names
        .iter()
        .position(|n| n == "png_rgb_1024x768.png")
        .unwrap();
    let wav = "speech_16k_mono_s16_0.9s.wav";
    // Depth and thermal files in the order the references list them.
    let depth_npy: Vec<String> = (0..4)
        .map(|i| files("depth", i))
        .filter(|f| f.ends_with(".npy"))
        .collect();
    let thermal16: Vec<String> = (0..4)
        .map(|i| files("thermal", i))
        .filter(|f| f.ends_with("16bit.png"))
        .collect();
    vec![
        Item {
            id: "text",
            modality: "text",
            file: None,
            text: Some(meta["texts"][0].as_str().unwrap().to_string()),
            reference: row(&refs["text.output"], 0),
        },
        Item {
            id: "image",
            modality: "image",
            file: Some((
                fixtures().join("clip/images").join(&image_names[img]),
                "photo.png",
            )),
            text: None,
            reference: row(&images["output"], img),
        },
        Item {
            id: "video",
            modality: "video",
            file: Some((ib().join("video/squares_320x240_24fps.zip"), "clip.zip")),
            text: None,
            reference: row(&video["squares_320x240_24fps.output"], 0),
        },
        Item {
            id: "audio",
            modality: "audio",
            file: Some((ib().join("audio").join(wav), "speech.wav")),
            text: None,
            reference: row(&audio[&format!("{wav}.output")], 0),
        },
        Item {
            id: "depth",
            modality: "depth",
            file: Some((ib().join("depth").join(&depth_npy[1]), "room.npy")),
            text: None,
            reference: row(&refs["depth.output"], 1),
        },
        Item {
            id: "thermal",
            modality: "thermal",
            file: Some((ib().join("thermal").join(&thermal16[0]), "person.png")),
            text: None,
            reference: row(&refs["thermal.output"], 0),
        },
        Item {
            id: "imu",
            modality: "imu",
            file: Some((ib().join("imu").join(files("imu", 1)), "walk.csv")),
            text: None,
            reference: row(&refs["imu.output"], 1),
        },
    ]
}

/// The ids ranked by the reference vectors' cosine to `query`, with their scores.
fn reference_ranking(items: &[Item], query: &[f32]) -> Vec<(String, f32)> {
    let mut r: Vec<(String, f32)> = items
        .iter()
        .map(|i| (i.id.to_string(), dot(query, &i.reference)))
        .collect();
    r.sort_by(|a, b| b.1.total_cmp(&a.1));
    r
}

#[track_caller]
fn assert_same_ranking(what: &str, got: &[(String, f32)], want: &[(String, f32)]) {
    let ids = |v: &[(String, f32)]| v.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    assert_eq!(ids(got), ids(want), "{what}: ranking");
    for ((id, a), (_, b)) in got.iter().zip(want) {
        assert!(
            (a - b).abs() < 1e-4,
            "{what}: {id} scored {a}, reference {b}"
        );
    }
}

#[test]
fn every_modality_searches_every_other_as_the_official_vectors_rank() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        s.models.push(ModelSpec::new(
            "imagebind",
            ib().join("models/imagebind-tiny").to_str().unwrap(),
        ));
    });
    let model = server.model("imagebind");
    assert_eq!(model["license"], "CC-BY-NC-SA-4.0", "{model}");
    assert_lists_modalities(
        &model,
        &["text", "image", "video", "audio", "depth", "thermal", "imu"],
    );
    let (s, v) = server.post(
        "/v1/collections",
        &json!({"name": "any", "model": "imagebind"}),
    );
    assert_eq!(s, 201, "{v}");

    // One multipart upload: every file with its id and explicit modality (a .npy, a 16-bit
    // PNG and a CSV cannot be told apart from their bytes alone), then the text as JSON.
    let items = items();
    let mut form = multipart::Form::new();
    for it in &items {
        if let Some((path, name)) = &it.file {
            form = form
                .part("file", file_part(std::fs::read(path).unwrap(), name))
                .text("id", it.id)
                .text("modality", it.modality);
        }
    }
    let (s, v) = server.post_form("/v1/collections/any/items", form);
    assert_eq!(s, 200, "{v}");
    let got: Vec<(&str, &str)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["modality"].as_str().unwrap()))
        .collect();
    let want: Vec<(&str, &str)> = items
        .iter()
        .filter(|i| i.file.is_some())
        .map(|i| (i.id, i.modality))
        .collect();
    assert_eq!(got, want, "{v}");
    let text = items.iter().find(|i| i.text.is_some()).unwrap();
    let (s, v) = server.post(
        "/v1/collections/any/items",
        &json!({"items": [{"id": text.id, "text": text.text}]}),
    );
    assert_eq!(s, 200, "{v}");

    // Every stored item as the query: the whole collection ranked as the reference ranks it.
    let by_id: HashMap<&str, &Item> = items.iter().map(|i| (i.id, i)).collect();
    for it in &items {
        let got = server.search(
            "any",
            &json!({"query": {"item": it.id}, "k": items.len(), "exact": true}),
        );
        let want = reference_ranking(&items, &by_id[it.id].reference);
        assert_same_ranking(&format!("query by stored {}", it.id), &got, &want);
    }
    // Uploaded files and a text as queries (embedded at query time).
    for it in &items {
        let form = match &it.file {
            Some((path, name)) => multipart::Form::new()
                .part("file", file_part(std::fs::read(path).unwrap(), name))
                .text("modality", it.modality),
            None => multipart::Form::new().text("text", it.text.clone().unwrap()),
        }
        .text("k", items.len().to_string())
        .text("exact", "true");
        let (s, v) = server.post_form("/v1/collections/any/search", form);
        assert_eq!(s, 200, "{v}");
        let want = reference_ranking(&items, &it.reference);
        assert_same_ranking(&format!("query by uploaded {}", it.id), &hits(&v), &want);
    }
    // A malformed input of a sensor modality is refused with a clear message.
    let form = multipart::Form::new()
        .part("file", file_part(b"1,2,3\n4,5,6\n".to_vec(), "bad.csv"))
        .text("modality", "imu");
    let (s, v) = server.post_form("/v1/collections/any/items", form);
    assert_eq!(s, 400, "{v}");
    let msg = v.to_string();
    assert!(msg.contains("3 columns"), "{msg}");
    server.stop();
}
