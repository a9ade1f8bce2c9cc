//! Deterministic replay of the committed fuzz corpora: every file in `fuzz/seeds/<target>/`
//! (valid inputs of every accepted format, and every input that once failed a target, named
//! `*_regress_*`) goes through the target's own code in `fuzz/harness/`, exactly as libFuzzer
//! would feed it. A panic that escapes omnibind's API fails the test with the file's name.
//! Exploratory fuzzing (new inputs, coverage guidance) is `fuzz/smoke.sh`, run by hand.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[path = "../../fuzz/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

/// Feeds every seed of `target` to `run`; a failure names every input that failed and why.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let bytes = std::fs::read(file).unwrap();
            catch_unwind(AssertUnwindSafe(|| run(&bytes)))
                .err()
                .map(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    format!("{}: {why}", file.display())
                })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{target}: {} of {} seeds failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// One test per fuzz target, named after it, replaying `fuzz/seeds/<target>/`.
macro_rules! replay_targets {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), harness::$target::run);
            }
        )*
    };
}

replay_targets!(
    audio,
    depth,
    image,
    imu,
    index_dump,
    multipart,
    store_records,
    text,
    thermal,
    video
);
