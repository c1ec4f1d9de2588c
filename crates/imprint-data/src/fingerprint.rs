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

/// `cos[x][u]`: the orthonormal DCT-II basis of length [`SIDE`], its [`LOW`] lowest frequencies,
/// position-major so the sums below run over eight neighbouring lanes.
fn basis() -> &'static [[f32; LOW]; SIDE] {
    static BASIS: OnceLock<[[f32; LOW]; SIDE]> = OnceLock::new();
    BASIS.get_or_init(|| {
        std::array::from_fn(|x| {
            std::array::from_fn(|u| {
                let scale = if u == 0 { 1.0 } else { 2f64.sqrt() } / (SIDE as f64).sqrt();
                let angle =
                    std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * SIDE) as f64;
                (scale * angle.cos()) as f32
            })
        })
    })
}

/// `out[u] += weight * lanes[u]`.
fn add_scaled(out: &mut [f32; LOW], weight: f32, lanes: &[f32; LOW]) {
    for (o, l) in out.iter_mut().zip(lanes) {
        *o += weight * l;
    }
}

/// The fingerprint of one image of `shape` (CHW bytes, as a [`crate::Dataset`] holds them).
pub fn fingerprint(pixels: &[u8], shape: ImageShape) -> Fingerprint {
    let grey = grey_square(pixels, shape);
    let cos = basis();
    // Rows first: rows[y][u] = sum_x grey[y][x] cos[x][u].
    let mut rows = [[0f32; LOW]; SIDE];
    for (row, out) in grey.chunks_exact(SIDE).zip(rows.iter_mut()) {
        for (&g, c) in row.iter().zip(cos) {
            add_scaled(out, g, c);
        }
    }
    // coef[v][u] = sum_y cos[y][v] rows[y][u]
    let mut coef = [[0f32; LOW]; LOW];
    for (c, r) in cos.iter().zip(&rows) {
        for (out, &weight) in coef.iter_mut().zip(c) {
            add_scaled(out, weight, r);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::near::MIN_CORRELATION;
    use image::codecs::jpeg::JpegEncoder;
    use image::{DynamicImage, RgbImage};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const SHAPE: ImageShape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };

    /// A 32 x 32 colour picture of soft blobs and ripples over a gradient, different for every
    /// seed: textured as photos are (a smooth picture leaves most of its low frequencies near
    /// zero, and their bits to chance).
    fn photo(seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let base = [0; 3].map(|_| rng.gen_range(60.0..190.0f32));
        let slope = [0; 3].map(|_| rng.gen_range(-2.0..2.0f32));
        let blobs: Vec<([f32; 3], [f32; 3])> = (0..12)
            .map(|_| {
                let shape = [
                    rng.gen_range(0.0..32.0),
                    rng.gen_range(0.0..32.0),
                    rng.gen_range(1.5..6.0),
                ];
                (shape, [0; 3].map(|_| rng.gen_range(-100.0..100.0)))
            })
            .collect();
        let ripples: Vec<[f32; 4]> = (0..3)
            .map(|_| {
                [
                    rng.gen_range(-1.0..1.0),
                    rng.gen_range(-1.0..1.0),
                    rng.gen_range(0.0..6.3),
                    rng.gen_range(10.0..30.0),
                ]
            })
            .collect();
        RgbImage::from_fn(32, 32, |x, y| {
            let (x, y) = (x as f32, y as f32);
            let ripple: f32 = ripples
                .iter()
                .map(|[fx, fy, phase, amp]| amp * (fx * x + fy * y + phase).sin())
                .sum();
            image::Rgb(std::array::from_fn(|c| {
                let mut v = base[c] + slope[c] * (x - 16.0) + ripple;
                for ([bx, by, size], colour) in &blobs {
                    let d2 = (x - bx).powi(2) + (y - by).powi(2);
                    v += colour[c] * (-d2 / (2.0 * size * size)).exp();
                }
                v.clamp(0.0, 255.0) as u8
            }))
        })
    }

    /// The image as CHW bytes, as a data set holds it.
    fn chw(img: &RgbImage) -> Vec<u8> {
        (0..3)
            .flat_map(|c| img.pixels().map(move |p| p[c]))
            .collect()
    }

    fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, quality)
            .encode_image(img)
            .unwrap();
        image::load_from_memory(&bytes).unwrap().to_rgb8()
    }

    /// Whether `copy` is taken for a copy of `original`, as it is or mirrored.
    fn caught(original: &RgbImage, copy: &RgbImage) -> bool {
        let (a, b) = (chw(original), chw(copy));
        let (fa, fb) = (fingerprint(&a, SHAPE), fingerprint(&b, SHAPE));
        let plain =
            distance(fa.hash, fb.hash) <= 4 && correlation(&a, &b, SHAPE, false) >= MIN_CORRELATION;
        let mirrored = distance(fa.hash, fb.mirror) <= 4
            && correlation(&a, &b, SHAPE, true) >= MIN_CORRELATION;
        plain || mirrored
    }

    /// JPEG re-encodes, a brighter copy and a mirror image are caught, distinct photos never.
    /// A first JPEG of a lossless picture at quality 75 may correlate just below the floor
    /// (2 of these 30 at 0.993): the floor sits above what distinct MNIST digits reach.
    #[test]
    fn re_encoded_brightened_and_mirrored_copies_are_caught_and_distinct_photos_are_not() {
        let photos: Vec<RgbImage> = (0..30).map(photo).collect();
        let kinds = [
            "JPEG quality 90",
            "JPEG quality 75",
            "5% brighter",
            "mirrored",
        ];
        let mut caught_of_kind = [0; 4];
        for (i, p) in photos.iter().enumerate() {
            let brighter = RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb(
                    p.get_pixel(x, y)
                        .0
                        .map(|v| (f32::from(v) * 1.05).min(255.0) as u8),
                )
            });
            let copies = [
                jpeg(p, 90),
                jpeg(p, 75),
                brighter,
                image::imageops::flip_horizontal(p),
            ];
            for (k, copy) in copies.iter().enumerate() {
                caught_of_kind[k] += usize::from(caught(p, copy));
            }
            for (j, other) in photos.iter().enumerate().skip(i + 1) {
                assert!(!caught(p, other), "photos {i} and {j} taken for copies");
            }
        }
        let caught: Vec<(&str, usize)> = kinds.into_iter().zip(caught_of_kind).collect();
        assert!(caught_of_kind[1] >= 27, "{caught:?} of 30");
        assert_eq!(
            [0, 2, 3].map(|k| caught_of_kind[k]),
            [30; 3],
            "{caught:?} of 30"
        );
    }

    #[test]
    fn the_mirror_fingerprint_is_the_mirrored_image_fingerprint() {
        for seed in 0..10 {
            let p = photo(seed);
            let flipped = image::imageops::flip_horizontal(&p);
            let (a, b) = (
                fingerprint(&chw(&p), SHAPE),
                fingerprint(&chw(&flipped), SHAPE),
            );
            assert!(distance(a.mirror, b.hash) <= 2, "seed {seed}: {a:?} {b:?}");
            assert!(
                distance(a.hash, b.hash) > 16,
                "seed {seed}: a mirror is not a copy as it is"
            );
        }
    }

    #[test]
    fn other_sizes_and_grey_images_have_fingerprints() {
        let p = DynamicImage::ImageRgb8(photo(3));
        let big = p
            .resize_exact(96, 64, image::imageops::FilterType::Triangle)
            .to_luma8();
        let small = p
            .resize_exact(48, 32, image::imageops::FilterType::Triangle)
            .to_luma8();
        let shape = |w, h| ImageShape {
            channels: 1,
            height: h,
            width: w,
        };
        let (a, b) = (
            fingerprint(big.as_raw(), shape(96, 64)),
            fingerprint(small.as_raw(), shape(48, 32)),
        );
        assert!(distance(a.hash, b.hash) <= 4, "{a:?} {b:?}");
    }

    #[test]
    fn correlation_ignores_brightness_and_contrast_and_handles_flat_images() {
        let img = chw(&photo(5));
        let scaled: Vec<u8> = img.iter().map(|&v| v / 2 + 40).collect();
        assert!(correlation(&img, &scaled, SHAPE, false) > 0.999);
        let flat = vec![90u8; img.len()];
        let other_flat = vec![10u8; img.len()];
        assert_eq!(correlation(&flat, &other_flat, SHAPE, false), 1.0);
        assert_eq!(correlation(&img, &flat, SHAPE, false), 0.0);
        let inverted: Vec<u8> = img.iter().map(|&v| 255 - v).collect();
        assert!(correlation(&img, &inverted, SHAPE, false) < -0.999);
    }
}
