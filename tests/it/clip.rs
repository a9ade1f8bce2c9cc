//! CLIP parity with the reference implementation (transformers), on the committed fixtures in
//! tests/fixtures/clip (made by tests/fixtures/clip/make_fixtures.py).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use omnibind::embed::clip::ClipEncoder;
use omnibind::embed::preprocess::image::{decode_rgb, normalize, resize_and_crop};
use omnibind::embed::preprocess::text::TextTokenizer;
use omnibind::embed::{Encoder, Input, Modality, ModelSpec};
use serde::Deserialize;

use crate::common::{cosine, fixtures, load_tensors, max_abs_diff, read_json};

const MODELS: [&str; 2] = ["clip-tiny-quickgelu", "clip-tiny-gelu"];
/// Required parity of embeddings with the reference, f32.
const EMB_MAX_ABS: f32 = 1e-4;
const EMB_MIN_COS: f32 = 0.9999;
/// What the model itself achieves on identical inputs (measured: 5e-7). Tight enough to catch a
/// substituted activation (tanh-GELU for exact GELU moves these embeddings by 1.1e-4).
const MODEL_MAX_ABS: f32 = 1e-5;

fn dir() -> PathBuf {
    fixtures().join("clip")
}

fn texts() -> Vec<String> {
    read_json(&dir().join("texts.json"))
}

fn image_names() -> Vec<String> {
    read_json(&dir().join("images.json"))
}

#[derive(Deserialize)]
struct Tokens {
    max_length: usize,
    hf: Vec<Vec<u32>>,
    open_clip_unpadded: Vec<Vec<u32>>,
    agree: Vec<bool>,
}

fn load(model: &str, dtype: DType) -> ClipEncoder {
    let path = dir().join("models").join(model);
    let spec = ModelSpec::new(model, path.to_str().unwrap());
    ClipEncoder::load(&path, &spec, &Device::Cpu, dtype).expect("fixture model loads")
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

fn reference(model: &str, name: &str) -> Vec<Vec<f32>> {
    let refs = load_tensors(&dir().join("reference").join(format!("{model}.safetensors")));
    rows(&refs[name])
}

fn assert_close(
    what: &str,
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    max_abs: f32,
    min_cos: f32,
) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: row count");
    let mut worst_abs = 0f32;
    let mut worst_cos = 1f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = max_abs_diff(a, b);
        let c = cosine(a, b);
        assert!(
            d <= max_abs && c >= min_cos,
            "{what} row {i}: max abs diff {d:e}, cosine {c}"
        );
        worst_abs = worst_abs.max(d);
        worst_cos = worst_cos.min(c);
    }
    eprintln!(
        "{what}: {} rows, max abs diff {worst_abs:.3e}, min cosine {worst_cos:.8}",
        ours.len()
    );
    (worst_abs, worst_cos)
}

#[test]
fn token_ids_equal_the_reference_tokenizers() {
    let tok = TextTokenizer::from_file(&dir().join("tokenizer/tokenizer.json"), 77).unwrap();
    let refs: Tokens = read_json(&dir().join("reference/tokens.json"));
    let texts = texts();
    assert!(texts.len() >= 200, "at least 200 test strings");
    assert_eq!(refs.max_length, 77);
    assert_eq!(refs.hf.len(), texts.len());
    let mut open_clip_checked = 0;
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text).unwrap();
        assert_eq!(
            ids, refs.hf[i],
            "text {i} {text:?}: ids differ from transformers"
        );
        assert!(ids.len() <= 77);
        if refs.agree[i] {
            assert_eq!(
                ids, refs.open_clip_unpadded[i],
                "text {i} {text:?}: ids differ from open_clip"
            );
            open_clip_checked += 1;
        }
    }
    eprintln!(
        "tokens: {} texts equal transformers; {open_clip_checked} equal open_clip, {} differ from open_clip \
         (its ftfy/HTML clean-up, Python's final-sigma lowercasing, special-token literals; \
         listed by make_fixtures.py)",
        texts.len(),
        texts.len() - open_clip_checked
    );
    // Truncation keeps the end-of-text token last, and padding a batch does not move it.
    let long = "word ".repeat(200);
    let ids = tok.encode(&long).unwrap();
    assert_eq!((ids.len(), ids[0], ids[76]), (77, 49406, 49407));
    let batch = tok.encode_batch(&["a dog", &long]).unwrap();
    assert_eq!((batch.rows, batch.seq_len), (2, 77));
    assert_eq!(batch.eos_positions, vec![3, 76]);
}

#[test]
fn decoding_and_rgb_conversion_match_pil() {
    let refs = load_tensors(&dir().join("reference/pixels.safetensors.gz"));
    let mut report = Vec::new();
    for name in image_names() {
        let bytes = std::fs::read(dir().join("images").join(&name)).unwrap();
        let rgb = decode_rgb(&bytes).unwrap();
        let want = &refs[&format!("{name}.rgb")];
        let (h, w, _) = want.dims3().unwrap();
        assert_eq!(
            (rgb.width() as usize, rgb.height() as usize),
            (w, h),
            "{name}: size after EXIF orientation"
        );
        let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
        let diff = rgb
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        report.push(format!("{name}: {w}x{h} max |diff| {diff}"));
        // Lossless formats decode bit-exactly, and so does JPEG with libjpeg-turbo (PIL's
        // decoder); the pure-Rust JPEG decoder and the lossy WebP one (libwebp in PIL) may round
        // differently.
        let jpeg = name.ends_with(".jpg") || name.ends_with(".jpeg");
        let lossy = (jpeg && !cfg!(feature = "libjpeg-turbo")) || name.contains("lossy");
        let tolerance = if lossy { 6 } else { 0 };
        assert!(
            diff <= tolerance,
            "{name}: decoded RGB differs by {diff} levels"
        );
    }
    eprintln!("decoded RGB vs PIL:\n  {}", report.join("\n  "));
}

#[test]
fn resize_crop_and_normalise_match_the_reference_bit_exactly() {
    let refs = load_tensors(&dir().join("reference/pixels.safetensors.gz"));
    let cfg = load("clip-tiny-quickgelu", DType::F32)
        .image_config()
        .clone();
    let mut worst_level = 0u8;
    let mut worst_norm = 0f32;
    let mut float_checked = 0;
    for name in image_names() {
        // Start from the reference's own RGB so that only resize/crop/normalise are compared.
        let rgb_t = &refs[&format!("{name}.rgb")];
        let (h, w, _) = rgb_t.dims3().unwrap();
        let raw: Vec<u8> = rgb_t.flatten_all().unwrap().to_vec1().unwrap();
        let rgb = image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap();
        let resized = resize_and_crop(&rgb, &cfg).unwrap();
        let want: Vec<u8> = refs[&format!("{name}.resized")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let level = resized
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let off = resized.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!(
            "{name}: resize+crop max |diff| {level} level(s), {off} of {} values differ",
            want.len()
        );
        assert_eq!(
            level, 0,
            "{name}: resized pixels differ by {level} levels ({off} values)"
        );
        worst_level = worst_level.max(level);
        // Normalisation of identical bytes must be exact to float rounding (the fixture keeps
        // the reference's float tensors for a subset of the images).
        if let Some(theirs) = refs.get(&name) {
            let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            let d = max_abs_diff(&normalize(&want, &cfg), &theirs);
            assert!(d <= 1e-6, "{name}: normalisation differs by {d}");
            float_checked += 1;
        }
        worst_norm = worst_norm.max(max_abs_diff(
            &normalize(&resized, &cfg),
            &normalize(&want, &cfg),
        ));
    }
    assert_eq!(worst_norm, 0.0);
    assert!(
        float_checked >= 4,
        "float pixel references checked: {float_checked}"
    );
    eprintln!(
        "resize+crop: max {worst_level} level(s); normalised pixels max abs diff {worst_norm:.4}"
    );
}

#[test]
fn image_embeddings_from_reference_pixels_are_exact() {
    let refs = load_tensors(&dir().join("reference/pixels.safetensors.gz"));
    let names = image_names();
    let cfg = load("clip-tiny-quickgelu", DType::F32)
        .image_config()
        .clone();
    // The reference's float pixels; where the fixture keeps only the reference's resized bytes,
    // they are rebuilt with the normalisation proven exact in the test above.
    let pixels: Vec<Vec<f32>> = names
        .iter()
        .map(|n| match refs.get(n) {
            Some(t) => t.flatten_all().unwrap().to_vec1().unwrap(),
            None => {
                let bytes: Vec<u8> = refs[&format!("{n}.resized")]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                normalize(&bytes, &cfg)
            }
        })
        .collect();
    let px: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    for model in MODELS {
        let enc = load(model, DType::F32);
        let ours = rows(&enc.embed_pixels(&px).unwrap());
        assert_close(
            &format!("{model} image embeds"),
            &ours,
            &reference(model, "image_embeds"),
            MODEL_MAX_ABS,
            EMB_MIN_COS,
        );
        let raw = rows(&enc.image_features_raw(&px).unwrap());
        assert_close(
            &format!("{model} image features (unnormalised)"),
            &raw,
            &reference(model, "image_features"),
            MODEL_MAX_ABS * 10.0,
            EMB_MIN_COS,
        );
    }
}

#[test]
fn text_embeddings_are_exact() {
    let texts = texts();
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for model in MODELS {
        let enc = load(model, DType::F32);
        let ours = rows(&enc.embed_texts(&strs).unwrap());
        assert_close(
            &format!("{model} text embeds"),
            &ours,
            &reference(model, "text_embeds"),
            MODEL_MAX_ABS,
            EMB_MIN_COS,
        );
    }
}

/// Tolerance for JPEG files end to end. With libjpeg-turbo (the `libjpeg-turbo` feature, PIL's
/// decoder) JPEG pixels are PIL's bit for bit and JPEG meets the model tolerance like the
/// lossless formats. The pure-Rust JPEG decoder rounds its IDCT and chroma upsampling
/// differently, up to 4 levels of 255 on the fixtures (measured in
/// `decoding_and_rgb_conversion_match_pil`).
const JPEG_END_TO_END_MAX_ABS: f32 = if cfg!(feature = "libjpeg-turbo") {
    EMB_MAX_ABS
} else {
    2.5e-3
};

#[test]
fn end_to_end_image_embeddings_match_the_reference() {
    let names = image_names();
    let inputs: Vec<Input> = names
        .iter()
        .map(|n| Input::Bytes {
            modality: Modality::Image,
            bytes: std::fs::read(dir().join("images").join(n)).unwrap().into(),
        })
        .collect();
    let is_jpeg = |n: &str| n.ends_with(".jpg");
    for model in MODELS {
        let enc = load(model, DType::F32);
        let ours: Vec<Vec<f32>> = enc
            .embed_batch(&inputs)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let want = reference(model, "image_embeds");
        let pick = |v: &[Vec<f32>], jpeg: bool| -> Vec<Vec<f32>> {
            v.iter()
                .zip(&names)
                .filter(|(_, n)| is_jpeg(n) == jpeg)
                .map(|(r, _)| r.clone())
                .collect()
        };
        assert_close(
            &format!("{model} non-JPEG files end to end"),
            &pick(&ours, false),
            &pick(&want, false),
            EMB_MAX_ABS,
            EMB_MIN_COS,
        );
        assert_close(
            &format!("{model} JPEG files end to end"),
            &pick(&ours, true),
            &pick(&want, true),
            JPEG_END_TO_END_MAX_ABS,
            EMB_MIN_COS,
        );
    }
}

#[test]
fn batch_composition_does_not_change_vectors() {
    let enc = load("clip-tiny-gelu", DType::F32);
    let long = "a very long caption ".repeat(30);
    let alone = rows(&enc.embed_texts(&["a dog on a beach"]).unwrap());
    let mixed = rows(
        &enc.embed_texts(&[long.as_str(), "a dog on a beach", "x"])
            .unwrap(),
    );
    assert!(max_abs_diff(&alone[0], &mixed[1]) < 1e-6);
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    let texts = texts();
    let strs: Vec<&str> = texts.iter().take(32).map(String::as_str).collect();
    let f32_enc = load("clip-tiny-quickgelu", DType::F32);
    let bf16_enc = load("clip-tiny-quickgelu", DType::BF16);
    assert_eq!(bf16_enc.info().precision, "bf16");
    let a = rows(&f32_enc.embed_texts(&strs).unwrap());
    let b = rows(&bf16_enc.embed_texts(&strs).unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert!(cosine(x, y) > 0.99, "bf16 drifted: {}", cosine(x, y));
    }
}

#[test]
fn per_input_errors_do_not_fail_the_batch() {
    let enc = load("clip-tiny-quickgelu", DType::F32);
    let good = std::fs::read(dir().join("images").join(&image_names()[0])).unwrap();
    let out = enc
        .embed_batch(&[
            Input::Bytes {
                modality: Modality::Image,
                bytes: b"not an image".to_vec().into(),
            },
            Input::Text("a cat".into()),
            Input::Bytes {
                modality: Modality::Image,
                bytes: good.clone().into(),
            },
            Input::Bytes {
                modality: Modality::Image,
                bytes: good[..good.len() / 3].to_vec().into(),
            },
            Input::Bytes {
                modality: Modality::Audio,
                bytes: vec![0; 10].into(),
            },
        ])
        .unwrap();
    assert!(out[0].is_err() && out[3].is_err() && out[4].is_err());
    assert_eq!(out[1].as_ref().unwrap().len(), 16);
    assert_eq!(out[2].as_ref().unwrap().len(), 16);
    let e = out[4].as_ref().unwrap_err().to_string();
    assert!(e.contains("does not accept audio"), "{e}");
}

#[test]
fn loading_one_tower_only() {
    let path = dir().join("models/clip-tiny-quickgelu");
    let mut spec = ModelSpec::new("t", path.to_str().unwrap());
    spec.modalities = Some(vec![Modality::Text]);
    let enc = ClipEncoder::load(&path, &spec, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(enc.modalities(), &[Modality::Text]);
    let out = enc
        .embed_batch(&[Input::Bytes {
            modality: Modality::Image,
            bytes: vec![1, 2, 3].into(),
        }])
        .unwrap();
    assert!(out[0].is_err());
}

#[test]
fn cli_prints_the_reference_vector() {
    let model = dir().join("models/clip-tiny-gelu");
    let texts = texts();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnibind"))
        .args([
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--text",
            &texts[0],
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "clip-tiny-gelu");
    assert_eq!(v["modality"], "text");
    assert_eq!(v["dim"], 24);
    let vector: Vec<f32> = serde_json::from_value(v["vector"].clone()).unwrap();
    let want = &reference("clip-tiny-gelu", "text_embeds")[0];
    assert!(max_abs_diff(&vector, want) <= EMB_MAX_ABS);

    // --batch: several inputs, one JSON line each, in one forward pass per modality.
    let img = dir().join("images").join(&image_names()[0]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnibind"))
        .args([
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--batch",
            "--image",
            img.to_str().unwrap(),
            "--text",
            "a",
            "--text",
            "b",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["modality"], "image");
    assert_eq!(lines[2]["input"], "b");

    // Several inputs without --batch, and a missing model, are clear errors.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnibind"))
        .args([
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--text",
            "a",
            "--text",
            "b",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnibind"))
        .env("HF_HUB_CACHE", dir().join("no-such-cache"))
        .args([
            "embed",
            "--model",
            "openai/clip-vit-base-patch32",
            "--text",
            "a",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("downloads are disabled") && err.contains("model.safetensors"),
        "{err}"
    );
}

/// The towers here are the project's own (fused attention, configurable activation and epsilon);
/// on a configuration candle-transformers' CLIP supports (QuickGELU, eps 1e-5) both agree.
#[test]
fn agrees_with_candle_transformers_clip_on_quickgelu() {
    use candle_transformers::models::clip as ct;
    let path = dir().join("models/clip-tiny-quickgelu");
    let enc = load("clip-tiny-quickgelu", DType::F32);
    let c = enc.config();
    let cfg = ct::ClipConfig {
        text_config: ct::text_model::ClipTextConfig {
            vocab_size: c.text_config.vocab_size,
            embed_dim: c.text_config.hidden_size,
            activation: ct::text_model::Activation::QuickGelu,
            intermediate_size: c.text_config.intermediate_size,
            max_position_embeddings: c.text_config.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: c.text_config.num_hidden_layers,
            num_attention_heads: c.text_config.num_attention_heads,
            projection_dim: c.projection_dim,
        },
        vision_config: ct::vision_model::ClipVisionConfig {
            embed_dim: c.vision_config.hidden_size,
            activation: ct::text_model::Activation::QuickGelu,
            intermediate_size: c.vision_config.intermediate_size,
            num_hidden_layers: c.vision_config.num_hidden_layers,
            num_attention_heads: c.vision_config.num_attention_heads,
            projection_dim: c.projection_dim,
            num_channels: 3,
            image_size: c.vision_config.image_size,
            patch_size: c.vision_config.patch_size,
        },
        logit_scale_init_value: 2.6592,
        image_size: c.vision_config.image_size,
    };
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[path.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let theirs = ct::ClipModel::new(vb, &cfg).unwrap();
    // Text: candle-transformers pools at the largest id, which is the end-of-text token here.
    let tok = enc.tokenizer().unwrap();
    for text in ["a photo of a cat", "Zwei Hunde, 3 Katzen!"] {
        let ids = tok.encode(text).unwrap();
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = rows(&ct::div_l2_norm(&theirs.get_text_features(&t).unwrap()).unwrap());
        let ours = rows(&enc.embed_texts(&[text]).unwrap());
        assert!(max_abs_diff(&ours[0], &want[0]) < 1e-5, "{text}");
    }
    let bytes = std::fs::read(dir().join("images").join(&image_names()[4])).unwrap();
    let px = enc.preprocess_image(&bytes).unwrap();
    let t = Tensor::from_vec(px.clone(), (1, 3, 224, 224), &Device::Cpu).unwrap();
    let want = rows(&ct::div_l2_norm(&theirs.get_image_features(&t).unwrap()).unwrap());
    let ours = rows(&enc.embed_pixels(&[&px]).unwrap());
    assert!(max_abs_diff(&ours[0], &want[0]) < 1e-5);
}
