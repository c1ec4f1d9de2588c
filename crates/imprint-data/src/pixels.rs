//! Images held as 8-bit values, in memory or in a file on disk, and converted to `f32` a batch
//! at a time: a quarter of the memory of `f32` pixels, and a source larger than memory stays on
//! disk.
//!
//! Every source's pixels are bytes, and the model's value of byte `b` is `b / 255` (or
//! `1 - b / 255`, inverted), computed once per byte value into a table: conversion gives the
//! same `f32` as converting each pixel as it was decoded.
//!
//! A file on disk is read image by image with positioned reads, not through a memory mapping:
//! a mapped file that shrinks while it is read (another process truncating the image cache)
//! kills the process with a bus error, whereas a read that comes back short is an error that can
//! be reported. Where the file keeps a CRC-32 of each image (the image cache), every read is
//! checked against it. A read that fails stops the job by unwinding with a [`ReadFailure`],
//! which the command line reports as its error; the reads stay infallible for the training
//! loops, and the checks that can be made when a source is opened are made then.

use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The value a model sees for a decoded value `v` in `[0, 1]`: the nearest byte. Exact for
/// values that were bytes (`b / 255` gives `b` back); a resized or colour-converted pixel moves
/// by at most half a step of 1/255.
pub(crate) fn to_byte(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Why images on disk could not be read in the middle of a job: the file shrank, changed or
/// went away. Raised by unwinding (`std::panic::panic_any`) from the read that found it, since
/// the reads have no error to return; its text is one line that starts with the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadFailure(pub String);

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the bytes lie.
enum Bytes {
    Owned(Vec<u8>),
    OnDisk(OnDisk),
}

/// A file of records read with positioned reads, each checked against its CRC-32 when the file
/// keeps them.
struct OnDisk {
    file: File,
    path: PathBuf,
    /// The CRC-32 of each record, in store order; `None` for a file that keeps none (an idx
    /// file, read as its owner wrote it).
    sums: Option<Vec<u32>>,
}

impl OnDisk {
    /// Reads the record `row` at `at` into `out`, or unwinds with a [`ReadFailure`].
    fn read(&self, row: usize, at: u64, out: &mut [u8]) {
        if let Err(e) = read_exact_at(&self.file, out, at) {
            let why = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "cut short while being read".to_string(),
                _ => e.to_string(),
            };
            self.fail(format!("image {row} at byte {at}: {why}"));
        }
        if let Some(sums) = &self.sums {
            if crc32fast::hash(out) != sums[row] {
                self.fail(format!(
                    "image {row} changed while being read (its bytes no longer match their \
                     checksum); the cache is rebuilt on the next run"
                ));
            }
        }
    }

    fn fail(&self, what: String) -> ! {
        std::panic::panic_any(ReadFailure(format!("{}: {what}", self.path.display())))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, out: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, out, at)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut out: &mut [u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !out.is_empty() {
        match file.seek_read(out, at)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                out = &mut out[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

/// The records (images of `image_len` bytes each) of one buffer or file, starting at `offset`.
struct Store {
    bytes: Bytes,
    offset: usize,
    count: usize,
}

/// 8-bit images of `image_len` bytes each, CHW order: all of a store's, or a selection of them
/// (a subset shares its store and keeps the row numbers).
#[derive(Clone)]
pub struct Pixels {
    store: Arc<Store>,
    /// Rows of the store this holds, in order; `None`: every row, in order.
    rows: Option<Arc<[usize]>>,
    image_len: usize,
    /// The `f32` each byte value stands for.
    values: Arc<[f32; 256]>,
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store.bytes {
            Bytes::Owned(_) => "in memory",
            Bytes::OnDisk(_) => "on disk",
        };
        write!(
            f,
            "Pixels({} images of {} bytes, {kind})",
            self.len(),
            self.image_len
        )
    }
}

fn unit_values() -> [f32; 256] {
    std::array::from_fn(|b| f32::from(b as u8) / 255.0)
}

thread_local! {
    /// One image's bytes read from disk, reused by each thread's reads.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Pixels {
    fn with_store(bytes: Bytes, offset: usize, count: usize, image_len: usize) -> Pixels {
        Pixels {
            store: Arc::new(Store {
                bytes,
                offset,
                count,
            }),
            rows: None,
            image_len,
            values: Arc::new(unit_values()),
        }
    }

    /// Images of `image_len` bytes each, back to back in `bytes` from `offset` on.
    ///
    /// # Panics
    /// When `bytes` is shorter than a whole number of images says (a caller bug).
    pub fn from_bytes_at(bytes: Vec<u8>, offset: usize, image_len: usize) -> Pixels {
        let count = (bytes.len() - offset) / image_len.max(1);
        assert_eq!(offset + count * image_len, bytes.len(), "whole images");
        Pixels::with_store(Bytes::Owned(bytes), offset, count, image_len)
    }

    /// Images of `image_len` bytes each, back to back.
    pub fn from_bytes(bytes: Vec<u8>, image_len: usize) -> Pixels {
        Pixels::from_bytes_at(bytes, 0, image_len)
    }

    /// Values in `[0, 1]` (e.g. made up by a test or benchmark), each kept as its nearest byte.
    pub fn from_unit_floats(values: &[f32], image_len: usize) -> Pixels {
        Pixels::from_bytes(values.iter().map(|&v| to_byte(v)).collect(), image_len)
    }

    /// `count` images of `image_len` bytes each in the open file `file` (at `path`) from
    /// `offset` on, read when asked for; `sums` holds each one's CRC-32, when the file keeps
    /// them.
    pub(crate) fn on_disk(
        file: File,
        path: &Path,
        offset: usize,
        (count, image_len): (usize, usize),
        sums: Option<Vec<u32>>,
    ) -> Pixels {
        debug_assert!(sums.as_ref().is_none_or(|s| s.len() == count));
        let disk = OnDisk {
            file,
            path: path.to_path_buf(),
            sums,
        };
        Pixels::with_store(Bytes::OnDisk(disk), offset, count, image_len)
    }

    /// The same images read as `1 - value` (dark-on-light scans vs light-on-dark MNIST).
    pub fn inverted(&self) -> Pixels {
        let values = std::array::from_fn(|b| 1.0 - self.values[b]);
        Pixels {
            values: Arc::new(values),
            ..self.clone()
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.rows.as_ref().map_or(self.store.count, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes (values) per image.
    pub fn image_len(&self) -> usize {
        self.image_len
    }

    /// Whether the images are read from a file on disk rather than held in memory.
    pub fn is_on_disk(&self) -> bool {
        matches!(self.store.bytes, Bytes::OnDisk(_))
    }

    fn row(&self, i: usize) -> usize {
        match &self.rows {
            Some(rows) => rows[i],
            None => {
                assert!(i < self.store.count, "image {i} of {}", self.store.count);
                i
            }
        }
    }

    fn span(&self, row: usize) -> Range<usize> {
        let start = self.store.offset + row * self.image_len;
        start..start + self.image_len
    }

    /// Calls `f` on the bytes of image `i`: in place in memory, through a buffer from disk.
    fn with_bytes<R>(&self, i: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let row = self.row(i);
        let span = self.span(row);
        match &self.store.bytes {
            Bytes::Owned(v) => f(&v[span]),
            Bytes::OnDisk(disk) => READ_BUFFER.with(|buffer| {
                let mut buffer = buffer.borrow_mut();
                buffer.resize(span.len(), 0);
                disk.read(row, span.start as u64, &mut buffer);
                f(&buffer)
            }),
        }
    }

    /// The bytes of image `i`. Panics if `i >= len()` (a caller bug).
    pub fn bytes(&self, i: usize) -> Cow<'_, [u8]> {
        let row = self.row(i);
        let span = self.span(row);
        match &self.store.bytes {
            Bytes::Owned(v) => Cow::Borrowed(&v[span]),
            Bytes::OnDisk(disk) => {
                let mut out = vec![0; span.len()];
                disk.read(row, span.start as u64, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Image `i` as `f32` values into `out` (`image_len()` of them).
    pub fn write_image(&self, i: usize, out: &mut [f32]) {
        self.with_bytes(i, |bytes| {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = self.values[usize::from(b)];
            }
        })
    }

    /// Image `i` as `f32` values.
    pub fn image(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.image_len];
        self.write_image(i, &mut out);
        out
    }

    /// The images `ids`, in that order, as `f32` values into `out` (`ids.len() * image_len()`).
    pub fn gather(&self, ids: &[usize], out: &mut [f32]) {
        let len = self.image_len.max(1);
        out.par_chunks_mut(len)
            .zip(ids.par_iter())
            .for_each(|(dst, &i)| self.write_image(i, dst));
    }

    /// The images `range`, in order, as `f32` values into `out`.
    pub fn fill(&self, range: Range<usize>, out: &mut [f32]) {
        let ids: Vec<usize> = range.collect();
        self.gather(&ids, out);
    }

    /// Every image as `f32` values, for sets small enough to hold so.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len() * self.image_len];
        self.fill(0..self.len(), &mut out);
        out
    }

    /// Asks the system to read the images `ids` ahead, while the current batch trains: a
    /// source on disk then has its next batch in memory when it is gathered. Nothing to do for
    /// images held in memory.
    pub fn prefetch(&self, ids: &[usize]) {
        let Bytes::OnDisk(disk) = &self.store.bytes else {
            return;
        };
        for &i in ids {
            let span = self.span(self.row(i));
            advise_will_need(&disk.file, span);
        }
    }

    /// The images `ids`, in that order, sharing this store. Panics on an index `>= len()`.
    pub fn subset(&self, ids: &[usize]) -> Pixels {
        let rows: Arc<[usize]> = ids.iter().map(|&i| self.row(i)).collect();
        Pixels {
            rows: Some(rows),
            ..self.clone()
        }
    }
}

/// Advice only: a refusal costs speed, never correctness.
#[cfg(target_os = "linux")]
fn advise_will_need(file: &File, span: Range<usize>) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` lives; the call only advises.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            span.start as libc::off_t,
            span.len() as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_will_need(_file: &File, _span: Range<usize>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_survives_the_round_trip_through_its_value() {
        let pixels = Pixels::from_bytes((0..=255).collect(), 256);
        let values = pixels.image(0);
        for (b, &v) in values.iter().enumerate() {
            assert_eq!(v, f32::from(b as u8) / 255.0, "byte {b}");
            assert_eq!(to_byte(v), b as u8, "byte {b}");
        }
        let inverted = pixels.inverted().image(0);
        for (b, &v) in inverted.iter().enumerate() {
            assert_eq!(v, 1.0 - f32::from(b as u8) / 255.0, "byte {b}");
        }
    }

    #[test]
    fn floats_off_the_byte_grid_move_by_at_most_half_a_step() {
        let values: Vec<f32> = (0..=1000).map(|i| i as f32 / 1000.0).collect();
        let pixels = Pixels::from_unit_floats(&values, values.len());
        for (&v, &q) in values.iter().zip(&pixels.image(0)) {
            assert!((v - q).abs() <= 0.5 / 255.0 + 1e-7, "{v} -> {q}");
        }
        let clamped = Pixels::from_unit_floats(&[-0.5, 1.5], 2).image(0);
        assert_eq!(clamped, [0.0, 1.0]);
    }

    #[test]
    fn subsets_gather_and_fill_read_the_chosen_images() {
        let pixels = Pixels::from_bytes_at(vec![9, 9, 0, 51, 102, 153, 204, 255], 2, 2);
        assert_eq!(pixels.len(), 3);
        assert_eq!(*pixels.bytes(1), [102, 153]);
        let sub = pixels.subset(&[2, 0]);
        assert_eq!(sub.len(), 2);
        assert_eq!(*sub.bytes(0), [204, 255]);
        let twice = sub.subset(&[1, 1, 0]);
        assert_eq!(*twice.bytes(2), [204, 255]);
        assert_eq!(twice.to_vec(), [0.0, 0.2, 0.0, 0.2, 0.8, 1.0]);
        let mut out = vec![0.0; 4];
        pixels.gather(&[1, 2], &mut out);
        assert_eq!(out, [0.4, 0.6, 0.8, 1.0]);
        pixels.fill(1..3, &mut out);
        assert_eq!(out, [0.4, 0.6, 0.8, 1.0]);
    }

    /// `n` records of `len` bytes in a file, and their pixels read from disk (with checksums).
    fn on_disk(dir: &Path, n: usize, len: usize) -> (PathBuf, Vec<u8>, Pixels) {
        let path = dir.join("bytes");
        let bytes: Vec<u8> = (0..n * len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let sums = bytes.chunks(len).map(crc32fast::hash).collect();
        let file = File::open(&path).unwrap();
        let pixels = Pixels::on_disk(file, &path, 0, (n, len), Some(sums));
        (path, bytes, pixels)
    }

    #[test]
    fn images_on_disk_read_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, pixels) = on_disk(dir.path(), 8, 4096);
        assert!(pixels.is_on_disk());
        for round in 0..2 {
            for i in 0..8 {
                assert_eq!(
                    &*pixels.bytes(i),
                    &bytes[i * 4096..(i + 1) * 4096],
                    "{round}"
                );
            }
        }
        pixels.prefetch(&[7, 0]);
        assert_eq!(pixels.image(3)[0], f32::from(bytes[3 * 4096]) / 255.0);
        let sub = pixels.subset(&[5, 2]);
        let mut out = vec![0.0; 2 * 4096];
        sub.gather(&[1, 0], &mut out);
        assert_eq!(out[0], f32::from(bytes[2 * 4096]) / 255.0);
    }

    /// The failure a read of `pixels`' image `i` unwinds with.
    fn failure(pixels: &Pixels, i: usize) -> String {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pixels.image(i)));
        let payload = caught.expect_err("the read fails");
        payload.downcast::<ReadFailure>().expect("a ReadFailure").0
    }

    #[test]
    fn a_file_cut_short_or_changed_while_read_stops_with_a_read_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, pixels) = on_disk(dir.path(), 8, 1000);
        assert_eq!(pixels.image(7).len(), 1000);
        // Another process truncates the file: the next read says so instead of a bus error.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5500)
            .unwrap();
        assert_eq!(pixels.bytes(4)[..], bytes[4000..5000]);
        let err = failure(&pixels, 7);
        assert_eq!(
            err,
            format!(
                "{}: image 7 at byte 7000: cut short while being read",
                path.display()
            )
        );
        // One byte changed in place: its checksum no longer matches.
        let mut changed = bytes.clone();
        changed[2500] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let err = failure(&pixels, 2);
        assert!(err.ends_with("image 2 changed while being read (its bytes no longer match their checksum); the cache is rebuilt on the next run"), "{err}");
        assert_eq!(pixels.bytes(3)[..], bytes[3000..4000]);
    }
}
