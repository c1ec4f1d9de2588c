//! `imprint bench --data DIR`: what loading and pre-training cost at scale. Generates (once) a
//! folder of 32x32 colour PNGs and an idx4 file of 3x32x32 images in DIR, then reports for each
//! source the first and second load (empty caches, then warm ones), and a one-epoch pre-training
//! of a small conv net run as a child process: its peak resident memory, images/s, and the size
//! of the run.json and encoder.json it wrote. The PNG folder is pre-trained on twice, from the
//! image cache and from memory, to compare their images/s. Last, each figure beside the goal
//! it answers to.

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use imprint_data::{load_with, Preprocess, Storage};
use imprint_pipeline::provenance::read_run_info;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const SIDE: u32 = 32;
const LABELED_PER_CLASS: usize = 50;

/// What to generate: `png` images in a folder, `idx` images in one idx4 file; the memory budget
/// (MiB) the idx file is read within.
pub struct Sizes {
    pub png: usize,
    pub idx: usize,
    pub idx_budget_mb: u64,
}

/// The goals: peak memory of a pre-training epoch on the idx source, the records of a run
/// (run.json and the encoder sidecar), the second load against the first, and pre-training
/// from the image cache against in memory.
const PEAK_GOAL_MB: f64 = 1536.0;
const RECORDS_GOAL_BYTES: u64 = 64 << 10;
const SECOND_LOAD_GOAL: f64 = 10.0;
const CACHE_SPEED_GOAL: f64 = 0.9;

/// A smooth colour ramp with noise: compresses like a photo more than noise does.
fn picture(rng: &mut ChaCha8Rng) -> RgbImage {
    let (r0, g0, b0): (u8, u8, u8) = (rng.gen(), rng.gen(), rng.gen());
    let mut img = RgbImage::new(SIDE, SIDE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let noise: u8 = rng.gen_range(0..24);
        let ramp = (x * 4 + y * 3) as u8;
        px.0 = [
            r0.wrapping_add(ramp) ^ noise,
            g0.wrapping_add(y as u8 * 6) ^ noise,
            b0.wrapping_add(x as u8 * 6) ^ noise,
        ];
    }
    img
}

/// `count` PNGs under `dir/<class>/`, ten classes; done once (a marker file says so).
fn write_pngs(dir: &Path, count: usize, seed: u64) -> Result<()> {
    let marker = dir.join(format!(".complete-{count}"));
    if marker.exists() {
        return Ok(());
    }
    for c in 0..10 {
        std::fs::create_dir_all(dir.join(format!("c{c}")))?;
    }
    (0..count).into_par_iter().try_for_each(|i| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64 * 0x9e37_79b9));
        let path = dir.join(format!("c{}/{i:07}.png", i % 10));
        picture(&mut rng)
            .save(&path)
            .with_context(|| path.display().to_string())
    })?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// An idx4 file of `count` 3x32x32 images (and its labels), done once.
fn write_idx(path: &Path, count: usize) -> Result<()> {
    let marker = path.with_extension(format!("complete-{count}"));
    if marker.exists() {
        return Ok(());
    }
    let len = 3 * (SIDE * SIDE) as usize;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&[0, 0, 8, 4])?;
    for d in [count as u32, 3, SIDE, SIDE] {
        out.write_all(&d.to_be_bytes())?;
    }
    let chunk = 4096;
    for start in (0..count).step_by(chunk) {
        let n = chunk.min(count - start);
        let mut block = vec![0u8; n * len];
        block.par_chunks_mut(len).enumerate().for_each(|(k, img)| {
            let mut rng = ChaCha8Rng::seed_from_u64((start + k) as u64);
            let pic = picture(&mut rng);
            let plane = (SIDE * SIDE) as usize;
            for (p, px) in pic.pixels().enumerate() {
                for c in 0..3 {
                    img[c * plane + p] = px.0[c];
                }
            }
        });
        out.write_all(&block)?;
    }
    out.flush()?;
    let labels = path.with_file_name(
        path.file_name()
            .and_then(|n| n.to_str())
            .context("idx file name")?
            .replace("images-idx4", "labels-idx1"),
    );
    let mut l = vec![0, 0, 8, 1];
    l.extend_from_slice(&(count as u32).to_be_bytes());
    l.extend((0..count).map(|i| (i % 10) as u8));
    std::fs::write(labels, l)?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// Peak resident memory (bytes) and wall seconds of a child command, which must succeed.
fn run_measured(cmd: &mut Command) -> Result<(u64, f64)> {
    let start = Instant::now();
    let child = cmd.spawn().context("cannot start a child imprint")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    ensure!(waited == pid, "waiting for the child failed");
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child `{cmd:?}` failed"
    );
    // Linux reports kilobytes.
    Ok((usage.ru_maxrss as u64 * 1024, seconds))
}

/// The last epoch's images/s in a pre-training's loss.csv.
fn images_per_second(loss_csv: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(loss_csv).context(loss_csv.display().to_string())?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty loss.csv")?.split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "images_per_second")
        .context("no images_per_second column")?;
    let last = lines.last().context("no epoch in loss.csv")?;
    Ok(last.split(',').nth(col).context("short row")?.parse()?)
}

struct Pretraining {
    peak_bytes: u64,
    images_per_second: f64,
    load_seconds: f64,
    run_json: u64,
    encoder_json: u64,
    manifest: u64,
}

/// One epoch of a small conv net on `unlabeled`, in a child process, with `budget_mb` and
/// `cache`; `labeled` gives the classes (30% held out as the test set).
fn pretrain(
    dir: &Path,
    name: &str,
    (unlabeled, labeled): (&Path, &Path),
    budget_mb: u64,
    cache: &Path,
) -> Result<Pretraining> {
    let pipeline = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"name = "{name}"
[data]
unlabeled = '{}'
labeled = '{}'
memory_budget_mb = {budget_mb}
[pretrain]
architecture = {{ kind = "conv", channels = [8, 16], kernel = 3, stride = 2, latent = 32 }}
epochs = 1
batch_size = 256
holdout_fraction = 0.01
[compare]
strategies = ["scratch"]
labels_per_class = [1]
seeds = [0]
"#,
        unlabeled.display(),
        labeled.display()
    );
    std::fs::write(&pipeline, text)?;
    let out = dir.join("runs").join(name);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("pretrain")
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--out")
        .arg(&out)
        .arg("--force")
        .env("IMPRINT_CACHE_DIR", cache)
        .stdout(std::process::Stdio::null());
    let (peak_bytes, _) = run_measured(&mut cmd)?;
    let size = |f: &str| std::fs::metadata(out.join(f)).map_or(0, |m| m.len());
    let run = read_run_info(&out.join("run.json"))?;
    let load_seconds = run
        .stages
        .iter()
        .find(|s| s.name == "load data")
        .map_or(f64::NAN, |s| s.seconds);
    Ok(Pretraining {
        peak_bytes,
        images_per_second: images_per_second(&out.join("loss.csv"))?,
        load_seconds,
        run_json: size("run.json"),
        encoder_json: size("encoder.json"),
        manifest: size(imprint_data::MANIFEST_FILE),
    })
}

/// Seconds of a load of `source` within `storage`.
fn timed_load(source: &Path, storage: &Storage) -> Result<f64> {
    let start = Instant::now();
    let ds = load_with(source, &Preprocess::default(), storage)?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "  loaded {} in {seconds:.2} s, {}",
        ds.describe().split(',').next().unwrap_or(""),
        if ds.pixels.is_on_disk() {
            "on disk"
        } else {
            "in memory"
        }
    );
    Ok(seconds)
}

fn fresh_cache(dir: &Path, name: &str) -> Result<PathBuf> {
    let cache = dir.join(format!("cache-{name}"));
    if cache.exists() {
        std::fs::remove_dir_all(&cache)?;
    }
    Ok(cache)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn records(p: &Pretraining) -> u64 {
    p.run_json + p.encoder_json
}

/// One goal's line: the figure, the goal, and whether it is met.
fn goal(what: &str, figure: String, goal: String, met: bool) {
    let verdict = if met { "met" } else { "NOT met" };
    println!("goal {what}: {figure} (goal {goal}): {verdict}");
}

fn report(what: &str, first: f64, second: f64, p: &Pretraining) {
    println!(
        "{what}: first load {first:.2} s, second {second:.2} s ({:.0}x); one epoch: peak \
         memory {:.0} MB, {:.0} images/s, load stage {:.2} s; run.json {} bytes, encoder.json \
         {} bytes, {} {} bytes",
        first / second.max(1e-9),
        mb(p.peak_bytes),
        p.images_per_second,
        p.load_seconds,
        p.run_json,
        p.encoder_json,
        imprint_data::MANIFEST_FILE,
        p.manifest
    );
}

pub fn run(dir: &Path, sizes: &Sizes) -> Result<()> {
    if sizes.png == 0 || sizes.idx == 0 {
        bail!("--png-images and --idx-images must be at least 1");
    }
    // The folder is the bench's own, kept between runs (what it generated is reused), and held
    // while the bench writes there.
    let held = imprint_pipeline::prepare_output_dir(dir, false, true, &[])?;
    // Named by their counts, so that runs of other sizes in the same folder keep to their own.
    let (png, labeled, idx) = (
        dir.join(format!("png-{}", sizes.png)),
        dir.join("labeled"),
        dir.join(format!("bench-{}-images-idx4-ubyte", sizes.idx)),
    );
    let start = Instant::now();
    write_pngs(&png, sizes.png, 1)?;
    write_pngs(&labeled, 10 * LABELED_PER_CLASS, 2)?;
    write_idx(&idx, sizes.idx)?;
    println!(
        "data in {} ({:.0} s to generate or find)",
        dir.display(),
        start.elapsed().as_secs_f64()
    );

    // The PNG folder over a budget of half its size (whole MiB, so none for a few images):
    // decoded into the image cache, then read from it; the same pre-training with the images in
    // memory for comparison.
    let below = (sizes.png as u64 * 3 * u64::from(SIDE * SIDE)) >> 21;
    let cache = fresh_cache(dir, "png")?;
    let storage = Storage {
        cache_dir: Some(cache.clone()),
        ..Storage::default()
    }
    .with_budget_mb(below);
    println!("{} PNGs, memory budget {below} MB:", sizes.png);
    let png_first = timed_load(&png, &storage)?;
    let png_second = timed_load(&png, &storage)?;
    let cached = pretrain(dir, "png-cache", (&png, &labeled), below, &cache)?;
    report("PNG folder from the cache", png_first, png_second, &cached);
    let in_memory = pretrain(dir, "png-memory", (&png, &labeled), 1 << 20, &cache)?;
    println!(
        "PNG folder in memory: peak memory {:.0} MB, {:.0} images/s; the cache reads at {:.1}% \
         of that",
        mb(in_memory.peak_bytes),
        in_memory.images_per_second,
        100.0 * cached.images_per_second / in_memory.images_per_second
    );

    // The idx file: read from disk image by image, never held whole.
    let cache = fresh_cache(dir, "idx")?;
    let budget = sizes.idx_budget_mb;
    let storage = Storage {
        cache_dir: Some(cache.clone()),
        ..Storage::default()
    }
    .with_budget_mb(budget);
    println!("{} idx images, memory budget {budget} MB:", sizes.idx);
    let first = timed_load(&idx, &storage)?;
    let second = timed_load(&idx, &storage)?;
    let on_disk = pretrain(dir, "idx", (&idx, &labeled), budget, &cache)?;
    report("idx file, on disk", first, second, &on_disk);

    let peak = mb(on_disk.peak_bytes);
    goal(
        "peak memory, idx source",
        format!("{peak:.0} MB for {} images", sizes.idx),
        format!("<= {PEAK_GOAL_MB:.0} MB for 1000000"),
        peak <= PEAK_GOAL_MB,
    );
    let largest = records(&cached)
        .max(records(&in_memory))
        .max(records(&on_disk));
    goal(
        "run.json and sidecars",
        format!("{largest} bytes at most"),
        format!("<= {RECORDS_GOAL_BYTES} bytes"),
        largest <= RECORDS_GOAL_BYTES,
    );
    for (what, first, second) in [("PNG", png_first, png_second), ("idx", first, second)] {
        let speedup = first / second.max(1e-9);
        goal(
            &format!("second load, {what}"),
            format!("{speedup:.0}x faster than the first"),
            format!(">= {SECOND_LOAD_GOAL:.0}x"),
            speedup >= SECOND_LOAD_GOAL,
        );
    }
    let ratio = cached.images_per_second / in_memory.images_per_second;
    goal(
        "pre-training from the image cache",
        format!("{:.1}% of the images/s in memory", 100.0 * ratio),
        format!(">= {:.0}%", 100.0 * CACHE_SPEED_GOAL),
        ratio >= CACHE_SPEED_GOAL,
    );
    held.finish()?;
    Ok(())
}
