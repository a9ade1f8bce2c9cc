//! The fuzz targets' code, one module per target, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by the corpus replay in the test suite (`tests/it/fuzz_replay.rs`), which
//! feeds every committed seed and past finding in `seeds/<target>/` through the same `run`.

pub mod audio;
pub mod depth;
pub mod image;
pub mod imu;
pub mod index_dump;
pub mod multipart;
pub mod store_records;
pub mod text;
pub mod thermal;
pub mod video;

/// libFuzzer's panic hook aborts on every panic, even one that omnibind contains inside a
/// third-party parser (`omnibind::guard`); with Rust's default hook back, only a panic that
/// escapes omnibind's API fails the run. Every target that reaches those parsers (all but
/// `store_records`) calls this at start.
pub fn restore_panic_hook() {
    let _ = std::panic::take_hook();
}
