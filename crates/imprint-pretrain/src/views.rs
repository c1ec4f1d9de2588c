//! The views of a batch that pre-training's encoder sees: each image moved by the augmentation
//! and corrupted by the noise, drawn afresh for every view.

use crate::config::Noise;
use crate::pretext::ViewNeeds;
use imprint_data::augment::{augment_batch, augment_batch_to, Augment};
use imprint_data::ImageShape;
use rand::seq::SliceRandom;
use rand::Rng;

/// `original` moved by `augment` into `out`; a plain copy, with nothing drawn from `rng`, when
/// there is no augmentation.
pub(crate) fn move_batch(
    original: &[f32],
    shape: ImageShape,
    augment: &Augment,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    if augment.is_identity() {
        out.copy_from_slice(original);
    } else {
        augment_batch(original, shape, augment, rng.gen(), out);
    }
}

/// Corrupts a batch of images in place; `hidden` gets 1 where a `Patches` mask hid a pixel.
pub(crate) fn corrupt(
    x: &mut [f32],
    shape: ImageShape,
    noise: Noise,
    rng: &mut impl Rng,
    hidden: &mut [f32],
) {
    match noise {
        Noise::None => {}
        Noise::Patches { patch, fraction } => {
            let (rows, cols) = (shape.height.div_ceil(patch), shape.width.div_ceil(patch));
            let mut order: Vec<usize> = (0..rows * cols).collect();
            let hide = ((rows * cols) as f32 * fraction).round().max(1.0) as usize;
            hidden.fill(0.0);
            for (img, mask) in x
                .chunks_exact_mut(shape.len())
                .zip(hidden.chunks_exact_mut(shape.len()))
            {
                order.shuffle(rng);
                for &p in &order[..hide] {
                    let (r0, c0) = ((p / cols) * patch, (p % cols) * patch);
                    for c in 0..shape.channels {
                        for r in r0..(r0 + patch).min(shape.height) {
                            let row = (c * shape.height + r) * shape.width;
                            for i in row + c0..row + (c0 + patch).min(shape.width) {
                                img[i] = 0.0;
                                mask[i] = 1.0;
                            }
                        }
                    }
                }
            }
        }
        Noise::Masking { fraction } => x.iter_mut().for_each(|v| {
            if rng.gen::<f32>() < fraction {
                *v = 0.0
            }
        }),
        Noise::Gaussian { std } => {
            let normal = rand::distributions::Uniform::new(0.0f32, 1.0);
            x.iter_mut().for_each(|v| {
                // Box-Muller from two uniforms keeps us on the `rand` crate alone.
                let (u1, u2): (f32, f32) = (rng.sample(normal).max(1e-7), rng.sample(normal));
                let g = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                *v = (*v + std * g).clamp(0.0, 1.0);
            })
        }
    }
}

/// One training batch as the pretexts see it.
pub(crate) struct Views {
    /// The full-size views, each the batch moved and corrupted afresh, the first first.
    pub global: Vec<Vec<f32>>,
    /// What the decoder must draw from the first view: its moved images (the originals with
    /// [`ViewPlan::original_target`]).
    pub target: Vec<f32>,
    /// 1 where the first view's patches were hidden.
    pub hidden: Vec<f32>,
    /// Quarter turns of each image of the first view (input, target and mask alike), with
    /// [`ViewPlan::turned`].
    pub turns: Option<Vec<usize>>,
    /// The small crops, each the batch cropped, moved and corrupted afresh.
    pub local: Vec<Vec<f32>>,
}

/// The views a step draws: what every pretext of the run needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ViewPlan {
    pub global: usize,
    pub turned: bool,
    pub original_target: bool,
    /// How many small crops, their shape, and the range of the share of the image they cover.
    pub local: Option<(usize, ImageShape, (f64, f64))>,
}

impl ViewPlan {
    /// The plan for `needs` (merged over the pretexts, see [`crate::PretrainConfig`]) on images
    /// of `input`.
    pub fn new(needs: ViewNeeds, input: ImageShape) -> Self {
        Self {
            global: needs.global,
            turned: needs.turned,
            original_target: needs.original_target,
            local: needs
                .local
                .map(|c| (c.local_crops, c.shape(input), c.local_scale)),
        }
    }
}

impl Views {
    /// The views of the images `rows` of a batch of `batch` images (a replica's share).
    pub(crate) fn rows(self, rows: std::ops::Range<usize>, batch: usize) -> Views {
        let cut = |v: Vec<f32>| {
            let len = v.len() / batch;
            v[rows.start * len..rows.end * len].to_vec()
        };
        Views {
            global: self.global.into_iter().map(cut).collect(),
            target: cut(self.target),
            hidden: cut(self.hidden),
            turns: self.turns.map(|t| t[rows.clone()].to_vec()),
            local: self.local.into_iter().map(cut).collect(),
        }
    }
}

/// `img` (channel by channel) turned counter-clockwise by `turns` quarter turns; a turn by 90°
/// or 270° needs a square image.
pub(crate) fn turn(img: &[f32], shape: ImageShape, turns: usize) -> Vec<f32> {
    let (h, w) = (shape.height, shape.width);
    let mut out = vec![0.0; img.len()];
    for (src, dst) in img.chunks_exact(h * w).zip(out.chunks_exact_mut(h * w)) {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = match turns % 4 {
                    0 => (y, x),
                    1 => (x, w - 1 - y),
                    2 => (h - 1 - y, w - 1 - x),
                    _ => (h - 1 - x, y),
                };
                dst[y * w + x] = src[sy * w + sx];
            }
        }
    }
    out
}

/// Turns each image of `batches` (several buffers of the same images) by its own draw.
fn turn_each(batches: &mut [&mut Vec<f32>], shape: ImageShape, rng: &mut impl Rng) -> Vec<usize> {
    let images = batches[0].len() / shape.len();
    let choices = if shape.height == shape.width { 4 } else { 2 };
    let turns: Vec<usize> = (0..images)
        .map(|_| rng.gen_range(0..choices) * (4 / choices))
        .collect();
    for batch in batches.iter_mut() {
        for (img, &t) in batch.chunks_exact_mut(shape.len()).zip(&turns) {
            let turned = turn(img, shape, t);
            img.copy_from_slice(&turned);
        }
    }
    turns
}

/// Draws the views of `original` (a batch of images of `shape`) in a fixed order: the first
/// view's move, its corruption, its turns (with [`ViewPlan::turned`]); then each further
/// full-size view's move and corruption; then each small crop's crop-and-move and corruption.
pub(crate) fn draw_views(
    original: &[f32],
    shape: ImageShape,
    plan: &ViewPlan,
    augment: &Augment,
    noise: Noise,
    rng: &mut impl Rng,
) -> Views {
    let len = original.len();
    let mut global = Vec::with_capacity(plan.global);
    let mut target = vec![0.0; len];
    move_batch(original, shape, augment, rng, &mut target);
    let mut input = target.clone();
    if plan.original_target {
        target.copy_from_slice(original);
    }
    let mut hidden = vec![0.0; len];
    corrupt(&mut input, shape, noise, rng, &mut hidden);
    let turns = plan
        .turned
        .then(|| turn_each(&mut [&mut input, &mut target, &mut hidden], shape, rng));
    global.push(input);
    for _ in 1..plan.global {
        let mut view = vec![0.0; len];
        move_batch(original, shape, augment, rng, &mut view);
        let mut view_hidden = vec![0.0; len];
        corrupt(&mut view, shape, noise, rng, &mut view_hidden);
        global.push(view);
    }
    let mut local = Vec::new();
    if let Some((count, crop, scale)) = plan.local {
        let cropping = Augment {
            crop_scale: Some(scale),
            ..*augment
        };
        let crop_len = len / shape.len() * crop.len();
        for _ in 0..count {
            let mut view = vec![0.0; crop_len];
            augment_batch_to(original, shape, &cropping, rng.gen(), crop, &mut view);
            let mut view_hidden = vec![0.0; crop_len];
            corrupt(&mut view, crop, noise, rng, &mut view_hidden);
            local.push(view);
        }
    }
    Views {
        global,
        target,
        hidden,
        turns,
        local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn turns_go_counter_clockwise_and_four_come_back() {
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        // 0 1      1 3
        // 2 3  ->  0 2  (a quarter turn counter-clockwise)
        let img = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(turn(&img, shape, 1), [1.0, 3.0, 0.0, 2.0]);
        assert_eq!(turn(&img, shape, 2), [3.0, 2.0, 1.0, 0.0]);
        assert_eq!(turn(&turn(&img, shape, 1), shape, 3), img);
    }

    #[test]
    fn patches_hide_whole_squares_and_mark_them() {
        let shape = ImageShape {
            channels: 1,
            height: 6,
            width: 6,
        };
        let mut x = vec![1.0f32; 2 * 36];
        let mut hidden = vec![0.0f32; 2 * 36];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        corrupt(
            &mut x,
            shape,
            Noise::Patches {
                patch: 3,
                fraction: 0.5,
            },
            &mut rng,
            &mut hidden,
        );
        for (img, mask) in x.chunks(36).zip(hidden.chunks(36)) {
            // 4 patches of 3x3, half hidden: 18 pixels, each zeroed exactly where marked.
            assert_eq!(mask.iter().filter(|&&m| m == 1.0).count(), 18);
            assert!(img
                .iter()
                .zip(mask)
                .all(|(v, m)| (*v == 0.0) == (*m == 1.0)));
        }
    }
}
