//! SimCLR-style photo augmentations: random resized crops, padded crops, colour jitter,
//! greyscale and Gaussian blur, each following torchvision's transform of the same name, and
//! their settings in [`Augment`], chained per image by [`Augment::apply_photo`].
//!
//! Images are `f32` CHW row-major in `[0, 1]` with 1 (grey) or 3 (RGB) channels; every
//! operation keeps the shape, and samples that fall outside the image read 0. Arithmetic is in
//! `f64`, rounded to `f32` once per operation, so results can differ from torchvision's `f32`
//! ones in the last bit or so.

use crate::augment::Augment;
use crate::ImageShape;
use rand::seq::SliceRandom;
use rand::Rng;

/// ITU-R 601-2 luma weights of red, green and blue (PIL's `convert("L")`; torchvision's tensor
/// path rounds red to 0.2989).
pub const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// Attempts at a crop of the drawn size before [`random_resized_crop_params`] falls back to a
/// centred one, as torchvision.
const CROP_ATTEMPTS: usize = 10;

/// The range the blur's sigma is drawn from (SimCLR, torchvision's default).
const BLUR_SIGMA: (f64, f64) = (0.1, 2.0);

/// The widest zero border [`Augment::pad_crop`] accepts.
const MAX_PAD_CROP: usize = 64;

/// `dst` is `src` mirrored left-right: `dst(c, y, x) = src(c, y, W - 1 - x)`.
///
/// Panics if `src` or `dst` is not one image of `shape` (a caller bug).
pub fn hflip(src: &[f32], shape: ImageShape, dst: &mut [f32]) {
    check_image("hflip", src, dst, shape);
    if shape.width == 0 {
        return;
    }
    for (s, d) in src
        .chunks_exact(shape.width)
        .zip(dst.chunks_exact_mut(shape.width))
    {
        d.copy_from_slice(s);
        d.reverse();
    }
}

/// Zero padding by `pad` pixels on every side, then the `H x W` window whose corner is at
/// (`top`, `left`) in padded coordinates: `dst(c, y, x) = src(c, y + top - pad, x + left - pad)`,
/// 0 outside the image. torchvision's `RandomCrop(size, padding=pad)` with fill 0 for given
/// offsets; (`pad`, `pad`) is the identity.
///
/// Panics if `src` or `dst` is not one image of `shape` (a caller bug).
pub fn pad_crop(
    src: &[f32],
    shape: ImageShape,
    pad: usize,
    (top, left): (usize, usize),
    dst: &mut [f32],
) {
    check_image("pad_crop", src, dst, shape);
    let dy = top as i64 - pad as i64;
    let dx = left as i64 - pad as i64;
    copy_window(src, shape, dy, dx, dst);
}

/// The offsets of a random padded crop: `top` then `left`, each uniform over the integers
/// `0..=2 * pad` (torchvision's `RandomCrop.get_params` on the padded image). Draws two integers.
pub fn pad_crop_params(pad: usize, rng: &mut impl Rng) -> (usize, usize) {
    let top = rng.gen_range(0..=2 * pad);
    let left = rng.gen_range(0..=2 * pad);
    (top, left)
}

/// `dst(c, y, x) = src(c, y + dy, x + dx)`, 0 where that falls outside the image.
fn copy_window(src: &[f32], shape: ImageShape, dy: i64, dx: i64, dst: &mut [f32]) {
    dst.fill(0.0);
    let (h, w) = (shape.height as i64, shape.width as i64);
    // the output columns whose source column lies inside the image
    let (x_lo, x_hi) = ((-dx).clamp(0, w), (w - dx).clamp(0, w));
    if x_lo >= x_hi || h == 0 {
        return;
    }
    let plane = (h * w) as usize;
    for (s, d) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
        for y in 0..h {
            let sy = y + dy;
            if !(0..h).contains(&sy) {
                continue;
            }
            let to = (y * w + x_lo) as usize..(y * w + x_hi) as usize;
            let from = (sy * w + x_lo + dx) as usize..(sy * w + x_hi + dx) as usize;
            d[to].copy_from_slice(&s[from]);
        }
    }
}

/// The `crop_h x crop_w` window at (`top`, `left`), resized bilinearly back to `H x W`, as
/// torchvision's `resized_crop` on a tensor: PyTorch's
/// `interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)`.
///
/// Half-pixel centres: output row `y` reads crop row `s = max(0, (y + 0.5) * crop_h / H - 0.5)`,
/// blending rows `floor(s)` and `min(floor(s) + 1, crop_h - 1)` with weights
/// `1 - frac(s)` and `frac(s)`; columns likewise, so the crop's own edge is repeated. Crop pixels
/// outside the image read 0 (torchvision's `crop` pads them with zeros). For a crop no larger
/// than the output, as every crop inside the image, antialiasing changes nothing; a larger crop
/// is resized without it (`antialias=False`). A crop with no pixels gives an all-zero image.
///
/// Panics if `src` or `dst` is not one image of `shape` (a caller bug).
pub fn resized_crop(
    src: &[f32],
    shape: ImageShape,
    window: (usize, usize, usize, usize),
    dst: &mut [f32],
) {
    resized_crop_to(src, shape, window, shape, dst)
}

/// [`resized_crop`] to an image of `out`'s height and width (same channels): the small crops
/// of multi-crop views.
///
/// Panics if `src` is not one image of `shape`, `dst` not one of `out`, or the channel counts
/// differ (caller bugs).
pub fn resized_crop_to(
    src: &[f32],
    shape: ImageShape,
    (top, left, crop_h, crop_w): (usize, usize, usize, usize),
    out: ImageShape,
    dst: &mut [f32],
) {
    assert_eq!(src.len(), shape.len(), "resized_crop: input length");
    assert_eq!(dst.len(), out.len(), "resized_crop: output length");
    assert_eq!(shape.channels, out.channels, "resized_crop: channels");
    let (h, w) = (shape.height, shape.width);
    let (oh, ow) = (out.height, out.width);
    if crop_h == 0 || crop_w == 0 || h * w == 0 || oh * ow == 0 {
        dst.fill(0.0);
        return;
    }
    let rows = bilinear_taps(crop_h, oh);
    let cols = bilinear_taps(crop_w, ow);
    for (s, d) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
        let at = |r: usize, c: usize| -> f64 {
            let (y, x) = (top + r, left + c);
            if y < h && x < w {
                s[y * w + x] as f64
            } else {
                0.0
            }
        };
        for (y, row) in rows.iter().enumerate() {
            for (x, col) in cols.iter().enumerate() {
                let upper = col.blend(at(row.near, col.near), at(row.near, col.far));
                let lower = col.blend(at(row.far, col.near), at(row.far, col.far));
                d[y * ow + x] = row.blend(upper, lower) as f32;
            }
        }
    }
}

/// One output coordinate's two source neighbours and the weight of the farther one.
struct Tap {
    near: usize,
    far: usize,
    weight: f64,
}

impl Tap {
    fn blend(&self, near: f64, far: f64) -> f64 {
        near * (1.0 - self.weight) + far * self.weight
    }
}

/// Bilinear taps resizing `input` samples to `output` with half-pixel centres and the source
/// coordinate clamped at 0 (PyTorch's `align_corners=False`). `input` must be positive.
fn bilinear_taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let near = (s.floor() as usize).min(input - 1);
            Tap {
                near,
                far: (near + 1).min(input - 1),
                weight: s - near as f64,
            }
        })
        .collect()
}

/// A random crop `(top, left, crop_h, crop_w)` of a `height x width` image, by torchvision's
/// `RandomResizedCrop.get_params`: up to 10 attempts, each drawing an area fraction uniform in
/// `scale` and an aspect ratio (width / height) log-uniform in `ratio`, giving
/// `crop_w = round(sqrt(area * aspect))` and `crop_h = round(sqrt(area / aspect))` (ties to even,
/// as Python's `round`); the first that fits in the image draws `top` uniform in
/// `0..=height - crop_h`, then `left` in `0..=width - crop_w`. If none fits, the whole image
/// narrowed to the nearest end of `ratio` (never below one pixel), centred, without a draw.
/// Each uniform real is `lo + (hi - lo) * u`, `u` uniform in `[0, 1)`, with `lo`, `hi` in the
/// order given (the fallback takes `ratio`'s smaller and larger end). An empty image gives
/// itself.
pub fn random_resized_crop_params(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    if height == 0 || width == 0 {
        return (0, 0, height, width);
    }
    let area = (height * width) as f64;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..CROP_ATTEMPTS {
        let target = area * uniform(rng, scale);
        let aspect = uniform(rng, log_ratio).exp();
        let crop_w = (target * aspect).sqrt().round_ties_even();
        let crop_h = (target / aspect).sqrt().round_ties_even();
        // written so that NaN (from a bad range) fails the test
        let fits = |size: f64, side: usize| size > 0.0 && size <= side as f64;
        if fits(crop_w, width) && fits(crop_h, height) {
            let (crop_h, crop_w) = (crop_h as usize, crop_w as usize);
            let top = rng.gen_range(0..=height - crop_h);
            let left = rng.gen_range(0..=width - crop_w);
            return (top, left, crop_h, crop_w);
        }
    }
    central_crop(height, width, ratio)
}

/// torchvision's fallback: the whole image if its aspect ratio is within `ratio`, else the
/// largest centred crop at the nearer end of the range.
fn central_crop(height: usize, width: usize, ratio: (f64, f64)) -> (usize, usize, usize, usize) {
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let in_ratio = width as f64 / height as f64;
    let rounded = |v: f64, side: usize| (v.round_ties_even() as usize).clamp(1, side);
    let (crop_h, crop_w) = if in_ratio < lo {
        (rounded(width as f64 / lo, height), width)
    } else if in_ratio > hi {
        (height, rounded(height as f64 * hi, width))
    } else {
        (height, width)
    };
    ((height - crop_h) / 2, (width - crop_w) / 2, crop_h, crop_w)
}

/// `lo + (hi - lo) * u` with `u` uniform in `[0, 1)`, as torch's `uniform_`; never panics, even
/// on an empty or reversed range.
fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// torchvision's `_blend`: `ratio * a + (1 - ratio) * b`, clamped to `[0, 1]`.
fn blend(a: f32, b: f64, ratio: f64) -> f32 {
    (ratio * a as f64 + (1.0 - ratio) * b).clamp(0.0, 1.0) as f32
}

fn luma(r: f32, g: f32, b: f32) -> f64 {
    LUMA[0] * r as f64 + LUMA[1] * g as f64 + LUMA[2] * b as f64
}

/// Pixels per channel plane when `shape` is RGB; `None` for any other channel count.
fn rgb_plane(shape: ImageShape) -> Option<usize> {
    (shape.channels == 3).then_some(shape.height * shape.width)
}

/// Brightness: every value `v` becomes `clamp(factor * v, 0, 1)` (a blend with black), in place;
/// torchvision's `adjust_brightness`.
pub fn adjust_brightness(img: &mut [f32], factor: f64) {
    for v in img {
        *v = blend(*v, 0.0, factor);
    }
}

/// Contrast: every value `v` becomes `clamp(factor * v + (1 - factor) * m, 0, 1)`, in place, where
/// `m` is the mean luma ([`LUMA`]) of an RGB image or the mean value of any other (grey) image;
/// torchvision's `adjust_contrast`.
pub fn adjust_contrast(img: &mut [f32], shape: ImageShape, factor: f64) {
    assert_eq!(img.len(), shape.len(), "adjust_contrast: image length");
    let mean = mean_grey(img, shape);
    for v in img {
        *v = blend(*v, mean, factor);
    }
}

/// The mean luma of an RGB image, or the mean value of a grey one; 0 when empty.
fn mean_grey(img: &[f32], shape: ImageShape) -> f64 {
    let Some(n) = rgb_plane(shape) else {
        let sum: f64 = img.iter().map(|&v| v as f64).sum();
        return if img.is_empty() {
            0.0
        } else {
            sum / img.len() as f64
        };
    };
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = (0..n)
        .map(|i| luma(img[i], img[n + i], img[2 * n + i]))
        .sum();
    sum / n as f64
}

/// Saturation: each RGB value `v` of a pixel with luma `l` ([`LUMA`]) becomes
/// `clamp(factor * v + (1 - factor) * l, 0, 1)` (a blend with the greyscale image), in place;
/// torchvision's `adjust_saturation`. Images without 3 channels are left as they are.
pub fn adjust_saturation(img: &mut [f32], shape: ImageShape, factor: f64) {
    assert_eq!(img.len(), shape.len(), "adjust_saturation: image length");
    let Some(n) = rgb_plane(shape) else {
        return;
    };
    for i in 0..n {
        let grey = luma(img[i], img[n + i], img[2 * n + i]);
        for c in 0..3 {
            img[c * n + i] = blend(img[c * n + i], grey, factor);
        }
    }
}

/// Hue: each RGB pixel goes to HSV, its hue `h` (in turns, `[0, 1)`) becomes
/// `(h + factor) mod 1`, and it comes back to RGB, in place; torchvision's `adjust_hue`, whose
/// HSV conversion this follows (PIL's). `factor` 0.5 turns red into cyan, 1/3 red into green.
/// Images without 3 channels are left as they are.
pub fn adjust_hue(img: &mut [f32], shape: ImageShape, factor: f64) {
    assert_eq!(img.len(), shape.len(), "adjust_hue: image length");
    let Some(n) = rgb_plane(shape) else {
        return;
    };
    for i in 0..n {
        let (h, s, v) = rgb_to_hsv(img[i] as f64, img[n + i] as f64, img[2 * n + i] as f64);
        let (r, g, b) = hsv_to_rgb((h + factor).rem_euclid(1.0), s, v);
        img[i] = r as f32;
        img[n + i] = g as f32;
        img[2 * n + i] = b as f32;
    }
}

/// Hue in turns `[0, 1)`, saturation and value; a grey pixel has hue and saturation 0.
fn rgb_to_hsv(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let max = r.max(g).max(b);
    let chroma = max - r.min(g).min(b);
    if chroma == 0.0 {
        return (0.0, 0.0, max);
    }
    let (rc, gc, bc) = ((max - r) / chroma, (max - g) / chroma, (max - b) / chroma);
    // sixths of a turn from red, green or blue, whichever is largest (red first on ties)
    let sixths = if max == r {
        bc - gc
    } else if max == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((sixths / 6.0 + 1.0) % 1.0, chroma / max, max)
}

fn hsv_to_rgb(h: f64, s: f64, v: f64) -> (f64, f64, f64) {
    let sector = (h * 6.0).floor();
    let f = h * 6.0 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (sector as i64).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Greyscale with 3 channels kept: each RGB channel of a pixel becomes its luma
/// `0.299 R + 0.587 G + 0.114 B` ([`LUMA`]), in place; torchvision's
/// `rgb_to_grayscale(img, num_output_channels=3)`. Images without 3 channels are left as they are.
pub fn to_grayscale(img: &mut [f32], shape: ImageShape) {
    assert_eq!(img.len(), shape.len(), "to_grayscale: image length");
    let Some(n) = rgb_plane(shape) else {
        return;
    };
    for i in 0..n {
        let grey = luma(img[i], img[n + i], img[2 * n + i]) as f32;
        for c in 0..3 {
            img[c * n + i] = grey;
        }
    }
}

/// One draw of colour jitter: the order the four adjustments run in and each one's factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// A permutation of 0 (brightness), 1 (contrast), 2 (saturation) and 3 (hue).
    pub order: [usize; 4],
    /// The factors of brightness, contrast, saturation and hue; `None` where the strength is 0.
    pub factors: [Option<f64>; 4],
}

impl Jitter {
    /// torchvision's `ColorJitter.get_params` for `strengths` = brightness, contrast,
    /// saturation, hue: a uniform random order first, then, for each non-zero strength `s` in
    /// that fixed order, a factor uniform in `[max(0, 1 - s), 1 + s]` (`[-s, s]` for hue).
    pub fn draw(strengths: [f64; 4], rng: &mut impl Rng) -> Jitter {
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut factors = [None; 4];
        for (i, (&s, factor)) in strengths.iter().zip(&mut factors).enumerate() {
            if s != 0.0 {
                *factor = Some(uniform(rng, jitter_range(i, s)));
            }
        }
        Jitter { order, factors }
    }

    /// Applies the drawn adjustments in `order`, in place: [`adjust_brightness`],
    /// [`adjust_contrast`], [`adjust_saturation`], [`adjust_hue`]. On a grey image only
    /// brightness and contrast change anything.
    pub fn apply(&self, img: &mut [f32], shape: ImageShape) {
        for &op in &self.order {
            let Some(factor) = self.factors.get(op).copied().flatten() else {
                continue;
            };
            match op {
                0 => adjust_brightness(img, factor),
                1 => adjust_contrast(img, shape, factor),
                2 => adjust_saturation(img, shape, factor),
                _ => adjust_hue(img, shape, factor),
            }
        }
    }
}

/// The range a jitter factor of strength `s` is drawn from: around 0 for hue (index 3), around 1,
/// never negative, for the others.
fn jitter_range(index: usize, s: f64) -> (f64, f64) {
    if index == 3 {
        (-s, s)
    } else {
        ((1.0 - s).max(0.0), 1.0 + s)
    }
}

/// The blur kernel SimCLR uses for an image whose shorter side is `side`: a tenth of it, rounded
/// down, then up to the next odd number (23 for 224, 3 for 32, 1, no blur, below 20).
pub fn blur_kernel_size(side: usize) -> usize {
    side / 10 / 2 * 2 + 1
}

/// Gaussian blur in place, as torchvision's `gaussian_blur(img, [k, k], [sigma, sigma])`: the
/// kernel `w_i = exp(-x_i^2 / (2 sigma^2))` normalised to sum 1 at `x_i = i - (k - 1) / 2`,
/// applied along rows then columns (the same sums as its 2-D kernel) over an image extended by
/// reflection without repeating the edge (PyTorch's `reflect`: `.. c b | a b c .. | b a ..`);
/// the reflection keeps going for kernels wider than the image, where PyTorch refuses.
///
/// Panics if `kernel_size` is even or `sigma` not positive (caller bugs).
pub fn gaussian_blur(img: &mut [f32], shape: ImageShape, sigma: f64, kernel_size: usize) {
    assert_eq!(img.len(), shape.len(), "gaussian_blur: image length");
    assert!(kernel_size % 2 == 1, "gaussian_blur: even kernel size");
    assert!(sigma > 0.0, "gaussian_blur: sigma must be positive");
    let (h, w) = (shape.height, shape.width);
    if h * w == 0 {
        return;
    }
    let kernel = gaussian_kernel(kernel_size, sigma);
    let radius = (kernel_size / 2) as i64;
    let mut across = vec![0.0f64; h * w];
    for plane in img.chunks_exact_mut(h * w) {
        for (i, out) in across.iter_mut().enumerate() {
            let (y, x) = (i / w, (i % w) as i64);
            *out = weighted(&kernel, |k| {
                plane[y * w + reflect(x + k as i64 - radius, w)] as f64
            });
        }
        for (i, out) in plane.iter_mut().enumerate() {
            let (y, x) = ((i / w) as i64, i % w);
            *out = weighted(&kernel, |k| {
                across[reflect(y + k as i64 - radius, h) * w + x]
            }) as f32;
        }
    }
}

/// `sum_k kernel[k] * value(k)`.
fn weighted(kernel: &[f64], value: impl Fn(usize) -> f64) -> f64 {
    kernel
        .iter()
        .enumerate()
        .map(|(k, &wk)| wk * value(k))
        .sum()
}

fn gaussian_kernel(kernel_size: usize, sigma: f64) -> Vec<f64> {
    let half = (kernel_size as f64 - 1.0) / 2.0;
    let pdf: Vec<f64> = (0..kernel_size)
        .map(|i| (-0.5 * ((i as f64 - half) / sigma).powi(2)).exp())
        .collect();
    let total: f64 = pdf.iter().sum();
    pdf.into_iter().map(|p| p / total).collect()
}

/// Index `i` of a line of `n` samples mirrored about its end samples (`-1 -> 1`, `n -> n - 2`).
fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    (if m < n as i64 { m } else { period - m }) as usize
}

/// The aspect-ratio range of random resized crops unless set: torchvision's (3/4, 4/3).
pub(crate) fn default_crop_ratio() -> (f64, f64) {
    (3.0 / 4.0, 4.0 / 3.0)
}

/// The photo operations of [`Augment`]: what they check, say and do.
impl Augment {
    /// Whether no photo operation is on (then [`apply_photo`](Self::apply_photo) copies and
    /// draws nothing).
    pub(crate) fn photo_is_identity(&self) -> bool {
        self.crop_scale.is_none()
            && self.pad_crop == 0
            && !self.jitters()
            && !is_on(self.grayscale)
            && !is_on(self.blur)
    }

    /// Colour jitter is on: some strength is non-zero and it can happen.
    fn jitters(&self) -> bool {
        self.jitter.iter().any(|&s| s != 0.0) && is_on(self.jitter_probability)
    }

    /// The setting (named as in pipeline files) that is out of range, and why; `None` if all
    /// are usable.
    pub(crate) fn photo_problem(&self) -> Option<(&'static str, &'static str)> {
        self.crop_problem()
            .or_else(|| self.jitter_problem())
            .or_else(|| self.probability_problem())
    }

    fn crop_problem(&self) -> Option<(&'static str, &'static str)> {
        if let Some((lo, hi)) = self.crop_scale {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return Some((
                    "augment_crop_scale",
                    "must be a range low <= high within (0, 1]",
                ));
            }
        }
        let (lo, hi) = self.crop_ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Some(("augment_crop_ratio", "must be a range 0 < low <= high"));
        }
        (self.pad_crop > MAX_PAD_CROP).then_some(("augment_pad_crop", "must be at most 64 pixels"))
    }

    fn jitter_problem(&self) -> Option<(&'static str, &'static str)> {
        let [brightness, contrast, saturation, hue] = self.jitter;
        let ok = [brightness, contrast, saturation]
            .iter()
            .all(|s| s.is_finite() && *s >= 0.0)
            && (0.0..=0.5).contains(&hue);
        (!ok).then_some((
            "augment_jitter",
            "brightness, contrast and saturation must be >= 0, hue in [0, 0.5]",
        ))
    }

    fn probability_problem(&self) -> Option<(&'static str, &'static str)> {
        [
            ("augment_jitter_probability", self.jitter_probability),
            ("augment_grayscale", self.grayscale),
            ("augment_blur", self.blur),
        ]
        .into_iter()
        .find(|(_, p)| !(0.0..=1.0).contains(p))
        .map(|(key, _)| (key, "must be a probability in [0, 1]"))
    }

    /// The operations in use, in the order they run, as phrases for reports ("4-px padded
    /// crops", "random resized crops 20-100%", "colour jitter 0.4/0.4/0.4/0.1 (p 0.8)",
    /// "greyscale (p 0.2)", "blur (p 0.5)"); a probability of 1 is not mentioned.
    pub(crate) fn photo_describe(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.pad_crop > 0 {
            parts.push(format!("{}-px padded crops", self.pad_crop));
        }
        if let Some((lo, hi)) = self.crop_scale {
            let mut phrase = format!(
                "random resized crops {}-{}%",
                crate::percent(lo),
                crate::percent(hi)
            );
            if self.crop_ratio != default_crop_ratio() {
                let (lo, hi) = self.crop_ratio;
                phrase.push_str(&format!(", aspect {lo}-{hi}"));
            }
            parts.push(phrase);
        }
        if self.jitters() {
            let [b, c, s, h] = self.jitter;
            let p = chance(self.jitter_probability);
            parts.push(format!("colour jitter {b}/{c}/{s}/{h}{p}"));
        }
        if is_on(self.grayscale) {
            parts.push(format!("greyscale{}", chance(self.grayscale)));
        }
        if is_on(self.blur) {
            parts.push(format!("blur{}", chance(self.blur)));
        }
        parts
    }

    /// Augments one image `src` of `shape` into `dst`. The operations run in a fixed order and
    /// draw from `rng` in it, an operation that is off drawing nothing:
    ///
    /// 1. padded crop (`pad_crop > 0`): [`pad_crop_params`] (top, then left), [`pad_crop`];
    /// 2. random resized crop (`crop_scale` set): [`random_resized_crop_params`] on the image's
    ///    own size, then [`resized_crop`] back to it;
    /// 3. colour jitter (a strength non-zero, `jitter_probability > 0`): a chance draw, then if
    ///    it happens [`Jitter::draw`] and [`Jitter::apply`];
    /// 4. greyscale (`grayscale > 0`): a chance draw, then [`to_grayscale`];
    /// 5. blur (`blur > 0`): a chance draw, then if it happens sigma uniform in `[0.1, 2.0]` and
    ///    [`gaussian_blur`] with [`blur_kernel_size`] of the shorter side.
    ///
    /// A chance draw with probability `p` is one `u` uniform in `[0, 1)`, happening when
    /// `u < p`; with `p >= 1` nothing is drawn and it happens. The draws do not depend on the
    /// channel count: a grey image draws saturation and hue factors and a greyscale chance too,
    /// which change nothing on it.
    ///
    /// Panics if `src` or `dst` is not one image of `shape` (a caller bug).
    pub fn apply_photo(&self, src: &[f32], shape: ImageShape, rng: &mut impl Rng, dst: &mut [f32]) {
        check_image("Augment::apply_photo", src, dst, shape);
        self.apply_photo_to(src, shape, rng, shape, dst)
    }

    /// [`apply_photo`](Self::apply_photo) giving an image of `out`'s size (same channels): the
    /// crop (the whole image without `crop_scale`) is resized to `out`, and the operations after
    /// it work there. The draws are those of `apply_photo`.
    ///
    /// Panics if `src` is not one image of `shape` or `dst` not one of `out` (caller bugs).
    pub fn apply_photo_to(
        &self,
        src: &[f32],
        shape: ImageShape,
        rng: &mut impl Rng,
        out: ImageShape,
        dst: &mut [f32],
    ) {
        assert_eq!(src.len(), shape.len(), "Augment::apply_photo: input length");
        assert_eq!(dst.len(), out.len(), "Augment::apply_photo: output length");
        let (h, w) = (shape.height, shape.width);
        let mut img = src.to_vec();
        if self.pad_crop > 0 {
            let (top, left) = pad_crop_params(self.pad_crop, rng);
            let before = img.clone();
            pad_crop(&before, shape, self.pad_crop, (top, left), &mut img);
        }
        let window = match self.crop_scale {
            Some(scale) => Some(random_resized_crop_params(
                h,
                w,
                scale,
                self.crop_ratio,
                rng,
            )),
            None => (out != shape).then_some((0, 0, h, w)),
        };
        match window {
            Some(window) => resized_crop_to(&img, shape, window, out, dst),
            None => dst.copy_from_slice(&img),
        }
        if self.jitters() && happens(self.jitter_probability, rng) {
            Jitter::draw(self.jitter, rng).apply(dst, out);
        }
        if happens(self.grayscale, rng) {
            to_grayscale(dst, out);
        }
        if happens(self.blur, rng) {
            let sigma = uniform(rng, BLUR_SIGMA);
            gaussian_blur(dst, out, sigma, blur_kernel_size(out.height.min(out.width)));
        }
    }
}

/// " (p 0.2)" for a probability below 1, nothing for 1.
fn chance(p: f64) -> String {
    if p < 1.0 {
        format!(" (p {p})")
    } else {
        String::new()
    }
}

/// Whether an operation with probability `p` can happen at all (`p > 0`; not for NaN).
fn is_on(p: f64) -> bool {
    p > 0.0
}

/// Whether an event of probability `p` happens: never when it is not [on](is_on) and always for
/// `p >= 1`, both without a draw; otherwise `u < p` for one `u` uniform in `[0, 1)`.
fn happens(p: f64, rng: &mut impl Rng) -> bool {
    if !is_on(p) {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.gen::<f64>() < p
    }
}

fn check_image(what: &str, src: &[f32], dst: &[f32], shape: ImageShape) {
    assert_eq!(src.len(), shape.len(), "{what}: input length");
    assert_eq!(dst.len(), shape.len(), "{what}: output length");
}

#[cfg(test)]
#[path = "photo_tests.rs"]
mod tests;
