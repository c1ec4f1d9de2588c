//! Perceptual fingerprints: a 64-bit hash of an image's broad shape (the DCT hash, "pHash") that
//! stays within a few bits when the image is re-encoded, re-saved or made a little brighter, so
//! copies that are not byte- or pixel-equal can still be told apart from distinct images.
//!
//! The image is turned grey and brought to 32 x 32; of its 2-D DCT-II the 8 x 8 lowest
//! frequencies are kept, and each of the 63 that are not the mean sets its bit when it lies
//! above their median. A horizontal mirror only changes the sign of the odd horizontal
//! frequencies, so the mirror's fingerprint comes from the same coefficients for free.

use crate::ImageShape;
use image::imageops::{resize, FilterType};
use image::{ImageBuffer, Luma};
use std::sync::OnceLock;

/// The side the grey image is brought to before the transform.
const SIDE: usize = 32;
/// The lowest frequencies kept, per axis.
const LOW: usize = 8;

/// An image's fingerprint and its horizontal mirror's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub hash: u64,
    pub mirror: u64,
}

/// Bits in which two fingerprints' hashes differ.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// `cos[u][x]`: the orthonormal DCT-II basis of length [`SIDE`], its [`LOW`] lowest rows.
fn basis() -> &'static [[f32; SIDE]; LOW] {
    static BASIS: OnceLock<[[f32; SIDE]; LOW]> = OnceLock::new();
    BASIS.get_or_init(|| {
        std::array::from_fn(|u| {
            let scale = if u == 0 {
                (1.0 / SIDE as f64).sqrt()
            } else {
                (2.0 / SIDE as f64).sqrt()
            };
            std::array::from_fn(|x| {
                let angle =
                    std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * SIDE) as f64;
                (scale * angle.cos()) as f32
            })
        })
    })
}

/// The fingerprint of one image of `shape` (CHW bytes, as a [`crate::Dataset`] holds them).
pub fn fingerprint(pixels: &[u8], shape: ImageShape) -> Fingerprint {
    let grey = grey_square(pixels, shape);
    let cos = basis();
    // Rows first: rows[y][u] = sum_x grey[y][x] cos[u][x].
    let mut rows = [[0f32; LOW]; SIDE];
    for (row, out) in grey.chunks_exact(SIDE).zip(rows.iter_mut()) {
        for (o, c) in out.iter_mut().zip(cos) {
            *o = row.iter().zip(c).map(|(g, c)| g * c).sum();
        }
    }
    // coef[v][u] = sum_y cos[v][y] rows[y][u]
    let mut coef = [[0f32; LOW]; LOW];
    for (out, c) in coef.iter_mut().zip(cos) {
        for (y, r) in rows.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(r) {
                *o += c[y] * v;
            }
        }
    }
    let hash = bits(&coef, false);
    let mirror = bits(&coef, true);
    Fingerprint { hash, mirror }
}

/// Bit `v * 8 + u` set where coefficient (v, u) lies above the median of the 63 that are not the
/// mean; `mirror` reads the odd horizontal frequencies with their sign turned.
fn bits(coef: &[[f32; LOW]; LOW], mirror: bool) -> u64 {
    let value = |k: usize| {
        let (v, u) = (k / LOW, k % LOW);
        let c = coef[v][u];
        if mirror && u % 2 == 1 {
            -c
        } else {
            c
        }
    };
    let mut ac: [f32; LOW * LOW - 1] = std::array::from_fn(|k| value(k + 1));
    let mid = ac.len() / 2;
    let (_, median, _) = ac.select_nth_unstable_by(mid, f32::total_cmp);
    let median = *median;
    (1..LOW * LOW).fold(0u64, |h, k| if value(k) > median { h | 1 << k } else { h })
}

/// The image's grey values in `[0, 255]`, row-major (ITU-R 601 luma from RGB).
fn grey(pixels: &[u8], shape: ImageShape) -> Vec<f32> {
    let plane = shape.height * shape.width;
    if shape.channels < 3 {
        return pixels[..plane].iter().map(|&v| f32::from(v)).collect();
    }
    let (r, rest) = pixels.split_at(plane);
    let (g, b) = rest.split_at(plane);
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b))
        .collect()
}

/// The image as grey values in `[0, 255]`, [`SIDE`] x [`SIDE`], row-major.
fn grey_square(pixels: &[u8], shape: ImageShape) -> Vec<f32> {
    let grey = grey(pixels, shape);
    if shape.height == SIDE && shape.width == SIDE {
        return grey;
    }
    let (w, h) = (shape.width as u32, shape.height as u32);
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w, h, grey).expect("one value per pixel");
    resize(&img, SIDE as u32, SIDE as u32, FilterType::Triangle).into_raw()
}

/// The Pearson correlation of two images' grey values, `b` read mirrored when asked: about 1 for
/// a copy re-encoded, re-saved, or made a little brighter or more contrasted, lower for distinct
/// images however alike their broad shapes. Two flat images correlate 1, a flat one with
/// another 0. Run for every pair the fingerprints bring up, so it allocates nothing and sums
/// whole numbers (grey as `299 r + 587 g + 114 b`; a correlation ignores the scale).
pub fn correlation(a: &[u8], b: &[u8], shape: ImageShape, mirror_b: bool) -> f32 {
    let (h, w) = (shape.height, shape.width);
    let plane = h * w;
    let mut sums = Sums::default();
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        if shape.channels >= 3 {
            if mirror_b {
                sums.add(luma(a, plane, &row), luma(b, plane, &row).rev());
            } else {
                sums.add(luma(a, plane, &row), luma(b, plane, &row));
            }
        } else {
            let (ra, rb) = (&a[row.clone()], &b[row]);
            let value = |&v: &u8| u64::from(v);
            if mirror_b {
                sums.add(ra.iter().map(value), rb.iter().rev().map(value));
            } else {
                sums.add(ra.iter().map(value), rb.iter().map(value));
            }
        }
    }
    sums.correlation(plane)
}

/// The grey values (`299 r + 587 g + 114 b`) of pixels `row` of a CHW image with planes of
/// `plane` values.
fn luma<'a>(
    p: &'a [u8],
    plane: usize,
    row: &std::ops::Range<usize>,
) -> impl DoubleEndedIterator<Item = u64> + 'a {
    let [r, g, b] = [0, plane, 2 * plane].map(|at| &p[at + row.start..at + row.end]);
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| 299 * u64::from(r) + 587 * u64::from(g) + 114 * u64::from(b))
}

/// Sums of two images' values, their squares and their products.
#[derive(Default)]
struct Sums {
    a: u128,
    b: u128,
    aa: u128,
    bb: u128,
    ab: u128,
}

impl Sums {
    /// Adds one row of each (values below 2^18: a row's sums fit in 64 bits).
    fn add(&mut self, a: impl Iterator<Item = u64>, b: impl Iterator<Item = u64>) {
        let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (x, y) in a.zip(b) {
            sa += x;
            sb += y;
            saa += x * x;
            sbb += y * y;
            sab += x * y;
        }
        self.a += u128::from(sa);
        self.b += u128::from(sb);
        self.aa += u128::from(saa);
        self.bb += u128::from(sbb);
        self.ab += u128::from(sab);
    }

    fn correlation(&self, n: usize) -> f32 {
        let n = n as u128;
        // n times each variance and the covariance, exact: both variances are 0 or at least 1.
        let var_a = n * self.aa - self.a * self.a;
        let var_b = n * self.bb - self.b * self.b;
        let cov = (n * self.ab) as f64 - (self.a * self.b) as f64;
        match (var_a == 0, var_b == 0) {
            (true, true) => 1.0,
            (true, false) | (false, true) => 0.0,
            _ => (cov / ((var_a as f64) * (var_b as f64)).sqrt()) as f32,
        }
    }
}
