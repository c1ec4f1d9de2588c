//! Images held as 8-bit values, in memory or in a file mapping, and converted to `f32` a batch
//! at a time: a quarter of the memory of `f32` pixels, and a source larger than memory stays on
//! disk.
//!
//! Every source's pixels are bytes, and the model's value of byte `b` is `b / 255` (or
//! `1 - b / 255`, inverted), computed once per byte value into a table: conversion gives the
//! same `f32` as converting each pixel as it was decoded.

use memmap2::{Advice, Mmap, UncheckedAdvice};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The value a model sees for a decoded value `v` in `[0, 1]`: the nearest byte. Exact for
/// values that were bytes (`b / 255` gives `b` back); a resized or colour-converted pixel moves
/// by at most half a step of 1/255.
pub(crate) fn to_byte(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Where the bytes lie.
enum Bytes {
    Owned(Vec<u8>),
    Mapped(Mapped),
}

/// What one read of a mapping may make resident: the kernel maps more than the faulting page
/// when the file is in its cache (64 KiB around it, or a whole large folio of up to 2 MiB,
/// whatever the advice; measured: 2 MiB per random read on Linux 6.18, ext4), so a read of a
/// few bytes counts as this much.
const FAULT_UNIT: usize = 2 << 20;

/// A read-only file mapping whose pages the process lets go of once its reads may have made
/// more than `resident_limit` bytes resident, so resident memory stays within the budget however
/// large the file (the kernel keeps the pages cached and maps them again on the next read).
struct Mapped {
    map: Mmap,
    read_since_release: AtomicUsize,
    resident_limit: usize,
}

impl Mapped {
    /// Counts the read of `span` as every fault unit it touches.
    fn note_read(&self, span: &Range<usize>) {
        let units = (span.end.max(1) - 1) / FAULT_UNIT - span.start / FAULT_UNIT + 1;
        let bytes = units * FAULT_UNIT;
        let total = self.read_since_release.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.resident_limit {
            self.read_since_release.store(0, Ordering::Relaxed);
            // SAFETY: the mapping is shared and read-only: dropping its pages loses nothing,
            // and the next read maps the file's (unchanged) contents again.
            let _ = unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }
}

/// The records (images of `image_len` bytes each) of one buffer, starting at `offset`.
struct Store {
    bytes: Bytes,
    offset: usize,
    count: usize,
}

impl Store {
    fn all(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => &m.map,
        }
    }
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
            Bytes::Mapped(_) => "mapped",
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

    /// `count` images of `image_len` bytes each in a read-only mapping from `offset` on, of
    /// which at most about `resident_limit` bytes stay in memory.
    pub(crate) fn mapped(
        map: Mmap,
        offset: usize,
        count: usize,
        image_len: usize,
        resident_limit: usize,
    ) -> Pixels {
        debug_assert!(offset + count * image_len <= map.len());
        let mapped = Mapped {
            map,
            read_since_release: AtomicUsize::new(0),
            resident_limit,
        };
        Pixels::with_store(Bytes::Mapped(mapped), offset, count, image_len)
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

    /// Whether the images are read from a file mapping rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.store.bytes, Bytes::Mapped(_))
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

    /// The bytes of image `i`. Panics if `i >= len()` (a caller bug).
    pub fn bytes(&self, i: usize) -> &[u8] {
        let span = self.span(self.row(i));
        if let Bytes::Mapped(m) = &self.store.bytes {
            m.note_read(&span);
        }
        &self.store.all()[span]
    }

    /// Image `i` as `f32` values into `out` (`image_len()` of them).
    pub fn write_image(&self, i: usize, out: &mut [f32]) {
        for (o, &b) in out.iter_mut().zip(self.bytes(i)) {
            *o = self.values[usize::from(b)];
        }
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

    /// Asks the system to read the pages of images `ids` ahead, while the current batch
    /// trains: a mapped source's next batch is then in memory when it is gathered. Nothing to
    /// do for images held in memory.
    pub fn prefetch(&self, ids: &[usize]) {
        let Bytes::Mapped(m) = &self.store.bytes else {
            return;
        };
        for &i in ids {
            let span = self.span(self.row(i));
            // Advice only: a refusal costs speed, never correctness.
            let _ = m.map.advise_range(Advice::WillNeed, span.start, span.len());
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
        assert_eq!(pixels.bytes(1), &[102, 153]);
        let sub = pixels.subset(&[2, 0]);
        assert_eq!(sub.len(), 2);
        assert_eq!(sub.bytes(0), &[204, 255]);
        let twice = sub.subset(&[1, 1, 0]);
        assert_eq!(twice.bytes(2), &[204, 255]);
        assert_eq!(twice.to_vec(), [0.0, 0.2, 0.0, 0.2, 0.8, 1.0]);
        let mut out = vec![0.0; 4];
        pixels.gather(&[1, 2], &mut out);
        assert_eq!(out, [0.4, 0.6, 0.8, 1.0]);
        pixels.fill(1..3, &mut out);
        assert_eq!(out, [0.4, 0.6, 0.8, 1.0]);
    }

    /// Resident file-backed memory of this process, in bytes.
    #[cfg(target_os = "linux")]
    fn resident_file_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Read at random, as batches are drawn, a 64 MiB mapping keeps about its 8 MiB limit
    /// resident (without the release, all 64 MiB would be: each read maps far more than itself).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapping_read_at_random_stays_within_its_resident_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes");
        let (len, n) = (3072, 64 * 341);
        std::fs::write(&path, vec![7u8; len * n]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is this test's own and unchanged while mapped.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let limit = 8 << 20;
        let pixels = Pixels::mapped(map, 0, n, len, limit);
        let before = resident_file_bytes();
        let mut peak = before;
        for k in 0..n {
            let i = (k * 7919) % n;
            assert_eq!(pixels.bytes(i)[len / 2], 7);
            if k % 64 == 0 {
                peak = peak.max(resident_file_bytes());
            }
        }
        let grown = peak.saturating_sub(before);
        assert!(
            grown <= limit + 2 * FAULT_UNIT,
            "{} MiB resident",
            grown >> 20
        );
    }

    #[test]
    fn a_mapping_lets_go_of_its_pages_and_still_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes");
        let bytes: Vec<u8> = (0..4096 * 8).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is this test's own and unchanged while mapped.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let pixels = Pixels::mapped(map, 0, 8, 4096, 4096);
        assert!(pixels.is_mapped());
        for round in 0..3 {
            for i in 0..8 {
                assert_eq!(pixels.bytes(i), &bytes[i * 4096..(i + 1) * 4096], "{round}");
            }
        }
        pixels.prefetch(&[7, 0]);
        assert_eq!(pixels.image(3)[0], f32::from(bytes[3 * 4096]) / 255.0);
    }
}
