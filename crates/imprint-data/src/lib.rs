//! Image datasets for transfer-learning experiments.
//!
//! [`load`] turns an idx file (MNIST-style, raw or gzipped), a folder of images or a CSV list of
//! `path,label` rows into one [`Dataset`] of 8-bit pixels, CHW order, read as `f32` in `[0, 1]` a
//! batch at a time ([`Pixels`]), with the [`Manifest`] of the files read (size and sha256 of
//! each, and one digest of them all), so a run can say exactly what it saw. [`load_with`] keeps
//! a source larger than the memory budget on disk and remembers file digests ([`Storage`]).
//! [`split`] draws seeded label budgets and train/test splits, [`augment`] shifts images,
//! [`photo`] holds SimCLR-style photo augmentations, and [`fetch`] downloads MNIST.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

pub mod augment;
pub mod fetch;
mod fingerprint;
mod hash_cache;
mod idx;
mod image_cache;
mod images;
mod manifest;
mod near;
pub mod photo;
mod pixels;
pub mod split;
mod storage;

pub use fingerprint::{correlation, distance, fingerprint, Fingerprint};
pub use idx::{
    parse_idx, IdxArray, IMAGES4_MAGIC as IDX_IMAGES4_MAGIC, IMAGES_MAGIC as IDX_IMAGES_MAGIC,
    LABELS_MAGIC as IDX_LABELS_MAGIC,
};
pub use images::{survey_folder, Survey};
pub use images::{DEFAULT_SIDE, MAX_IMAGE_SIDE};
pub use manifest::{
    first_change, read_manifest, write_manifests, Manifest, ManifestEntry, SourceRecord,
    SourceSummary, MANIFEST_FILE,
};
pub use near::{near_pairs_between, near_pairs_within, NearIndex, NearPair, MIN_CORRELATION};
pub use pixels::{Pixels, ReadFailure};
pub use storage::{default_cache_dir, Notices, Storage, DEFAULT_MEMORY_BUDGET_MB};

/// Everything that can go wrong reading, sampling or fetching data. Each message is one line that
/// starts with the file (or item) concerned, so it can be printed as is.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its contents are unusable.
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
    /// A problem on one line of a CSV list.
    #[error("{path}: line {line}: {msg}")]
    Csv {
        path: String,
        line: u64,
        msg: String,
    },
    #[error("{item}: label out of range: {label:?} is not one of the {count} classes ({list})")]
    LabelOutOfRange {
        item: String,
        label: String,
        count: usize,
        list: String,
    },
    /// A label budget or split that the labels cannot satisfy.
    #[error("{0}")]
    Sampling(String),
    /// Downloading or unpacking a dataset failed.
    #[error("{0}")]
    Fetch(String),
    #[error(transparent)]
    Fs(#[from] imprint_fs::FsError),
}

pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// `n` images of `shape`, image `i` decoded by `fill(i, bytes)` in parallel: in memory when
/// they fit the budget (or there is no cache folder), else from the cache file `cache` (a path
/// and the source's manifest digest) when it holds them, checked, or into a new one. An error instead of an
/// abort when the size cannot be held, e.g. from a corrupt header or a mistyped preprocess size.
pub(crate) fn decode_images(
    path: &Path,
    n: usize,
    shape: ImageShape,
    storage: &Storage,
    cache: Option<(&Path, &str)>,
    fill: impl Fn(usize, &mut [u8]) -> Result<()> + Sync,
) -> Result<Pixels> {
    let total = [shape.channels, shape.height, shape.width]
        .iter()
        .try_fold(n, |acc, &d| acc.checked_mul(d));
    let too_big = || invalid(path, format!("{n} images of {shape} do not fit in memory"));
    let total = total.ok_or_else(too_big)?;
    let budget = usize::try_from(storage.memory_budget).unwrap_or(usize::MAX);
    if let Some((file, digest)) = cache.filter(|_| total > budget) {
        match image_cache::open(file, n, digest)? {
            image_cache::Cached::Usable(cached, pixels) if cached == shape => return Ok(pixels),
            image_cache::Cached::Damaged(why) => storage.notices.push(format!(
                "{}: the image cache's bytes are not those written ({why}); rebuilding it",
                file.display()
            )),
            _ => {}
        }
        return image_cache::build(file, shape, n, digest, budget, fill);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(total).map_err(|_| too_big())?;
    v.resize(total, 0);
    v.par_chunks_mut(shape.len())
        .enumerate()
        .try_for_each(|(i, out)| fill(i, out))?;
    Ok(Pixels::from_bytes(v, shape.len()))
}

/// Size of one image in the order the pixels are stored (channels, then rows, then columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// Number of `f32` values per image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// How images become model input; all fields optional = keep the source's own.
///
/// A model pre-trained on one source is fine-tuned on another, so both must be brought to the
/// same shape; this is the one place that happens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// 1 for grey, 3 for RGB.
    #[serde(default)]
    pub channels: Option<usize>,
    #[serde(default)]
    pub height: Option<usize>,
    #[serde(default)]
    pub width: Option<usize>,
    /// Replace each value `x` by `1 - x` (dark-on-light scans vs light-on-dark MNIST).
    #[serde(default)]
    pub invert: bool,
    /// Per-channel mean subtracted before the encoder, with `std`, as networks trained elsewhere
    /// expect (ImageNet's: 0.485, 0.456, 0.406). Applied by the encoder itself, so that
    /// augmentation and reconstruction see pixels in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation the encoder divides by (ImageNet's: 0.229, 0.224, 0.225).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
}

/// Per-channel normalisation, `(x - mean[c]) / std[c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Preprocess {
    /// The normalisation the encoder applies, if any.
    pub fn normalize(&self) -> Option<Normalize> {
        match (&self.mean, &self.std) {
            (Some(mean), Some(std)) => Some(Normalize {
                mean: mean.clone(),
                std: std.clone(),
            }),
            _ => None,
        }
    }

    /// What is wrong with the normalisation for images of `channels` channels, if anything.
    pub fn normalize_problem(&self, channels: usize) -> Option<String> {
        match (&self.mean, &self.std) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                Some("preprocess mean and std go together: give both or neither".into())
            }
            (Some(mean), Some(std)) => {
                if mean.len() != channels || std.len() != channels {
                    Some(format!(
                        "preprocess mean and std need one value per channel ({channels}), got {} and {}",
                        mean.len(),
                        std.len()
                    ))
                } else if !std.iter().all(|s| *s > 0.0 && s.is_finite())
                    || !mean.iter().all(|m| m.is_finite())
                {
                    Some("preprocess std must be positive and mean finite".into())
                } else {
                    None
                }
            }
        }
    }

    /// Rejects settings no model could use, before any file is decoded.
    fn check(&self, path: &Path) -> Result<()> {
        if let Some(c) = self.channels {
            if c != 1 && c != 3 {
                return Err(invalid(
                    path,
                    format!("preprocess channels must be 1 or 3, got {c}"),
                ));
            }
        }
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if v == Some(0) {
                return Err(invalid(
                    path,
                    format!("preprocess {name} must be at least 1"),
                ));
            }
        }
        Ok(())
    }
}

/// Provenance of one file (a checkpoint started from; the data files of older records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Images with their labels and where they came from.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub shape: ImageShape,
    /// `len()` images of `shape.len()` bytes each, CHW row-major, read as values in `[0, 1]`.
    pub pixels: Pixels,
    /// Index into `classes`; `None` when unlabeled.
    pub labels: Option<Vec<usize>>,
    /// Class names; label `i` means `classes[i]`.
    pub classes: Vec<String>,
    /// One id per image for audit: the image path, or `path/to/file-idx3-ubyte#123`.
    pub items: Vec<String>,
    /// The files read, shared by every subset.
    pub source: Arc<Manifest>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Pixels of image `i` as values. Panics if `i >= len()` (a caller bug, not a data problem).
    pub fn image(&self, i: usize) -> Vec<f32> {
        self.pixels.image(i)
    }

    /// Name of the class of image `i`, if labeled.
    pub fn label_name(&self, i: usize) -> Option<&str> {
        let label = *self.labels.as_ref()?.get(i)?;
        self.classes.get(label).map(String::as_str)
    }

    /// The images at `indices`, in that order; classes and provenance are kept whole so labels
    /// keep their meaning. Panics on an index `>= len()` (a caller bug).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            shape: self.shape,
            pixels: self.pixels.subset(indices),
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            classes: self.classes.clone(),
            items: indices.iter().map(|&i| self.items[i].clone()).collect(),
            source: Arc::clone(&self.source),
        }
    }

    /// A digest of each image's content (its pixels as loaded): equal for the same image
    /// listed twice, linked under two names, or copied into two folders.
    pub fn digests(&self) -> Vec<u64> {
        (0..self.len())
            .into_par_iter()
            .map(|i| {
                let d = Sha256::digest(self.pixels.bytes(i));
                u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
            })
            .collect()
    }

    /// The perceptual fingerprint of each image (see [`fingerprint`]), from its pixels as
    /// loaded: within a few bits for a re-encoded or re-saved copy.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        (0..self.len())
            .into_par_iter()
            .map(|i| fingerprint(&self.pixels.bytes(i), self.shape))
            .collect()
    }

    /// Images per class, in class order; empty if unlabeled.
    pub fn class_counts(&self) -> Vec<(String, usize)> {
        let Some(labels) = &self.labels else {
            return Vec::new();
        };
        let mut counts = vec![0usize; self.classes.len()];
        for &l in labels {
            if let Some(c) = counts.get_mut(l) {
                *c += 1;
            }
        }
        self.classes.iter().cloned().zip(counts).collect()
    }

    /// One line for logs, e.g. `1797 images 1x8x8, 10 classes: 0:178 1:182 ...`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} images {}", self.len(), self.shape);
        if self.labels.is_none() {
            s.push_str(", unlabeled");
            return s;
        }
        let _ = write!(s, ", {} classes:", self.classes.len());
        for (name, count) in self.class_counts() {
            let _ = write!(s, " {name}:{count}");
        }
        s
    }

    /// Re-index labels onto a given class list (e.g. the labeled training set's classes) so a
    /// test set agrees with it; a label not in `classes` is an error naming the item and label.
    pub fn align_classes(&self, classes: &[String]) -> Result<Dataset> {
        let mut out = self.clone();
        out.classes = classes.to_vec();
        let Some(labels) = &self.labels else {
            return Ok(out);
        };
        let mut mapped = Vec::with_capacity(labels.len());
        for (i, &l) in labels.iter().enumerate() {
            let item = self
                .items
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("#{i}"));
            let name = self
                .classes
                .get(l)
                .cloned()
                .unwrap_or_else(|| l.to_string());
            match classes.iter().position(|c| *c == name) {
                Some(j) => mapped.push(j),
                None => {
                    return Err(DataError::LabelOutOfRange {
                        item,
                        label: name,
                        count: classes.len(),
                        list: abbreviate(classes),
                    })
                }
            }
        }
        out.labels = Some(mapped);
        Ok(out)
    }
}

/// Class list for an error message, cut short so the message stays one readable line.
fn abbreviate(classes: &[String]) -> String {
    const SHOW: usize = 12;
    let mut s = classes
        .iter()
        .take(SHOW)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    if classes.len() > SHOW {
        let _ = write!(s, " ... and {} more", classes.len() - SHOW);
    }
    s
}

/// `share` (0.07) as a percentage for reports (7), rounded to 0.01%: `0.07 * 100.0` alone
/// prints 7.000000000000001.
pub fn percent(share: f64) -> f64 {
    (share * 1e4).round() / 100.0
}

/// Loads a dataset, choosing the reader by the path: a directory is a folder of images
/// (one sub-folder per class, or images directly inside for unlabeled data; a folder with no
/// images but a single `*images-idx3*` or `*images-idx4*` file loads that file), a `.csv` file
/// is a `path,label` list, and a file whose name contains `idx` is an idx image file (raw or
/// `.gz`) with its labels read from the `labels-idx1` file beside it when present. Everything is
/// held in memory and hashed afresh: [`load_with`] takes a budget and a cache folder.
pub fn load(path: &Path, prep: &Preprocess) -> Result<Dataset> {
    load_with(path, prep, &Storage::default())
}

/// [`load`] within `storage`'s memory budget, remembering file digests and decoded images in
/// its cache folder.
pub fn load_with(path: &Path, prep: &Preprocess, storage: &Storage) -> Result<Dataset> {
    prep.check(path)?;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut ds = if meta.is_dir() {
        images::load_dir(path, prep, storage)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        images::load_csv(path, prep, storage)?
    } else if name.contains("idx") {
        idx::load_idx(path, path, prep, storage)?
    } else {
        return Err(invalid(
            path,
            "unknown data source: expected a folder of images, a .csv list, \
             or an idx file (name containing \"idx\")",
        ));
    };
    if ds.is_empty() {
        return Err(invalid(path, "no images found"));
    }
    if prep.invert {
        ds.pixels = ds.pixels.inverted();
    }
    Ok(ds)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;

    /// Writes an idx image file (`images` is n*h*w bytes), gzipped when the name ends in `.gz`.
    pub fn write_idx_images(path: &Path, n: u32, h: u32, w: u32, pixels: &[u8]) {
        let mut bytes = vec![0, 0, 8, 3];
        for d in [n, h, w] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(pixels);
        write_maybe_gz(path, &bytes);
    }

    pub fn write_idx_labels(path: &Path, labels: &[u8]) {
        let mut bytes = vec![0, 0, 8, 1];
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        write_maybe_gz(path, &bytes);
    }

    pub fn write_maybe_gz(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        if path.extension().is_some_and(|e| e == "gz") {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(bytes).unwrap();
            std::fs::write(path, enc.finish().unwrap()).unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }
}

#[cfg(test)]
mod load_tests;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    /// A fresh temporary folder holding the idx image file `name` of `n` images of `h x w`
    /// (see [`write_idx_images`]); the folder lasts as long as the returned guard.
    pub(crate) fn idx_in_tempdir(
        name: &str,
        (n, h, w): (u32, u32, u32),
        pixels: &[u8],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        write_idx_images(&path, n, h, w, pixels);
        (dir, path)
    }

    /// A fresh temporary folder holding `bytes` as the file `name`.
    pub(crate) fn file_in_tempdir(
        name: &str,
        bytes: &[u8],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// The message of the error loading `path` with `prep` gives.
    pub(crate) fn load_err_with(path: &Path, prep: &Preprocess) -> String {
        load(path, prep).unwrap_err().to_string()
    }

    /// The message of the error loading `path` without preprocessing gives.
    pub(crate) fn load_err(path: &Path) -> String {
        load_err_with(path, &Preprocess::default())
    }

    pub(crate) fn shape(channels: usize, height: usize, width: usize) -> ImageShape {
        ImageShape {
            channels,
            height,
            width,
        }
    }

    fn tiny() -> Dataset {
        Dataset {
            shape: shape(1, 1, 2),
            pixels: Pixels::from_bytes(vec![0, 10, 20, 30, 40, 50], 2),
            labels: Some(vec![1, 0, 1]),
            classes: vec!["cat".into(), "dog".into()],
            items: vec!["a.png".into(), "b.png".into(), "c.png".into()],
            source: Default::default(),
        }
    }

    #[test]
    fn subset_counts_and_describe() {
        let ds = tiny();
        let sub = ds.subset(&[2, 0]);
        assert_eq!(
            sub.pixels.to_vec(),
            [40, 50, 0, 10].map(|b| b as f32 / 255.0)
        );
        assert_eq!(sub.items, vec!["c.png", "a.png"]);
        assert_eq!(sub.labels, Some(vec![1, 1]));
        assert_eq!(
            ds.class_counts(),
            vec![("cat".to_string(), 1), ("dog".to_string(), 2)]
        );
        assert_eq!(ds.describe(), "3 images 1x1x2, 2 classes: cat:1 dog:2");
        assert_eq!(ds.label_name(1), Some("cat"));
    }

    #[test]
    fn align_classes_reindexes_and_rejects_unknown_label() {
        let ds = tiny();
        let aligned = ds
            .align_classes(&["bird".into(), "dog".into(), "cat".into()])
            .unwrap();
        assert_eq!(aligned.labels, Some(vec![1, 2, 1]));
        assert_eq!(aligned.label_name(0), Some("dog"));
        let err = ds
            .align_classes(&["cat".into(), "bird".into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("a.png: label out of range"), "{err}");
        assert!(err.contains("\"dog\""), "{err}");
    }

    #[test]
    fn invert_and_preprocess_checks() {
        let (_dir, p) = idx_in_tempdir("x-images-idx3-ubyte", (1, 1, 2), &[0, 255]);
        let prep = Preprocess {
            invert: true,
            ..Default::default()
        };
        let ds = load(&p, &prep).unwrap();
        assert_eq!(ds.pixels.to_vec(), vec![1.0, 0.0]);
        let bad = Preprocess {
            channels: Some(2),
            ..Default::default()
        };
        let err = load_err_with(&p, &bad);
        assert!(err.contains("channels must be 1 or 3"), "{err}");
        for channels in [1, 3] {
            let huge = Preprocess {
                channels: Some(channels),
                height: Some(u32::MAX as usize),
                width: Some(u32::MAX as usize),
                ..Default::default()
            };
            let err = load_err_with(&p, &huge);
            assert!(err.contains("do not fit in memory"), "{err}");
        }
    }

    #[test]
    fn missing_and_unknown_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = load_err(&missing);
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "hi").unwrap();
        let err = load_err(&other);
        assert!(err.contains("unknown data source"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = load_err(&empty);
        assert!(err.contains("no images"), "{err}");
    }

    #[test]
    fn preprocess_rejects_unknown_fields() {
        let ok: Preprocess =
            serde_json::from_str(r#"{"channels":3,"height":28,"width":28,"invert":true}"#).unwrap();
        assert_eq!(ok.channels, Some(3));
        assert!(ok.invert);
        let empty: Preprocess = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Preprocess::default());
        assert!(serde_json::from_str::<Preprocess>(r#"{"chanels":3}"#).is_err());
    }

    #[test]
    fn shipped_digits_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
        let p = dir.join("digits-images-idx3-ubyte.gz");
        let ds = load(&p, &Preprocess::default()).unwrap();
        assert_eq!(ds.len(), 1797);
        assert_eq!(ds.shape, shape(1, 8, 8));
        assert_eq!(ds.classes.len(), 10);
        let counts = ds.class_counts();
        assert_eq!(counts.iter().map(|c| c.1).sum::<usize>(), 1797);
        assert!(counts.iter().all(|c| c.1 > 150), "{counts:?}");
        assert_eq!(ds.source.entries().len(), 2);
        assert!(ds.pixels.to_vec().iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(ds
            .describe()
            .starts_with("1797 images 1x8x8, 10 classes: 0:178 1:182"));
        // the folder itself names its single idx file
        let again = load(&dir, &Preprocess::default()).unwrap();
        assert_eq!(again.pixels.to_vec(), ds.pixels.to_vec());
        assert_eq!(again.source.summary().sha256, ds.source.summary().sha256);
        assert_eq!(again.labels, ds.labels);
    }
}
