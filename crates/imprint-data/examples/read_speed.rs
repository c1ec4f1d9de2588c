//! Times the hot path of training on images kept on disk: gathering random batches of 256
//! 3x32x32 images as `f32`, from memory, from a raw idx file read image by image, and from the
//! image cache (each read checked against its CRC-32). The files are in the page cache, as they
//! are after an epoch; the figure is the fastest of many batches, which a busy machine disturbs
//! least.
//!
//! `cargo run --release -p imprint-data --example read_speed [images] [batches] [budget MiB]`
//! (the budget the sources on disk are loaded within, 64 by default: below their size).

use imprint_data::{load_with, Dataset, Preprocess, Storage};
use std::time::{Duration, Instant};

const SIDE: u32 = 32;
const BATCH: usize = 256;

/// An idx3 file of `n` grey 32x32 images (a ramp with noise per image).
fn write_idx(path: &std::path::Path, n: usize) {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n as u32, SIDE, SIDE] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    let mut state = 0x9e37_79b9u32;
    for i in 0..n {
        for p in 0..(SIDE * SIDE) as usize {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            bytes.push((i + p) as u8 ^ (state as u8 & 15));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// The fastest of `batches` gathers of random batches, in microseconds per batch.
fn fastest(ds: &Dataset, batches: usize) -> f64 {
    let len = ds.shape.len();
    let mut out = vec![0.0f32; BATCH * len];
    let mut state = 12345u64;
    let mut best = Duration::MAX;
    for _ in 0..batches {
        let ids: Vec<usize> = (0..BATCH)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 33) as usize % ds.len()
            })
            .collect();
        let start = Instant::now();
        ds.pixels.gather(&ids, &mut out);
        best = best.min(start.elapsed());
    }
    std::hint::black_box(&out);
    best.as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = args.first().copied().unwrap_or(50_000);
    let batches = args.get(1).copied().unwrap_or(400);
    let budget = args.get(2).copied().unwrap_or(64) as u64;
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("speed-images-idx3-ubyte");
    write_idx(&idx, n);
    let cached = |budget_mb: u64| {
        Storage {
            cache_dir: Some(dir.path().join("cache")),
            ..Storage::default()
        }
        .with_budget_mb(budget_mb)
    };
    // Grey to colour makes a converted source, which the image cache holds over the budget.
    let colour = Preprocess {
        channels: Some(3),
        ..Default::default()
    };
    let sources = [
        (
            "3x32x32 in memory",
            load_with(&idx, &colour, &cached(1 << 20)),
        ),
        (
            "3x32x32 from the image cache",
            load_with(&idx, &colour, &cached(budget)),
        ),
        (
            "1x32x32 in memory",
            load_with(&idx, &Preprocess::default(), &cached(1 << 20)),
        ),
        (
            "1x32x32 raw idx from disk",
            load_with(&idx, &Preprocess::default(), &cached(budget)),
        ),
    ];
    println!("{n} images, fastest of {batches} random batches of {BATCH}, budget {budget} MiB:");
    for (what, ds) in sources {
        let ds = ds.unwrap();
        // One pass first, so that every page is in the page cache.
        fastest(&ds, 1);
        let micros = fastest(&ds, batches);
        println!("  {what:32} {micros:8.0} us per batch ({:?})", ds.pixels);
    }
}
