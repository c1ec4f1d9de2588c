//! Loading within a memory budget: idx files read from disk, the image cache's reuse and rebuilding,
//! and colour idx files.

use crate::tests::{idx_in_tempdir, load_err, shape};
use crate::testutil::*;
use crate::{load, load_with, Preprocess, Storage};
use image::{ImageBuffer, Rgb};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn cached(dir: &Path, budget: u64) -> Storage {
    Storage {
        memory_budget: budget,
        cache_dir: Some(dir.to_path_buf()),
        ..Storage::default()
    }
}

/// A temporary folder with a folder source `imgs` of `count` 3x2 colour images in each of
/// classes `a` and `b`, and the path of a cache folder `cache` beside it (not made).
fn colour_folder(count: u8) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, cache) = (tmp.path().join("imgs"), tmp.path().join("cache"));
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..count {
            let img = ImageBuffer::from_fn(3, 2, |x, y| Rgb([i * 9, x as u8 * 80, y as u8 * 120]));
            img.save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    (tmp, root, cache)
}

/// The one image cache file under `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

/// Marks a file as written long ago: a rewrite shows as a recent time.
fn backdate(path: &Path) -> SystemTime {
    let past = SystemTime::now() - Duration::from_secs(3600);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(past).unwrap();
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// A raw idx file over the budget is read from disk image by image, within it into memory;
/// either way it reads as its gzipped copy does.
#[test]
fn a_raw_idx_file_over_the_budget_is_read_from_disk_as_its_gzipped_copy() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..5 * 6).map(|i| (i * 37 % 256) as u8).collect();
    let raw = dir.path().join("raw-images-idx3-ubyte");
    let gz = dir.path().join("gz-images-idx3-ubyte.gz");
    write_idx_images(&raw, 5, 2, 3, &pixels);
    write_idx_images(&gz, 5, 2, 3, &pixels);
    let tight = Storage::default().with_budget_mb(0);
    let on_disk = load_with(&raw, &Preprocess::default(), &tight).unwrap();
    let in_memory = load(&raw, &Preprocess::default()).unwrap();
    let read = load_with(&gz, &Preprocess::default(), &tight).unwrap();
    assert!(on_disk.pixels.is_on_disk());
    assert!(!in_memory.pixels.is_on_disk() && !read.pixels.is_on_disk());
    let values: Vec<f32> = pixels.iter().map(|&b| f32::from(b) / 255.0).collect();
    for ds in [&on_disk, &in_memory, &read] {
        assert_eq!(ds.pixels.to_vec(), values);
    }
}

#[test]
fn colour_idx4_files_load_channel_major_with_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c-images-idx4-ubyte");
    // two 3x1x2 images: channel planes back to back
    let pixels = [10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61];
    let mut bytes = vec![0, 0, 8, 4];
    for d in [2u32, 3, 1, 2] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(&pixels);
    std::fs::write(&img, &bytes).unwrap();
    write_idx_labels(&dir.path().join("c-labels-idx1-ubyte"), &[1, 0]);
    let ds = load(&img, &Preprocess::default()).unwrap();
    assert_eq!(ds.shape, shape(3, 1, 2));
    assert_eq!(ds.labels, Some(vec![1, 0]));
    assert_eq!(ds.pixels.bytes(1), &pixels[6..]);
    // resized, the colours stay in their planes
    let prep = Preprocess {
        height: Some(2),
        width: Some(4),
        ..Default::default()
    };
    let wide = load(&img, &prep).unwrap();
    assert_eq!(wide.shape.len(), 24);
    let first = wide.pixels.bytes(0);
    assert!(
        first[..8].iter().all(|&b| (10..=11).contains(&b)),
        "{first:?}"
    );
    assert!(
        first[16..].iter().all(|&b| (30..=31).contains(&b)),
        "{first:?}"
    );
    bytes[8..12].copy_from_slice(&2u32.to_be_bytes());
    bytes.truncate(20 + 8);
    std::fs::write(&img, &bytes).unwrap();
    let err = load_err(&img);
    assert!(
        err.ends_with("idx4 images must have 1 or 3 channels, found 2"),
        "{err}"
    );
}

#[test]
fn a_folder_over_budget_is_cached_reused_and_rebuilt_when_a_file_changes() {
    let (_tmp, root, cache) = colour_folder(4);
    let storage = cached(&cache, 0);
    let in_memory = load(&root, &Preprocess::default()).unwrap();
    let first = load_with(&root, &Preprocess::default(), &storage).unwrap();
    assert!(first.pixels.is_on_disk() && !in_memory.pixels.is_on_disk());
    assert_eq!(first.pixels.to_vec(), in_memory.pixels.to_vec());
    assert_eq!(first.source.summary(), in_memory.source.summary());
    let file = cache_file(&cache);
    let written = backdate(&file);

    // unchanged (even touched): the cache is read, not written
    let touched = root.join("a/0.png");
    std::fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let again = load_with(&root, &Preprocess::default(), &storage).unwrap();
    assert_eq!(modified(&file), written, "reused");
    assert_eq!(again.pixels.to_vec(), first.pixels.to_vec());
    assert_eq!(again.shape, first.shape);

    // one image changed: rebuilt, with the new content
    ImageBuffer::from_pixel(3, 2, Rgb([255u8, 255, 255]))
        .save(&touched)
        .unwrap();
    let changed = load_with(&root, &Preprocess::default(), &storage).unwrap();
    assert_ne!(modified(&file), written, "rebuilt");
    assert_ne!(
        changed.source.summary().sha256,
        first.source.summary().sha256
    );
    assert!(changed.pixels.bytes(0).iter().all(|&b| b == 255));
    assert_eq!(changed.pixels.bytes(1), first.pixels.bytes(1));
    assert_eq!(
        cache_file(&cache),
        file,
        "one cache file per source and shape"
    );
}

#[test]
fn a_truncated_or_corrupt_cache_is_rebuilt() {
    let (_tmp, root, cache) = colour_folder(3);
    let storage = cached(&cache, 0);
    // the values, not the dataset: it reads the file this test then overwrites in place
    let good = load_with(&root, &Preprocess::default(), &storage)
        .unwrap()
        .pixels
        .to_vec();
    let file = cache_file(&cache);
    let whole = std::fs::read(&file).unwrap();
    for bad in [whole[..whole.len() / 2].to_vec(), b"junk".to_vec()] {
        std::fs::write(&file, &bad).unwrap();
        let ds = load_with(&root, &Preprocess::default(), &storage).unwrap();
        assert_eq!(ds.pixels.to_vec(), good);
        assert_eq!(std::fs::read(&file).unwrap(), whole);
    }
}

/// A cache whose image bytes changed since they were written is rebuilt, with a notice saying
/// which file and why; the images read are the source's.
#[test]
fn a_cache_whose_bytes_changed_is_rebuilt_with_a_notice() {
    let (_tmp, root, cache) = colour_folder(3);
    let storage = cached(&cache, 0);
    let good = load_with(&root, &Preprocess::default(), &storage)
        .unwrap()
        .pixels
        .to_vec();
    assert!(storage.notices.take().is_empty());
    let file = cache_file(&cache);
    let whole = std::fs::read(&file).unwrap();
    let mut changed = whole.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x40;
    std::fs::write(&file, &changed).unwrap();
    let ds = load_with(&root, &Preprocess::default(), &storage).unwrap();
    assert_eq!(ds.pixels.to_vec(), good);
    assert_eq!(std::fs::read(&file).unwrap(), whole);
    assert_eq!(
        storage.notices.take(),
        [format!(
            "{}: the image cache's bytes are not those written (image 5 no longer matches its \
             checksum); rebuilding it",
            file.display()
        )]
    );
}

#[test]
fn converted_idx_images_over_budget_are_cached_too() {
    let pixels = [0, 60, 120, 180, 1, 2, 3, 4, 255, 0, 255, 0];
    let (tmp, img) = idx_in_tempdir("g-images-idx3-ubyte.gz", (3, 2, 2), &pixels);
    let prep = Preprocess {
        channels: Some(3),
        height: Some(4),
        width: Some(4),
        ..Default::default()
    };
    let cache = tmp.path().join("cache");
    let in_memory = load(&img, &prep).unwrap();
    let first = load_with(&img, &prep, &cached(&cache, 0)).unwrap();
    assert!(first.pixels.is_on_disk());
    assert_eq!(first.pixels.to_vec(), in_memory.pixels.to_vec());
    let file = cache_file(&cache);
    let written = backdate(&file);
    let again = load_with(&img, &prep, &cached(&cache, 0)).unwrap();
    assert_eq!(modified(&file), written);
    assert_eq!(again.pixels.to_vec(), in_memory.pixels.to_vec());
}

#[test]
fn within_budget_nothing_is_cached_but_digests() {
    let (_tmp, root, cache) = colour_folder(2);
    let ds = load_with(&root, &Preprocess::default(), &cached(&cache, 1 << 20)).unwrap();
    assert!(!ds.pixels.is_on_disk());
    assert!(!cache.join("images").exists());
    assert!(cache.join("hashes").is_dir());
}
