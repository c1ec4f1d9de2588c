//! Cheap label-preserving augmentation for small labeled sets.

use crate::ImageShape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Random integer translation by up to `max_shift` pixels in x and y (zero padded), one draw
/// per image, in parallel. Each image's generator comes from `seed` and the image's position,
/// so the result does not depend on the thread count.
///
/// Panics if `images` is not a whole number of images or `out` differs in length from it
/// (caller bugs, not data problems).
pub fn random_shift_batch(
    images: &[f32],
    shape: ImageShape,
    max_shift: usize,
    seed: u64,
    out: &mut [f32],
) {
    let n = shape.len();
    assert_eq!(images.len(), out.len(), "random_shift_batch: output length");
    if n == 0 {
        return;
    }
    assert_eq!(images.len() % n, 0, "random_shift_batch: partial image");
    let (h, w) = (shape.height, shape.width);
    let m = max_shift as i64;
    out.par_chunks_mut(n)
        .zip(images.par_chunks(n))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            let dx = rng.gen_range(-m..=m);
            let dy = rng.gen_range(-m..=m);
            shift(src, dst, shape.channels, h, w, dx, dy);
        });
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
