//! Label-preserving augmentation, drawn per image: the one settings struct that pre-training's
//! views and fine-tuning's batches share (flattened into `[pretrain]` and `[finetune]` of a
//! pipeline file, keys `augment_*`).

use crate::ImageShape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Label-preserving random transforms, drawn per image; each is off by default. The moves
/// (shift, rotation, mirror, zoom) come first, then the photo operations of [`crate::photo`]
/// (padded and random resized crops, colour jitter, greyscale, blur).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Integer translation by up to this many pixels in x and y (zero padded).
    #[serde(rename = "augment_shift", default)]
    pub shift: usize,
    /// Rotation about the centre by an angle drawn from `[-rotate, rotate]` degrees.
    #[serde(rename = "augment_rotate", default)]
    pub rotate_degrees: f64,
    /// Mirror left-right with probability 1/2 (for data where that keeps the label).
    #[serde(rename = "augment_flip", default)]
    pub flip: bool,
    /// Zoom about the centre by a factor drawn from `[1 - scale, 1 + scale]`: the
    /// crop-and-resize of SimCLR, for images whose object sits in the middle.
    #[serde(rename = "augment_scale", default)]
    pub scale: f64,
    /// Random resized crops: area fraction range, within `(0, 1]`; `None` for none. SimCLR uses
    /// (0.2, 1.0) on CIFAR and (0.08, 1.0) on ImageNet.
    #[serde(rename = "augment_crop_scale", default)]
    pub crop_scale: Option<(f64, f64)>,
    /// Aspect-ratio (width / height) range of the random resized crops.
    #[serde(
        rename = "augment_crop_ratio",
        default = "crate::photo::default_crop_ratio"
    )]
    pub crop_ratio: (f64, f64),
    /// Zero padding on every side before a random crop back to size; 0 for none (CIFAR: 4).
    #[serde(rename = "augment_pad_crop", default)]
    pub pad_crop: usize,
    /// Colour jitter strengths: brightness, contrast, saturation, hue; all 0 for none. SimCLR
    /// uses 0.8 s, 0.8 s, 0.8 s, 0.2 s for colour strength s: 0.4, 0.4, 0.4, 0.1 on CIFAR.
    #[serde(rename = "augment_jitter", default)]
    pub jitter: [f64; 4],
    /// Probability that an image is jittered (SimCLR: 0.8).
    #[serde(rename = "augment_jitter_probability", default = "always")]
    pub jitter_probability: f64,
    /// Probability that an image is turned grey (SimCLR: 0.2).
    #[serde(rename = "augment_grayscale", default)]
    pub grayscale: f64,
    /// Probability that an image is blurred; 0 for never.
    #[serde(rename = "augment_blur", default)]
    pub blur: f64,
}

fn always() -> f64 {
    1.0
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            shift: 0,
            rotate_degrees: 0.0,
            flip: false,
            scale: 0.0,
            crop_scale: None,
            crop_ratio: crate::photo::default_crop_ratio(),
            pad_crop: 0,
            jitter: [0.0; 4],
            jitter_probability: always(),
            grayscale: 0.0,
            blur: 0.0,
        }
    }
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        self.shift == 0
            && self.rotate_degrees == 0.0
            && !self.flip
            && self.scale == 0.0
            && self.photo_is_identity()
    }

    /// The setting (named as in pipeline files) that is out of range, and why; `None` if all
    /// are usable. Shared by the pre-training and fine-tuning checks.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if !(0.0..=180.0).contains(&self.rotate_degrees) {
            return Some(("augment_rotate", "must be in [0, 180] degrees"));
        }
        if !(0.0..=0.5).contains(&self.scale) {
            return Some(("augment_scale", "must be in [0, 0.5]"));
        }
        self.photo_problem()
    }

    /// The transforms in use, as phrases for reports ("shifts ±2 px", "rotations ±12°", "flips").
    pub fn describe(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.shift > 0 {
            parts.push(format!("shifts ±{} px", self.shift));
        }
        if self.rotate_degrees > 0.0 {
            parts.push(format!("rotations ±{}°", self.rotate_degrees));
        }
        if self.flip {
            parts.push("flips".into());
        }
        if self.scale > 0.0 {
            parts.push(format!("zooms ±{}%", crate::percent(self.scale)));
        }
        parts.extend(self.photo_describe());
        parts
    }
}

/// Random integer translation by up to `max_shift` pixels in x and y (zero padded): [`augment_batch`]
/// with a shift alone.
pub fn random_shift_batch(
    images: &[f32],
    shape: ImageShape,
    max_shift: usize,
    seed: u64,
    out: &mut [f32],
) {
    let augment = Augment {
        shift: max_shift,
        ..Augment::default()
    };
    augment_batch(images, shape, &augment, seed, out);
}

/// Applies `augment` to each image of `images` into `out`, one draw per image, in parallel:
/// the moves, then the photo operations ([`Augment::apply_photo`]) from the same generator.
/// Each image's generator comes from `seed` and the image's position, so the result does not
/// depend on the thread count. A shift alone moves whole pixels; with a rotation, a flip or a
/// zoom, each output pixel samples the source bilinearly (zero outside). A zoom is drawn last and
/// only when asked for, so settings without one draw what they drew before it existed.
///
/// Panics if `images` is not a whole number of images or `out` differs in length from it
/// (caller bugs, not data problems).
pub fn augment_batch(
    images: &[f32],
    shape: ImageShape,
    augment: &Augment,
    seed: u64,
    out: &mut [f32],
) {
    assert_eq!(images.len(), out.len(), "augment_batch: output length");
    augment_batch_to(images, shape, augment, seed, shape, out)
}

/// [`augment_batch`] giving images of `out_shape` (same channels): each image is moved at its
/// own size, then its crop (the whole image without `crop_scale`) is resized to `out_shape`
/// ([`Augment::apply_photo_to`]), as multi-crop's small views are. With `out_shape == shape`
/// it is `augment_batch`, draw for draw.
///
/// Panics if `images` is not a whole number of images or `out` does not hold as many of
/// `out_shape` (caller bugs, not data problems).
pub fn augment_batch_to(
    images: &[f32],
    shape: ImageShape,
    augment: &Augment,
    seed: u64,
    out_shape: ImageShape,
    out: &mut [f32],
) {
    let (n, n_out) = (shape.len(), out_shape.len());
    if n == 0 || n_out == 0 {
        return;
    }
    assert_eq!(images.len() % n, 0, "augment_batch: partial image");
    assert_eq!(
        out.len(),
        images.len() / n * n_out,
        "augment_batch: output length"
    );
    let resized = out_shape != shape;
    let (h, w) = (shape.height, shape.width);
    let m = augment.shift as i64;
    let max_angle = augment.rotate_degrees.abs().to_radians();
    out.par_chunks_mut(n_out)
        .zip(images.par_chunks(n))
        .enumerate()
        .for_each(|(i, (out, src))| {
            // Moved at the source's size: in `out` itself unless it is of another size.
            let mut moved_apart = if resized { vec![0.0; n] } else { Vec::new() };
            let dst: &mut [f32] = if resized { &mut moved_apart } else { &mut *out };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            let dx = rng.gen_range(-m..=m);
            let dy = rng.gen_range(-m..=m);
            let angle = if max_angle > 0.0 {
                rng.gen_range(-max_angle..=max_angle)
            } else {
                0.0
            };
            let flip = augment.flip && rng.gen_bool(0.5);
            let zoom = if augment.scale > 0.0 {
                rng.gen_range(1.0 - augment.scale..=1.0 + augment.scale)
            } else {
                1.0
            };
            if angle == 0.0 && !flip && zoom == 1.0 {
                shift(src, dst, shape.channels, h, w, dx, dy);
            } else {
                let moves = Moves {
                    d: (dx as f64, dy as f64),
                    angle,
                    flip,
                    zoom,
                };
                warp(src, dst, shape, &moves);
            }
            if resized {
                augment.apply_photo_to(&moved_apart, shape, &mut rng, out_shape, out);
            } else if !augment.photo_is_identity() {
                let moved = out.to_vec();
                augment.apply_photo(&moved, shape, &mut rng, out);
            }
        });
}

/// One image's draw: a move by `d` pixels, a rotation by `angle` radians, a mirror, a zoom.
struct Moves {
    d: (f64, f64),
    angle: f64,
    flip: bool,
    zoom: f64,
}

/// `dst` is `src` mirrored (if `flip`), rotated by `angle` and zoomed by `zoom` about the centre,
/// then moved by `d`; each output pixel samples the source bilinearly, zero outside it.
fn warp(src: &[f32], dst: &mut [f32], shape: ImageShape, m: &Moves) {
    let (h, w) = (shape.height, shape.width);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = m.angle.sin_cos();
    let (sin, cos) = (sin / m.zoom, cos / m.zoom);
    let at = |plane: &[f32], y: i64, x: i64| -> f64 {
        if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
            0.0
        } else {
            plane[y as usize * w + x as usize] as f64
        }
    };
    for (src_plane, dst_plane) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for y in 0..h {
            for x in 0..w {
                // Inverse map: undo the move, then the zoom and rotation, then the mirror.
                let (u, v) = (x as f64 - m.d.0 - cx, y as f64 - m.d.1 - cy);
                let (mut sx, sy) = (cos * u + sin * v + cx, -sin * u + cos * v + cy);
                if m.flip {
                    sx = w as f64 - 1.0 - sx;
                }
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let top = at(src_plane, y0, x0) * (1.0 - fx) + at(src_plane, y0, x0 + 1) * fx;
                let bottom =
                    at(src_plane, y0 + 1, x0) * (1.0 - fx) + at(src_plane, y0 + 1, x0 + 1) * fx;
                dst_plane[y * w + x] = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        }
    }
}

/// `dst(y, x) = src(y - dy, x - dx)`, zero where that falls outside.
fn shift(src: &[f32], dst: &mut [f32], channels: usize, h: usize, w: usize, dx: i64, dy: i64) {
    dst.fill(0.0);
    let (hi, wi) = (h as i64, w as i64);
    if dx.abs() >= wi || dy.abs() >= hi {
        return;
    }
    // columns that survive the shift, as ranges in source and destination rows
    let (sx, tx, run) = if dx >= 0 {
        (0, dx as usize, (wi - dx) as usize)
    } else {
        ((-dx) as usize, 0, (wi + dx) as usize)
    };
    for c in 0..channels {
        let plane = c * h * w;
        for y in 0..h {
            let ys = y as i64 - dy;
            if ys < 0 || ys >= hi {
                continue;
            }
            let s = plane + ys as usize * w + sx;
            let t = plane + y * w + tx;
            dst[t..t + run].copy_from_slice(&src[s..s + run]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ImageShape = ImageShape {
        channels: 2,
        height: 5,
        width: 4,
    };

    fn batch(n: usize) -> Vec<f32> {
        (0..n * SHAPE.len())
            .map(|i| (i % 97) as f32 + 1.0)
            .collect()
    }

    #[test]
    fn zero_shift_is_identity() {
        let x = batch(3);
        let mut out = vec![-1.0; x.len()];
        random_shift_batch(&x, SHAPE, 0, 5, &mut out);
        assert_eq!(out, x);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let x = batch(64);
        let mut a = vec![0.0; x.len()];
        random_shift_batch(&x, SHAPE, 2, 9, &mut a);
        let mut b = vec![0.0; x.len()];
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| random_shift_batch(&x, SHAPE, 2, 9, &mut b));
        assert_eq!(a, b);
        assert_ne!(a, x, "some image moved");
        let mut c = vec![0.0; x.len()];
        random_shift_batch(&x, SHAPE, 2, 10, &mut c);
        assert_ne!(a, c, "another seed moves differently");
    }

    #[test]
    fn warp_rotates_quarter_turns_and_mirrors_exactly() {
        // 1 channel, 3x3: a quarter turn and a mirror move whole pixels, so no blending.
        let shape = ImageShape {
            channels: 1,
            height: 3,
            width: 3,
        };
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 9];
        let quarter = std::f64::consts::FRAC_PI_2;
        warp(&src, &mut dst, shape, &moves((0.0, 0.0), quarter, false));
        let round = |v: &[f32]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
        // A positive angle turns the picture clockwise as displayed (y grows downwards): the
        // left column, read upwards, becomes the top row.
        assert_eq!(
            round(&dst),
            vec![7.0, 4.0, 1.0, 8.0, 5.0, 2.0, 9.0, 6.0, 3.0]
        );
        warp(&src, &mut dst, shape, &moves((0.0, 0.0), 0.0, true));
        assert_eq!(dst, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0]);
        warp(&src, &mut dst, shape, &moves((1.0, 0.0), 0.0, false));
        assert_eq!(dst, vec![0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 8.0]);
    }

    fn moves(d: (f64, f64), angle: f64, flip: bool) -> Moves {
        Moves {
            d,
            angle,
            flip,
            zoom: 1.0,
        }
    }

    #[test]
    fn zoom_scales_about_the_centre() {
        // 1 channel, 5x5, each pixel worth its column + 1: bilinear sampling of a ramp is exact.
        let shape = ImageShape {
            channels: 1,
            height: 5,
            width: 5,
        };
        let src: Vec<f32> = (0..25).map(|i| (i % 5 + 1) as f32).collect();
        let mut dst = vec![0.0; 25];
        let zoomed = |zoom| Moves {
            zoom,
            ..moves((0.0, 0.0), 0.0, false)
        };
        // Twice the size: the middle three columns spread over all five.
        warp(&src, &mut dst, shape, &zoomed(2.0));
        for row in dst.chunks(5) {
            assert_eq!(row, [2.0, 2.5, 3.0, 3.5, 4.0]);
        }
        // Half the size: every other column, a zero border where the source ends.
        warp(&src, &mut dst, shape, &zoomed(0.5));
        assert_eq!(&dst[..5], [0.0; 5]);
        assert_eq!(&dst[20..], [0.0; 5]);
        for row in dst[5..20].chunks(5) {
            assert_eq!(row, [0.0, 1.0, 3.0, 5.0, 0.0]);
        }
    }

    #[test]
    fn zoom_changes_the_draw_and_repeats() {
        let x = batch(16);
        let rotate = Augment {
            shift: 1,
            rotate_degrees: 10.0,
            ..Augment::default()
        };
        let zoom = Augment {
            scale: 0.2,
            ..rotate
        };
        let (mut a, mut b, mut c) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
        augment_batch(&x, SHAPE, &rotate, 3, &mut a);
        augment_batch(&x, SHAPE, &zoom, 3, &mut b);
        augment_batch(&x, SHAPE, &zoom, 3, &mut c);
        assert_ne!(a, b);
        assert_eq!(b, c);
        assert_eq!(zoom.describe().last().unwrap(), "zooms ±20%");
        for (scale, phrase) in [
            (0.07, "zooms ±7%"),
            (0.29, "zooms ±29%"),
            (0.125, "zooms ±12.5%"),
        ] {
            let described = Augment { scale, ..zoom }.describe();
            assert_eq!(described.last().unwrap(), phrase);
        }
        assert!(Augment { scale: 0.6, ..zoom }.problem().is_some());
        assert!(!Augment {
            scale: 0.1,
            ..Augment::default()
        }
        .is_identity());
    }

    #[test]
    fn small_rotations_keep_a_centred_blob_and_vary_by_seed() {
        let shape = ImageShape {
            channels: 1,
            height: 9,
            width: 9,
        };
        let mut img = vec![0.0f32; 81];
        for y in 3..6 {
            for x in 2..7 {
                img[y * 9 + x] = 1.0;
            }
        }
        let x: Vec<f32> = img.repeat(16);
        let augment = Augment {
            rotate_degrees: 15.0,
            ..Augment::default()
        };
        let mut out = vec![0.0; x.len()];
        augment_batch(&x, shape, &augment, 4, &mut out);
        for rotated in out.chunks(81) {
            // bilinear sampling inside the frame keeps the mass within a few percent
            let mass: f32 = rotated.iter().sum();
            assert!((mass - 15.0).abs() < 1.5, "mass {mass}");
            assert_eq!(rotated[4 * 9 + 4], 1.0, "the centre stays put");
        }
        assert!(
            out.chunks(81).any(|r| r != img.as_slice()),
            "something rotated"
        );
        let mut again = vec![0.0; x.len()];
        augment_batch(&x, shape, &augment, 4, &mut again);
        assert_eq!(out, again);
    }

    #[test]
    fn shift_moves_pixels_and_pads_zero() {
        let src: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // 1 channel, 2x3
        let mut dst = vec![0.0; 6];
        shift(&src, &mut dst, 1, 2, 3, 1, 0);
        assert_eq!(dst, vec![0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
        shift(&src, &mut dst, 1, 2, 3, -1, 1);
        assert_eq!(dst, vec![0.0, 0.0, 0.0, 2.0, 3.0, 0.0]);
        shift(&src, &mut dst, 1, 2, 3, 3, 0);
        assert_eq!(dst, vec![0.0; 6]);
        // every shifted image keeps at most the original mass and values
        let x = batch(8);
        let mut out = vec![0.0; x.len()];
        random_shift_batch(&x, SHAPE, 1, 3, &mut out);
        for (a, b) in out.chunks(SHAPE.len()).zip(x.chunks(SHAPE.len())) {
            assert!(a.iter().sum::<f32>() <= b.iter().sum::<f32>());
        }
    }
}
