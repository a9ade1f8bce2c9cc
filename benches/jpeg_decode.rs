//! Criterion benchmark of JPEG decoding: libjpeg-turbo's decoder (the default, through the
//! `libjpeg-turbo` feature, what `decode_rgb` runs) against the pure-Rust decoder of the `image`
//! crate (zune-jpeg, what a build without the feature runs), on one baseline 4:2:0 JPEG of
//! 4000 x 3000 pixels, quality 90. Figures: BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, RgbImage};
use omnibind::embed::preprocess::image::decode_rgb;

/// A 4000 x 3000 picture: the project's 1024 x 768 test photo tiled, mirrored at the seams.
fn picture() -> RgbImage {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clip/images/png_rgb_1024x768.png"
    );
    let tile = image::open(path).unwrap().into_rgb8();
    let (tw, th) = tile.dimensions();
    RgbImage::from_fn(4000, 3000, |x, y| {
        let (i, j) = (x / tw, y / th);
        let (u, v) = (x % tw, y % th);
        let u = if i % 2 == 1 { tw - 1 - u } else { u };
        let v = if j % 2 == 1 { th - 1 - v } else { v };
        *tile.get_pixel(u, v)
    })
}

fn decode(c: &mut Criterion) {
    let picture = picture();
    let mut baseline = Vec::new();
    JpegEncoder::new_with_quality(&mut baseline, 90)
        .encode_image(&picture)
        .unwrap();
    let mut group = c.benchmark_group("jpeg_decode_4000x3000");
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter("decode_rgb"), |b| {
        b.iter(|| decode_rgb(&baseline).unwrap())
    });
    group.bench_function(BenchmarkId::from_parameter("image_crate_pure_rust"), |b| {
        b.iter(|| {
            image::load_from_memory_with_format(&baseline, ImageFormat::Jpeg)
                .map(DynamicImage::into_rgb8)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
