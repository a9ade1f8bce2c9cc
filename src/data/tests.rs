//! The whole command over the hand-made package in tests/fixtures/openmoji-mini.

use std::path::{Path, PathBuf};

use super::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openmoji-mini/openmoji-mini-1.0.0.tgz")
}

fn options(out: &Path) -> OpenMojiOptions {
    let mut o = OpenMojiOptions::new(fixture(), out);
    o.audio = false;
    o.image_size = 64;
    o
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn reads_the_package() {
    let pkg = package::read_package(&fixture()).unwrap();
    assert_eq!(
        (pkg.name.as_str(), pkg.version.as_str()),
        ("openmoji-mini", "1.0.0")
    );
    assert_eq!(pkg.emojis.len(), 9);
    assert_eq!(pkg.svgs.len(), 8, "colour SVGs only");
    assert!(pkg.svgs.contains_key("1F3C3-1F3FD"));
    assert_eq!(pkg.sha256.len(), 64);
    assert!(package::read_package_bytes(b"not a tgz").is_err());
}

#[test]
fn builds_the_dataset_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let summary = openmoji(&options(&out)).unwrap();
    assert_eq!(summary.rows, 9);
    assert_eq!(summary.items, 7);
    let skipped: Vec<&str> = summary.skipped.iter().map(|s| s.hexcode.as_str()).collect();
    assert_eq!(skipped, ["1F7E9", "E000"]);
    assert!(
        summary.skipped[1].reason.contains("parse"),
        "{:?}",
        summary.skipped
    );

    let items = read_manifest(&out.join("manifest.jsonl")).unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0].hexcode, "1F600");
    assert_eq!(items[0].captions[0], "grinning face");
    assert!(items.iter().all(|i| i.audio.is_empty()));
    // Motion classes by annotation; the rest have no IMU.
    let class = |h: &str| {
        let i = items.iter().find(|i| i.hexcode == h).unwrap();
        (i.imu_class.clone(), i.imu.len())
    };
    assert_eq!(class("1F3C3"), (Some("running".into()), IMU_PER_ITEM));
    assert_eq!(class("1F3C3-1F3FD"), (Some("running".into()), IMU_PER_ITEM));
    assert_eq!(class("1F6B2"), (Some("cycling".into()), IMU_PER_ITEM));
    assert_eq!(class("1F697"), (Some("car".into()), IMU_PER_ITEM));
    assert_eq!(class("1F600"), (None, 0));
    assert_eq!(summary.imu_classes["running"], 2);

    for item in &items {
        let img = image::open(out.join(&item.image)).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 64));
        assert!(
            img.pixels().any(|p| p.0 != [255, 255, 255]),
            "{}",
            item.hexcode
        );
        let depth = fs::read(out.join(&item.depth)).unwrap();
        let map = crate::embed::preprocess::depth::decode_depth(&depth).unwrap();
        assert_eq!((map.height, map.width), (64, 64));
        let thermal = crate::embed::preprocess::thermal::preprocess(
            &fs::read(out.join(&item.thermal)).unwrap(),
            64,
        );
        assert!(thermal.is_ok(), "{:?}", thermal.err());
        for p in &item.imu {
            let a =
                crate::embed::preprocess::npy::read_npy(&fs::read(out.join(p)).unwrap()).unwrap();
            assert_eq!(a.shape, [6, imu::SAMPLES]);
        }
    }
    // Counts agree with the manifest.
    let total = |m: &str| summary.modalities[m].values().sum::<usize>();
    assert_eq!(total("image"), 7);
    assert_eq!(total("imu"), 4 * IMU_PER_ITEM);
    assert_eq!(total("audio"), 0);
    assert_eq!(summary.splits.values().sum::<usize>(), 7);
    // Computed split: variants follow their base.
    let split_of = |h: &str| items.iter().find(|i| i.hexcode == h).unwrap().split;
    assert_eq!(split_of("1F3C3"), split_of("1F3C3-1F3FD"));
    let license = fs::read_to_string(out.join("LICENSE-DATA.md")).unwrap();
    assert!(license.contains("CC BY-SA 4.0") && license.contains("openmoji-mini@1.0.0"));
    // A second run into the same directory is refused.
    assert!(openmoji(&options(&out)).is_err());
}

#[test]
fn same_input_and_seed_give_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    openmoji(&options(&a)).unwrap();
    openmoji(&options(&b)).unwrap();
    assert_eq!(files(&a), files(&b));
    let mut other = options(&c);
    other.seed = 18;
    openmoji(&other).unwrap();
    let (fa, fc) = (files(&a), files(&c));
    assert_eq!(fa.len(), fc.len());
    let differ = |name: &str| {
        let x = fa.iter().find(|f| f.0 == name).unwrap();
        let y = fc.iter().find(|f| f.0 == name).unwrap();
        x.1 != y.1
    };
    assert!(!differ("images/1F600.png"), "rendering has no randomness");
    assert!(differ("depth/1F600.png") && differ("imu/1F3C3-0.npy"));
}

#[test]
fn heldout_file_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("heldout.txt");
    fs::write(&list, "# test list\n1F697\n2B50\n").unwrap();
    let mut o = options(&dir.path().join("ds"));
    o.heldout = Some(list);
    o.limit = Some(5);
    let summary = openmoji(&o).unwrap();
    assert_eq!(summary.items, 5);
    let items = read_manifest(&dir.path().join("ds/manifest.jsonl")).unwrap();
    let held: Vec<&str> = items
        .iter()
        .filter(|i| i.split == Split::Heldout)
        .map(|i| i.hexcode.as_str())
        .collect();
    assert_eq!(held, ["1F697"]);
    assert_eq!(summary.splits["heldout"], 1);
    let copy = fs::read_to_string(dir.path().join("ds/heldout.txt")).unwrap();
    assert_eq!(
        split::read_file(&copy),
        ["1F697".to_owned(), "2B50".to_owned()].into()
    );
}

#[test]
fn audio_when_espeak_is_installed() {
    if audio::espeak_version().is_err() {
        eprintln!("espeak-ng not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&dir.path().join("ds"));
    o.audio = true;
    o.limit = Some(2);
    let summary = openmoji(&o).unwrap();
    assert!(summary.tools.contains_key("espeak-ng"));
    let items = read_manifest(&dir.path().join("ds/manifest.jsonl")).unwrap();
    for item in &items {
        assert_eq!(item.audio.len(), AUDIO_VARIANTS);
        for a in &item.audio {
            let bytes = fs::read(dir.path().join("ds").join(&a.path)).unwrap();
            assert!(bytes.starts_with(b"RIFF"));
        }
    }
}
