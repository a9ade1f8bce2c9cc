//! Training tests on a tiny six-tower config and fixed synthetic batches (CPU).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, recipe_hash, CheckpointMeta};
use super::params::{bind_temperature, stage1_temperature, Trainable};
use super::schedule::LrSchedule;
use super::trainer::{Batch, ImageTower, Paired, Stage, TrainOptions, Trainer};
use crate::embed::imagebind::model::Tower;
use crate::embed::imagebind::ImageBindConfig;

const BATCH: usize = 8;

fn tiny_config() -> ImageBindConfig {
    ImageBindConfig::from_json(
        r#"{"model_type": "imagebind", "out_embed_dim": 16,
            "vision": {"embed_dim": 16, "num_blocks": 1, "num_heads": 2},
            "text": {"embed_dim": 16, "num_blocks": 1, "num_heads": 2},
            "audio": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "depth": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "thermal": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "imu": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "inputs": {"image_size": 14, "vision_kernel": [2, 7, 7], "context_length": 8,
                       "vocab_size": 32, "audio_num_mel_bins": 16, "audio_target_len": 26,
                       "depth_kernel": 7, "thermal_kernel": 7, "imu_len": 32}}"#,
    )
    .unwrap()
}

fn trainable(seed: u64) -> Trainable {
    Trainable::init(&tiny_config(), &Tower::ALL, seed, &Device::Cpu).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn images() -> Tensor {
    randn(&[BATCH, 3, 14, 14], 1)
}

fn text_batch() -> Batch {
    let ids: Vec<u32> = (0..BATCH * 8)
        .map(|i| ((i * 7 + i / 8) % 32) as u32)
        .collect();
    Batch {
        images: images(),
        paired: Paired::Text {
            ids: Tensor::from_vec(ids, (BATCH, 8), &Device::Cpu).unwrap(),
            eos: (0..BATCH).map(|i| 4 + i % 4).collect(),
        },
    }
}

fn bind_batch(t: Tower) -> Batch {
    let shape = match t {
        Tower::Audio => vec![BATCH, 1, 16, 26],
        Tower::Depth | Tower::Thermal => vec![BATCH, 1, 14, 14],
        Tower::Imu => vec![BATCH, 6, 32],
        _ => unreachable!(),
    };
    Batch {
        images: images(),
        paired: Paired::Other(randn(&shape, 2)),
    }
}

fn options(lr: f64) -> TrainOptions {
    TrainOptions {
        schedule: LrSchedule::constant(lr),
        ..Default::default()
    }
}

fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_sum(&(a - b).unwrap()) / a.elem_count() as f32
}

#[test]
fn init_is_seeded_complete_and_official() {
    let a = trainable(3);
    let b = trainable(3);
    let c = trainable(4);
    let (va, vb, vc) = (a.named_vars(), b.named_vars(), c.named_vars());
    assert_eq!(va.len(), vb.len());
    let mut differs = false;
    for (((na, xa), (_, xb)), (_, xc)) in va.iter().zip(&vb).zip(&vc) {
        assert_eq!(max_diff(xa.as_tensor(), xb.as_tensor()), 0.0, "{na}");
        differs |= max_diff(xa.as_tensor(), xc.as_tensor()) > 0.0;
        let mean = xa
            .as_tensor()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if na.ends_with(".bias") || na.ends_with("in_proj_bias") {
            assert_eq!(abs_sum(xa.as_tensor()), 0.0, "{na}");
        } else if na.ends_with(".weight") && xa.rank() == 1 {
            assert_eq!(mean, 1.0, "{na} (LayerNorm)");
        } else if xa.rank() >= 2 {
            // Truncated normal of std 0.02: nothing beyond two deviations, not all zero.
            let max = xa.as_tensor().abs().unwrap().max_all().unwrap();
            let max = max.to_scalar::<f32>().unwrap();
            assert!(max > 0.0 && max <= 0.04 + 1e-6, "{na}: {max}");
        }
    }
    assert!(differs, "another seed gives other weights");
    let scalar = |n: &str| a.var(n).unwrap().as_tensor().to_scalar::<f32>().unwrap();
    let close = |x: f32, y: f64| (x as f64 - y.ln()).abs() < 1e-6;
    assert!(close(scalar(&stage1_temperature()), 1.0 / 0.07));
    assert!(close(
        scalar("modality_postprocessors.text.1.log_logit_scale"),
        1.0 / 0.07
    ));
    assert!(close(
        scalar("modality_postprocessors.audio.1.log_logit_scale"),
        20.0
    ));
    assert!(close(
        scalar("modality_postprocessors.thermal.1.log_logit_scale"),
        10.0
    ));
    assert!(close(scalar(&bind_temperature(Tower::Depth)), 5.0));
    // Every variable belongs to exactly one tower, or is a loss temperature.
    let per_tower: usize = Tower::ALL.iter().map(|&t| a.all_tower_vars(t).len()).sum();
    assert_eq!(per_tower + 5, va.len());
}

#[test]
fn stage1_training_steps_lower_the_loss() {
    let batch = text_batch();
    let mut tr = Trainer::new(trainable(0), Stage::ImageText, options(3e-3)).unwrap();
    let (before, _) = tr.backward(&batch).unwrap();
    let start = Instant::now();
    let (mut build, steps) = (0.0, 30);
    for _ in 0..steps {
        let s = tr.step(&batch).unwrap();
        assert!(s.loss.is_finite() && s.grad_norm.is_finite());
        build += s.build_secs;
    }
    let total = start.elapsed().as_secs_f64();
    let (after, _) = tr.backward(&batch).unwrap();
    eprintln!(
        "stage 1: loss {before:.4} -> {after:.4} in {steps} steps; {:.1} steps/s; \
         rebuild {:.2} ms of {:.2} ms per step",
        steps as f64 / total,
        1e3 * build / steps as f64,
        1e3 * total / steps as f64
    );
    assert!(after < 0.5 * before, "{before} -> {after}");
}

#[test]
fn stage2_training_steps_lower_the_loss() {
    // Stage 2 binds to the image embeddings, which must first be told apart: at initialisation
    // the vision tower maps every image to nearly the same point.
    let mut stage1 = Trainer::new(trainable(0), Stage::ImageText, options(3e-3)).unwrap();
    for _ in 0..30 {
        stage1.step(&text_batch()).unwrap();
    }
    let batch = bind_batch(Tower::Imu);
    let params = stage1.into_params();
    let mut tr = Trainer::new(params, Stage::Bind(Tower::Imu), options(3e-3)).unwrap();
    let (before, _) = tr.backward(&batch).unwrap();
    for _ in 0..30 {
        tr.step(&batch).unwrap();
    }
    let (after, _) = tr.backward(&batch).unwrap();
    eprintln!("stage 2 (imu): loss {before:.4} -> {after:.4} in 30 steps");
    assert!(after < 0.5 * before, "{before} -> {after}");
}

#[test]
fn gradients_reach_every_trained_var_and_no_frozen_one() {
    let tr = Trainer::new(trainable(0), Stage::ImageText, options(1e-3)).unwrap();
    let (_, grads) = tr.backward(&text_batch()).unwrap();
    assert!(tr.trained_vars().len() > 20);
    for (name, var) in tr.trained_vars() {
        let g = grads.get(var.as_tensor());
        assert!(
            g.is_some_and(|g| abs_sum(g) > 0.0),
            "stage 1: no gradient for {name}"
        );
    }
    // Queries and keys too (candle's fused softmax has no backward pass; the attention must not
    // use it when training), in both towers.
    for t in ["vision", "text"] {
        let name = format!("modality_trunks.{t}.blocks.0.attn.in_proj_weight");
        let g = grads
            .get(tr.params().var(&name).unwrap().as_tensor())
            .unwrap();
        for (rows, what) in [(0, "query"), (16, "key")] {
            let part = g.narrow(0, rows, 16).unwrap();
            assert!(
                abs_sum(&part) > 0.0,
                "no gradient for the {what} rows of {name}"
            );
        }
    }
    for t in [Tower::Audio, Tower::Depth, Tower::Thermal, Tower::Imu] {
        let tr = Trainer::new(trainable(0), Stage::Bind(t), options(1e-3)).unwrap();
        let (_, grads) = tr.backward(&bind_batch(t)).unwrap();
        let trained = tr.params().tower_vars(t);
        assert!(trained.len() >= 10);
        assert_eq!(tr.trained_vars().len(), trained.len() + 1);
        for (name, var) in tr.trained_vars() {
            let g = grads.get(var.as_tensor());
            assert!(
                g.is_some_and(|g| abs_sum(g) > 0.0),
                "{t:?}: no gradient for {name}"
            );
        }
        let mut frozen = tr.params().all_tower_vars(Tower::Vision);
        frozen.extend(tr.params().all_tower_vars(Tower::Text));
        frozen.push((
            stage1_temperature(),
            tr.params().var(&stage1_temperature()).unwrap(),
        ));
        for (name, var) in frozen {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{t:?}: gradient for frozen {name}"
            );
        }
    }
}

#[test]
fn stage2_steps_leave_frozen_towers_unchanged() {
    let t = Tower::Audio;
    let mut tr = Trainer::new(trainable(0), Stage::Bind(t), options(1e-2)).unwrap();
    let snapshot = |tr: &Trainer, t: Tower| -> Vec<Tensor> {
        tr.params()
            .all_tower_vars(t)
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect()
    };
    let (vision, text, audio) = (
        snapshot(&tr, Tower::Vision),
        snapshot(&tr, Tower::Text),
        snapshot(&tr, t),
    );
    for _ in 0..3 {
        tr.step(&bind_batch(t)).unwrap();
    }
    let same = |a: &[Tensor], b: &[Tensor]| a.iter().zip(b).all(|(x, y)| max_diff(x, y) == 0.0);
    assert!(same(&vision, &snapshot(&tr, Tower::Vision)));
    assert!(same(&text, &snapshot(&tr, Tower::Text)));
    assert!(!same(&audio, &snapshot(&tr, t)));
}

#[test]
fn stage2_can_train_the_image_tower_as_an_ablation() {
    let t = Tower::Depth;
    let mut tr = Trainer::with_image_tower(
        trainable(0),
        Stage::Bind(t),
        options(1e-2),
        ImageTower::Trained,
    )
    .unwrap();
    let vision = tr.params().tower_vars(Tower::Vision);
    assert_eq!(
        tr.trained_vars().len(),
        vision.len() + tr.params().tower_vars(t).len() + 1
    );
    let (_, grads) = tr.backward(&bind_batch(t)).unwrap();
    for (name, var) in tr.trained_vars() {
        assert!(
            grads.get(var.as_tensor()).is_some_and(|g| abs_sum(g) > 0.0),
            "no gradient for {name}"
        );
    }
    for (name, var) in tr.params().all_tower_vars(Tower::Text) {
        assert!(grads.get(var.as_tensor()).is_none(), "gradient for {name}");
    }
    let before: Vec<Tensor> = vision
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    tr.step(&bind_batch(t)).unwrap();
    let moved = vision
        .iter()
        .zip(&before)
        .filter(|((_, v), b)| max_diff(v.as_tensor(), b) > 0.0)
        .count();
    assert_eq!(moved, vision.len());
    // Precomputed head outputs stand in for images only when the image tower is frozen.
    let heads = tr.image_heads(&images(), 4).unwrap();
    let batch = Batch {
        images: heads,
        paired: bind_batch(t).paired,
    };
    let err = tr.backward(&batch).unwrap_err().to_string();
    assert!(err.contains("needs images"), "{err}");
}

#[test]
fn load_present_sets_the_weights_a_checkpoint_holds() {
    let dir = tempfile::tempdir().unwrap();
    let stage1 = Trainable::init(
        &tiny_config(),
        &[Tower::Vision, Tower::Text],
        5,
        &Device::Cpu,
    )
    .unwrap();
    let meta = CheckpointMeta {
        step: 1,
        epoch: 0,
        seed: 5,
        recipe_hash: recipe_hash("x"),
    };
    checkpoint::save(dir.path(), &stage1, &meta).unwrap();
    let mut full = trainable(0);
    let depth_before = full.tower_vars(Tower::Depth)[0]
        .1
        .as_tensor()
        .copy()
        .unwrap();
    let (loaded, kept) = full
        .load_present(&dir.path().join(checkpoint::WEIGHTS_FILE))
        .unwrap();
    assert_eq!(loaded, stage1.named_vars().len());
    assert_eq!(loaded + kept, full.named_vars().len());
    for (name, var) in stage1.named_vars() {
        assert_eq!(
            max_diff(full.var(&name).unwrap().as_tensor(), var.as_tensor()),
            0.0
        );
    }
    let depth_after = full.tower_vars(Tower::Depth)[0]
        .1
        .as_tensor()
        .copy()
        .unwrap();
    assert_eq!(max_diff(&depth_before, &depth_after), 0.0);
    // A file of another geometry is refused.
    let mut other = tiny_config();
    other.out_embed_dim = 8;
    let small = Trainable::init(&other, &[Tower::Vision, Tower::Text], 5, &Device::Cpu).unwrap();
    let odir = tempfile::tempdir().unwrap();
    checkpoint::save(odir.path(), &small, &meta).unwrap();
    assert!(full
        .load_present(&odir.path().join(checkpoint::WEIGHTS_FILE))
        .is_err());
}

#[test]
fn rebuilt_models_are_fresh_and_checkpoints_restore_them_exactly() {
    let batch = text_batch();
    let mut tr = Trainer::new(trainable(5), Stage::ImageText, options(1e-2)).unwrap();
    let old = tr.build().unwrap();
    let (img0, txt0) = tr.embed(&old, &batch).unwrap();
    tr.step(&batch).unwrap();
    // The model built before the step holds load-time copies (the attention scale folded into
    // the query rows): it is stale, which is why every step rebuilds.
    let (img_stale, _) = tr.embed(&old, &batch).unwrap();
    let new = tr.build().unwrap();
    let (img1, txt1) = tr.embed(&new, &batch).unwrap();
    assert!(max_diff(&img0, &img1) > 1e-6 && max_diff(&txt0, &txt1) > 1e-6);
    assert!(
        max_diff(&img_stale, &img1) > 1e-7,
        "the old model saw every update"
    );

    let dir = tempfile::tempdir().unwrap();
    let meta = CheckpointMeta {
        step: tr.step_index(),
        epoch: 0,
        seed: 5,
        recipe_hash: recipe_hash("[stage1]\nlr = 1e-2\n"),
    };
    checkpoint::save(dir.path(), tr.params(), &meta).unwrap();
    let mut other = trainable(6);
    assert_eq!(checkpoint::load(dir.path(), &mut other).unwrap(), meta);
    let mut resumed = Trainer::new(other, Stage::ImageText, options(1e-2)).unwrap();
    resumed.set_step_index(meta.step);
    let (img2, txt2) = resumed.embed(&resumed.build().unwrap(), &batch).unwrap();
    assert_eq!(max_diff(&img1, &img2), 0.0);
    assert_eq!(max_diff(&txt1, &txt2), 0.0);
    for (name, v) in tr.params().named_vars() {
        let w = resumed.params().var(&name).unwrap();
        assert_eq!(max_diff(v.as_tensor(), w.as_tensor()), 0.0, "{name}");
    }
    // The directory also loads as an inference model.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.path().join(checkpoint::WEIGHTS_FILE)],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let config = ImageBindConfig::from_json(
        &std::fs::read_to_string(dir.path().join(checkpoint::CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    let m = crate::embed::imagebind::ImageBindModel::load(vb, &config, &Tower::ALL).unwrap();
    // (up to rounding: inference runs candle's fused LayerNorm and softmax kernels).
    let (img3, _) = tr.embed(&m, &batch).unwrap();
    assert!(max_diff(&img1, &img3) < 1e-6);
}

#[test]
fn clipping_scales_the_global_norm() {
    let mut tr = Trainer::new(
        trainable(0),
        Stage::ImageText,
        TrainOptions {
            max_grad_norm: Some(1e-3),
            ..options(1e-3)
        },
    )
    .unwrap();
    let (_, mut grads) = tr.backward(&text_batch()).unwrap();
    let vars: Vec<_> = tr.trained_vars().iter().map(|(_, v)| v.clone()).collect();
    let before = super::trainer::clip_grad_norm(&mut grads, &vars, Some(1e-3)).unwrap();
    assert!(before > 1e-3);
    let after = super::trainer::clip_grad_norm(&mut grads, &vars, None).unwrap();
    assert!((after - 1e-3).abs() < 1e-5, "{after}");
    let s = tr.step(&text_batch()).unwrap();
    assert!((s.grad_norm - before).abs() < 1e-4 * before);
}

const TINY_RECIPE: &str = r#"
seed = 3
model = "config.json"
output = "run"

[data]
kind = "synthetic"
pairs = 16
groups = 2

[stage1]
epochs = 30
batch_size = 8
lr = 1e-2
min_lr = 1e-4
warmup_steps = 2
negatives = "grouped"

[stage2]
modalities = ["imu", "depth"]
epochs = 30
batch_size = 8
lr = 1e-2
negatives = "mined"
"#;

#[test]
fn a_recipe_trains_both_stages_end_to_end_and_resumes() {
    use super::recipe::{run, Recipe};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), tiny_config().to_json()).unwrap();
    let recipe = Recipe::from_toml(TINY_RECIPE).unwrap();
    let mut lines = Vec::new();
    let reports = run(&recipe, TINY_RECIPE, dir.path(), |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["stage1", "stage2-imu", "stage2-depth"]);
    for r in &reports {
        let (first, last) = (r.first_loss.unwrap(), r.last_loss.unwrap());
        eprintln!(
            "{}: {first:.4} -> {last:.4}, {:.0} steps/s",
            r.name, r.steps_per_sec
        );
        assert_eq!((r.epochs_run, r.steps_run), (30, 60));
        assert!(last < 0.8 * first, "{}: {first} -> {last}", r.name);
    }
    assert_eq!(lines.len(), 90);
    for stage in names {
        let d = dir.path().join("run").join(stage);
        let mut files: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["config.json", "model.safetensors", "trainer.json"]);
    }
    // A step limit cuts every stage (2 steps per epoch: the second epoch is cut after one).
    let cut_dir = tempfile::tempdir().unwrap();
    std::fs::write(cut_dir.path().join("config.json"), tiny_config().to_json()).unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let options = super::recipe::RunOptions {
        max_steps: Some(3),
        progress: Some(std::sync::Arc::new(
            move |p: super::recipe::Progress<'_>| {
                sink.lock().unwrap().push(match p {
                    super::recipe::Progress::Stage { name, steps, done } => {
                        format!("{name} {steps} {done}")
                    }
                    super::recipe::Progress::Step { loss, lr } => {
                        assert!(loss.is_finite() && lr > 0.0);
                        "step".to_string()
                    }
                })
            },
        )),
        ..Default::default()
    };
    let cut =
        super::recipe::run_with(&recipe, TINY_RECIPE, cut_dir.path(), &options, |_| {}).unwrap();
    assert!(cut.iter().all(|r| (r.epochs_run, r.steps_run) == (2, 3)));
    // The progress: each stage's length (30 epochs of 2 steps), then its steps.
    let mut want = Vec::new();
    for stage in ["stage1", "stage2-imu", "stage2-depth"] {
        want.push(format!("{stage} 60 0"));
        want.extend(["step"; 3].map(String::from));
    }
    assert_eq!(*events.lock().unwrap(), want);
    // Run again: every stage is complete in its checkpoint, nothing is trained.
    let again = run(&recipe, TINY_RECIPE, dir.path(), |_| {}).unwrap();
    assert!(again.iter().all(|r| r.steps_run == 0));
    // Another recipe must not continue these checkpoints.
    let other = TINY_RECIPE.replace("seed = 3", "seed = 4");
    let r = Recipe::from_toml(&other).unwrap();
    assert!(run(&r, &other, dir.path(), |_| {}).is_err());
    for bad in [
        TINY_RECIPE.replace("kind = \"synthetic\"", "kind = \"laion\""),
        TINY_RECIPE.replace("[\"imu\", \"depth\"]", "[\"text\"]"),
        TINY_RECIPE.replace("negatives = \"mined\"", "negatives = \"easy\""),
        TINY_RECIPE.replace("seed = 3", "seed = 3\ntypo = 1"),
        TINY_RECIPE.replace("negatives = \"mined\"", "modality_epochs = { audio = 2 }"),
        TINY_RECIPE.replace("negatives = \"grouped\"", "freeze_image = false"),
    ] {
        assert!(Recipe::from_toml(&bad).is_err(), "{bad}");
    }
    // Stage 2 alone, from the stage-1 checkpoint, training the image tower too: the vision
    // weights start at the checkpoint's and move; with the default freezing they stay.
    let stage1_dir = dir.path().join("run").join("stage1");
    let stage1_weights =
        candle_core::safetensors::load(stage1_dir.join(checkpoint::WEIGHTS_FILE), &Device::Cpu)
            .unwrap();
    let key = "modality_trunks.vision.blocks.0.attn.in_proj_weight";
    for (freeze, moves) in [("false", true), ("true", false)] {
        let text = format!(
            "seed = 3\nmodel = \"config.json\"\noutput = \"abl-{freeze}\"\n\
             init = \"run/stage1\"\n[data]\nkind = \"synthetic\"\npairs = 16\ngroups = 2\n\
             [stage2]\nmodalities = [\"depth\"]\nepochs = 2\nbatch_size = 8\nlr = 1e-2\n\
             freeze_image = {freeze}\n"
        );
        let r = Recipe::from_toml(&text).unwrap();
        let mut log = Vec::new();
        run(&r, &text, dir.path(), |l| log.push(l.to_string())).unwrap();
        assert!(log[0].starts_with("init: "), "{log:?}");
        let out = candle_core::safetensors::load(
            dir.path()
                .join(format!("abl-{freeze}/stage2-depth"))
                .join(checkpoint::WEIGHTS_FILE),
            &Device::Cpu,
        )
        .unwrap();
        let d = max_diff(&out[key], &stage1_weights[key]);
        assert_eq!(d > 0.0, moves, "freeze_image = {freeze}: {d}");
    }
}

#[test]
fn the_official_audio_geometry_trains() {
    // 128x204 filterbanks under a 16x16 stem of stride 10: the kernel leaves 2 rows and 6
    // columns uncovered, which candle's conv2d backward pass cannot handle by itself.
    let config = ImageBindConfig::from_json(
        r#"{"model_type": "imagebind", "out_embed_dim": 8,
            "vision": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "audio": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "inputs": {"image_size": 14, "vision_kernel": [2, 7, 7],
                       "depth_kernel": 7, "thermal_kernel": 7}}"#,
    )
    .unwrap();
    let params = Trainable::init(&config, &[Tower::Vision, Tower::Audio], 0, &Device::Cpu).unwrap();
    let mut tr = Trainer::new(params, Stage::Bind(Tower::Audio), options(1e-3)).unwrap();
    let batch = Batch {
        images: randn(&[2, 3, 14, 14], 1),
        paired: Paired::Other(randn(&[2, 1, 128, 204], 2)),
    };
    let s = tr.step(&batch).unwrap();
    assert!(s.loss.is_finite() && s.grad_norm > 0.0);
}

/// The tiny model of the OpenMoji test: the CLIP vocabulary (real tokenizer), the IMU geometry
/// of the dataset ([6, 2000] traces) and no audio tower (the fixture is built without audio).
fn openmoji_config() -> ImageBindConfig {
    ImageBindConfig::from_json(
        r#"{"model_type": "imagebind", "out_embed_dim": 16,
            "vision": {"embed_dim": 16, "num_blocks": 1, "num_heads": 2},
            "text": {"embed_dim": 16, "num_blocks": 1, "num_heads": 2},
            "depth": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "thermal": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "imu": {"embed_dim": 8, "num_blocks": 1, "num_heads": 2},
            "inputs": {"image_size": 16, "vision_kernel": [2, 8, 8], "context_length": 16,
                       "depth_kernel": 8, "thermal_kernel": 8, "imu_kernel": 100}}"#,
    )
    .unwrap()
}

#[test]
fn a_recipe_trains_on_an_openmoji_dataset_and_its_checkpoints_serve() {
    use super::recipe::{run_with, Recipe, RunOptions};
    let started = Instant::now();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("openmoji");
    let mut opts = crate::data::OpenMojiOptions::new(
        root.join("tests/fixtures/openmoji-mini/openmoji-mini-1.0.0.tgz"),
        &data,
    );
    opts.audio = false;
    opts.image_size = 32;
    crate::data::openmoji(&opts).unwrap();
    std::fs::write(dir.path().join("config.json"), openmoji_config().to_json()).unwrap();
    let recipe_text = format!(
        r#"
seed = 5
model = "config.json"
output = "run"

[data]
kind = "openmoji"
path = "elsewhere"
annotation_captions = 1.0
tokenizer = "{}"

[stage1]
epochs = 80
batch_size = 6
lr = 2e-3
warmup_steps = 2
negatives = "grouped"

[stage2]
modalities = ["depth", "thermal", "imu"]
epochs = 60
modality_epochs = {{ imu = 70 }}
batch_size = 6
lr = 1e-3
warmup_steps = 5
"#,
        root.join("tests/fixtures/clip/tokenizer/tokenizer.json")
            .display()
    );
    let recipe = Recipe::from_toml(&recipe_text).unwrap();
    // The recipe's path does not exist: --data stands in for it.
    assert!(run_with(
        &recipe,
        &recipe_text,
        dir.path(),
        &RunOptions::default(),
        |_| {}
    )
    .is_err());
    let options = RunOptions {
        data: Some(data.clone()),
        ..Default::default()
    };
    let mut lines = Vec::new();
    let reports = run_with(&recipe, &recipe_text, dir.path(), &options, |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["stage1", "stage2-depth", "stage2-thermal", "stage2-imu"]
    );
    for r in &reports {
        let (first, last) = (r.first_loss.unwrap(), r.last_loss.unwrap());
        eprintln!("{}: {first:.4} -> {last:.4}", r.name);
        let epochs = match r.name.as_str() {
            "stage1" => 80,
            "stage2-imu" => 70,
            _ => 60,
        };
        assert_eq!(r.epochs_run, epochs);
        // Stage 2 of so few pairs is noisy (two of the four IMU emoji are the same runner):
        // it has to fall, stage 1 by a fifth at least.
        let factor = if r.name == "stage1" { 0.8 } else { 1.0 };
        assert!(last < factor * first, "{}: {first} -> {last}", r.name);
    }
    // Six train items (the seventh is held out); four of them are motion emoji with IMU.
    assert!(lines[0].contains("6 train items"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("stage 2 (imu): 4 pairs")),
        "{lines:?}"
    );

    // The stage-1 checkpoint's config lists exactly the towers it holds weights for: it serves.
    let mut spec =
        crate::embed::ModelSpec::new("s1", dir.path().join("run/stage1").display().to_string());
    spec.device = crate::embed::DeviceSpec::Cpu;
    let s1 = crate::embed::load_encoder(&spec).unwrap();
    assert!(s1
        .modalities()
        .starts_with(&[crate::embed::Modality::Text, crate::embed::Modality::Image]));

    // The last checkpoint holds every tower and the tokenizer: it serves.
    let ckpt = dir.path().join("run/stage2-imu");
    let mut spec = crate::embed::ModelSpec::new("tiny", ckpt.display().to_string());
    spec.device = crate::embed::DeviceSpec::Cpu;
    let enc = crate::embed::load_encoder(&spec).unwrap();
    let items = crate::data::read_manifest(&data.join("manifest.jsonl")).unwrap();
    let item = items.iter().find(|i| !i.imu.is_empty()).unwrap();
    let read = |p: &str| crate::embed::Media::from(std::fs::read(data.join(p)).unwrap());
    let inputs = vec![
        crate::embed::Input::Text(item.captions[0].clone()),
        crate::embed::Input::Bytes {
            modality: crate::embed::Modality::Image,
            bytes: read(&item.image),
        },
        crate::embed::Input::Bytes {
            modality: crate::embed::Modality::Depth,
            bytes: read(&item.depth),
        },
        crate::embed::Input::Bytes {
            modality: crate::embed::Modality::Thermal,
            bytes: read(&item.thermal),
        },
        crate::embed::Input::Bytes {
            modality: crate::embed::Modality::Imu,
            bytes: read(&item.imu[0]),
        },
    ];
    let served: Vec<Vec<f32>> = enc
        .embed_batch(&inputs)
        .unwrap()
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    for v in &served {
        assert_eq!(v.len(), 16);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // Training fed the towers what the server feeds them: the trainer's (unaugmented) image
    // and depth embeddings of the item, from the same checkpoint, are the served vectors.
    let config = openmoji_config();
    let towers = [
        Tower::Vision,
        Tower::Text,
        Tower::Depth,
        Tower::Thermal,
        Tower::Imu,
    ];
    let mut params = Trainable::init(&config, &towers, 0, &Device::Cpu).unwrap();
    checkpoint::load(&ckpt, &mut params).unwrap();
    let ds = super::openmoji::OpenMoji::open(&data, &config).unwrap();
    let k = ds
        .items()
        .iter()
        .position(|i| i.hexcode == item.hexcode)
        .unwrap();
    let (depth_in, shape) = ds.bind_inputs(Tower::Depth, &[k], &mut |_| {}).unwrap();
    let mut dims = vec![1];
    dims.extend(shape);
    let batch = Batch {
        images: ds.served_images(&[k], &Device::Cpu).unwrap(),
        paired: Paired::Other(
            Tensor::from_vec(depth_in[0][0].clone(), dims, &Device::Cpu).unwrap(),
        ),
    };
    let tr = Trainer::new(params, Stage::Bind(Tower::Depth), TrainOptions::default()).unwrap();
    let (img, dep) = tr.embed(&tr.build().unwrap(), &batch).unwrap();
    for (ours, theirs) in [(img, &served[1]), (dep, &served[2])] {
        let ours = crate::embed::imagebind::model::normalize_rows(&ours).unwrap();
        let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let d = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "train and serve differ by {d}");
    }
    eprintln!(
        "openmoji recipe test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_default_model_recipe_and_config_are_valid() {
    use super::recipe::Recipe;
    let recipe = Recipe::from_toml(include_str!("../../models/default/recipe.toml")).unwrap();
    assert_eq!(recipe.data.kind, "openmoji");
    let s2 = recipe.stage2.as_ref().unwrap();
    assert_eq!(s2.modalities, ["audio", "depth", "thermal", "imu"]);
    let config =
        ImageBindConfig::from_json(include_str!("../../models/default/config.json")).unwrap();
    // Six towers (images and videos share the vision tower).
    assert_eq!(config.modalities().len(), 7);
    // The dataset's IMU traces are [6, 2000].
    assert_eq!(
        (config.inputs.imu_channels, config.inputs.imu_len),
        (6, 2000)
    );
    // All six towers in at most 30 MB of f32 weights.
    let params = Trainable::init(&config, &Tower::ALL, 0, &Device::Cpu).unwrap();
    let n: usize = params
        .named_vars()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    assert!(n * 4 <= 30_000_000, "{n} parameters");
    // The ablation recipes parse and point at the model's config.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/ablations");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let r = Recipe::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(r.model, std::path::Path::new("../config.json"));
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
}

/// Audio models with one long clip per input (`audio_clips = 1`) serve as well as the official
/// three-clip geometry: a one-clip model once built a rank-5 tensor and failed every upload.
#[test]
fn audio_models_with_one_or_three_clips_embed_uploads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wav =
        std::fs::read(root.join("tests/fixtures/imagebind/audio/speech_16k_mono_s16_0.9s.wav"))
            .unwrap();
    for (clip_secs, clips, target_len) in [(5u32, 1usize, 504usize), (2, 3, 204)] {
        let mut config = tiny_config();
        config.inputs.audio_clip_secs = clip_secs;
        config.inputs.audio_clips = clips;
        config.inputs.audio_target_len = target_len;
        config.inputs.audio_stride = 16;
        let params = Trainable::init(&config, &[Tower::Audio], 3, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let meta = CheckpointMeta {
            step: 0,
            epoch: 0,
            seed: 3,
            recipe_hash: recipe_hash(""),
        };
        checkpoint::save(dir.path(), &params, &meta).unwrap();
        std::fs::copy(
            root.join("tests/fixtures/clip/tokenizer/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let mut spec = crate::embed::ModelSpec::new("a", dir.path().display().to_string());
        spec.device = crate::embed::DeviceSpec::Cpu;
        let enc = crate::embed::load_encoder(&spec).unwrap();
        let input = || crate::embed::Input::Bytes {
            modality: crate::embed::Modality::Audio,
            bytes: wav.clone().into(),
        };
        let out = enc.embed_batch(&[input(), input()]).unwrap();
        assert_eq!(out.len(), 2, "{clips} clips");
        for v in &out {
            let v = v.as_ref().unwrap();
            assert_eq!(v.len(), 16);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{clips} clips: norm {norm}");
        }
    }
}
