//! Direct convolution without a column matrix, for convolutions whose input splits into
//! "sub-planes" the size of the output grid.
//!
//! With stride `s`, input pixel `(s * u + a, s * v + b)` is pixel `(u, v)` of sub-plane
//! `(a, b)`; where the image is exactly `s` times the grid, every sub-plane has the grid's size
//! and kernel tap `(i, j)` of output pixel `(y, x)` reads pixel `(y + dy, x + dx)` of one
//! sub-plane. In flat pixel order that is a constant offset, so a vector of consecutive output
//! pixels reads consecutive input pixels for every tap, masked where the source leaves its
//! sub-plane (the padding). Stride 1 needs no split at all: the image is its only sub-plane.
//!
//! The kernels ([`conv`], [`weight_grad`]) work on one image or one chunk of images; the
//! callers in `conv2d` and `conv_transpose2d` spread images over threads.

// AVX-512 intrinsics are stable from Rust 1.89, which the `gemm` dependency's AVX-512 kernels
// (its `x86-v4` feature) already require of this crate.
#[clippy::msrv = "1.89"]
mod avx512;

use crate::cpu_util::Geometry;

/// Floats in one vector register.
pub(crate) const LANES: usize = 16;

/// Output channels one call of the forward micro-kernel computes together.
pub(crate) const CHANNEL_BLOCK: usize = 4;

/// Whether this CPU runs the direct kernels.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Where one kernel tap reads for output pixel `(y, x)`: pixel `(y + dy, x + dx)` of sub-plane
/// `plane`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tap {
    pub plane: usize,
    pub dy: isize,
    pub dx: isize,
}

/// A convolution in sub-plane form: the grid, the number of phases per dimension (the stride)
/// and every tap in weight order (`i * kw + j`).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub grid: (usize, usize),
    pub phases: (usize, usize),
    pub taps: Vec<Tap>,
}

impl Plan {
    /// The plan of `g` (one group of channels), or `None` unless the image is exactly `stride`
    /// times the grid in both dimensions, which makes every sub-plane the grid's size.
    pub fn new(g: &Geometry) -> Option<Self> {
        let (sy, sx) = g.stride;
        if g.image != (sy * g.grid.0, sx * g.grid.1) || g.grid.0 * g.grid.1 == 0 {
            return None;
        }
        // Source row `s * y + r` with `r = i * dilation - padding` is row `y + r div s` of
        // phase `r mod s`.
        let split = |k: usize, d: usize, p: usize, s: usize| {
            let r = (k * d) as isize - p as isize;
            (r.rem_euclid(s as isize) as usize, r.div_euclid(s as isize))
        };
        let mut taps = Vec::with_capacity(g.kernel.0 * g.kernel.1);
        for i in 0..g.kernel.0 {
            let (a, dy) = split(i, g.dilation.0, g.padding.0, sy);
            for j in 0..g.kernel.1 {
                let (b, dx) = split(j, g.dilation.1, g.padding.1, sx);
                taps.push(Tap {
                    plane: a * sx + b,
                    dy,
                    dx,
                });
            }
        }
        Some(Self {
            grid: g.grid,
            phases: g.stride,
            taps,
        })
    }

    pub fn planes(&self) -> usize {
        self.phases.0 * self.phases.1
    }

    pub fn plane_len(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// The taps of the adjoint that writes sub-plane `plane`: each tap of the forward pass
    /// reading it, turned around to read the grid (`plane` 0 of a one-plane source), with the
    /// index of its weight.
    pub fn adjoint_taps(&self, plane: usize) -> (Vec<Tap>, Vec<usize>) {
        self.taps
            .iter()
            .enumerate()
            .filter(|(_, t)| t.plane == plane)
            .map(|(k, t)| {
                let tap = Tap {
                    plane: 0,
                    dy: -t.dy,
                    dx: -t.dx,
                };
                (tap, k)
            })
            .unzip()
    }
}

/// Channel stride for copies of images the forward kernel reads: whole vectors and one
/// more. Channels a multiple of 4 KiB apart (a 32x32 plane) would all map to the same few cache
/// sets, and the kernel, which reads every channel at the same pixels, would evict its own
/// lines.
pub(crate) fn padded_stride(len: usize) -> usize {
    len.next_multiple_of(LANES) + LANES
}

/// Copies every `len`-long channel of `src` into `out`, channels `stride` apart.
pub(crate) fn pad_channels(src: &[f32], len: usize, out: &mut [f32], stride: usize) {
    assert!(stride >= len, "pad_channels stride");
    for (s, d) in src.chunks_exact(len).zip(out.chunks_mut(stride)) {
        d[..len].copy_from_slice(s);
    }
}

/// Copies `img`, channels of `[sy * gh, sx * gw]`, into `out` split by phase: each channel's
/// sub-planes one after another (phase `(a, b)` at index `a * sx + b`), channels `stride`
/// apart.
pub(crate) fn split_planes(img: &[f32], plan: &Plan, out: &mut [f32], stride: usize) {
    let ((gh, gw), (sy, sx)) = (plan.grid, plan.phases);
    let (w, channel_len) = (sx * gw, sy * gh * sx * gw);
    assert!(stride >= channel_len, "split_planes stride");
    assert_eq!(img.len() % channel_len.max(1), 0, "split_planes image size");
    if plan.planes() == 1 {
        return pad_channels(img, channel_len, out, stride);
    }
    for (src, dst) in img.chunks_exact(channel_len).zip(out.chunks_mut(stride)) {
        for (plane, dst) in dst[..channel_len].chunks_exact_mut(gh * gw).enumerate() {
            let (a, b) = (plane / sx, plane % sx);
            for (u, row) in dst.chunks_exact_mut(gw).enumerate() {
                let src_row = &src[(sy * u + a) * w + b..];
                row.iter_mut()
                    .zip(src_row.iter().step_by(sx))
                    .for_each(|(d, s)| *d = *s);
            }
        }
    }
}

/// Adds `split`, laid out by [`split_planes`], onto `img` in the natural order.
pub(crate) fn merge_planes_add(split: &[f32], plan: &Plan, img: &mut [f32]) {
    let ((gh, gw), (sy, sx)) = (plan.grid, plan.phases);
    let (w, image_len) = (sx * gw, sy * gh * sx * gw);
    assert_eq!(img.len() % image_len, 0, "merge_planes_add image size");
    assert_eq!(img.len(), split.len(), "merge_planes_add source size");
    for (src, dst) in split
        .chunks_exact(image_len)
        .zip(img.chunks_exact_mut(image_len))
    {
        for (plane, src) in src.chunks_exact(gh * gw).enumerate() {
            let (a, b) = (plane / sx, plane % sx);
            for (u, row) in src.chunks_exact(gw).enumerate() {
                let dst_row = &mut dst[(sy * u + a) * w + b..];
                dst_row
                    .iter_mut()
                    .step_by(sx)
                    .zip(row)
                    .for_each(|(d, s)| *d += s);
            }
        }
    }
}

/// Taps as the kernels read them: each tap's source offset from the output pixel (sub-planes
/// `plane_len` apart), and for every vector of the grid a mask of the lanes whose source lies
/// inside its sub-plane (lanes past the grid's end included in none).
pub(crate) struct TapSet {
    offsets: Vec<isize>,
    /// `[vector][tap]`.
    masks: Vec<u16>,
    /// Sub-planes the source must hold per channel.
    planes: usize,
    grid: (usize, usize),
}

impl TapSet {
    pub fn new(grid: (usize, usize), taps: &[Tap]) -> Self {
        let (gh, gw) = grid;
        let plane_len = gh * gw;
        let vectors = plane_len.div_ceil(LANES);
        let offsets = taps
            .iter()
            .map(|t| (t.plane * plane_len) as isize + t.dy * gw as isize + t.dx)
            .collect();
        let inside = |p: usize, t: &Tap| {
            let (y, x) = ((p / gw) as isize + t.dy, (p % gw) as isize + t.dx);
            p < plane_len && (0..gh as isize).contains(&y) && (0..gw as isize).contains(&x)
        };
        let mut masks = Vec::with_capacity(vectors * taps.len());
        for v in 0..vectors {
            for t in taps {
                let lanes = (0..LANES).filter(|&l| inside(v * LANES + l, t));
                masks.push(lanes.fold(0u16, |m, l| m | 1 << l));
            }
        }
        Self {
            offsets,
            masks,
            planes: taps.iter().map(|t| t.plane + 1).max().unwrap_or(0),
            grid,
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    fn plane_len(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    fn vectors(&self) -> usize {
        self.plane_len().div_ceil(LANES)
    }

    /// Lanes of vector `v` inside the grid.
    fn tail_mask(&self, v: usize) -> u16 {
        let left = self.plane_len() - v * LANES;
        if left >= LANES {
            u16::MAX
        } else {
            (1u16 << left) - 1
        }
    }
}

/// Weights for [`conv`]: output channels in blocks of [`CHANNEL_BLOCK`], each block laid out
/// `[tap][in][out]` so that the kernel reads them in order.
pub(crate) struct Packed {
    data: Vec<f32>,
    outputs: usize,
    inputs: usize,
    taps: usize,
}

impl Packed {
    /// `weight(o, i, t)` is the weight from input channel `i` to output channel `o` at tap `t`.
    pub fn new(
        (outputs, inputs, taps): (usize, usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let mut data = Vec::with_capacity(outputs * inputs * taps);
        for o0 in (0..outputs).step_by(CHANNEL_BLOCK) {
            let block = o0..(o0 + CHANNEL_BLOCK).min(outputs);
            for t in 0..taps {
                for i in 0..inputs {
                    data.extend(block.clone().map(|o| weight(o, i, t)));
                }
            }
        }
        Self {
            data,
            outputs,
            inputs,
            taps,
        }
    }
}

/// What the output of [`conv`] starts from before the taps are added.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    Zero,
    /// One value per output channel.
    Bias(&'a [f32]),
    /// What `dst` already holds.
    Accumulate,
}

/// `dst[o * dst_stride + p] = start + Σ_i Σ_t w(o, i, t) · src[i * src_stride + p + offset_t]`
/// over the grid's pixels `p`, the sum skipping sources outside their sub-plane; `src` holds
/// the sub-planes of each input channel `src_stride` apart.
pub(crate) fn conv(
    src: &[f32],
    src_stride: usize,
    taps: &TapSet,
    w: &Packed,
    dst: &mut [f32],
    dst_stride: usize,
    start: Start,
) {
    let plane_len = taps.plane_len();
    assert_eq!(taps.len(), w.taps, "conv: taps and weights");
    assert!(src_stride >= taps.planes * plane_len, "conv: source stride");
    assert!(src.len() >= w.inputs * src_stride, "conv: source size");
    assert!(dst_stride >= plane_len, "conv: destination stride");
    assert!(
        w.outputs == 0 || dst.len() >= (w.outputs - 1) * dst_stride + plane_len,
        "conv: destination size"
    );
    if let Start::Bias(b) = start {
        assert_eq!(b.len(), w.outputs, "conv: bias per output channel");
    }
    assert!(available(), "conv: the CPU lacks AVX-512");
    // SAFETY: the CPU has AVX-512F (checked above). Every lane a kernel reads unmasked is pixel
    // `p + offset_t` of an input channel's sub-plane with `p` on the grid, which the source
    // stride and size checked above keep inside `src`; every lane it writes is a grid pixel of
    // an output channel, inside `dst` by the checks on the destination.
    unsafe { avx512::conv(src, src_stride, taps, w, dst, dst_stride, start) }
}

/// `gw[(o * inputs + i) * taps + t] += Σ_images Σ_p dy[o][p] · x[i][p + offset_t]` over the
/// grid's pixels, the sum skipping sources outside their sub-plane. `x` holds images of
/// `inputs` channels `x_stride` apart, `dy` (with its channel stride) the same images'
/// `outputs` channels.
pub(crate) fn weight_grad(
    x: &[f32],
    x_stride: usize,
    (dy, dy_stride): (&[f32], usize),
    (outputs, inputs): (usize, usize),
    taps: &TapSet,
    gw: &mut [f32],
) {
    let plane_len = taps.plane_len();
    assert!(
        x_stride >= taps.planes * plane_len,
        "weight_grad: source stride"
    );
    assert!(dy_stride >= plane_len, "weight_grad: dy stride");
    assert_eq!(gw.len(), outputs * inputs * taps.len(), "weight_grad: size");
    let images = x.len() / (inputs * x_stride).max(1);
    assert_eq!(x.len(), images * inputs * x_stride, "weight_grad: x size");
    assert!(
        images == 0 || dy.len() >= (images * outputs - 1) * dy_stride + plane_len,
        "weight_grad: dy size"
    );
    assert!(available(), "weight_grad: the CPU lacks AVX-512");
    // SAFETY: the CPU has AVX-512F (checked above). The kernel reads `dy` at grid pixels of
    // the `images * outputs` channels checked above, and `x` unmasked only at pixel
    // `p + offset_t` of a sub-plane with `p` on the grid, inside the `images * inputs`
    // channels of `x_stride` floats checked above; it writes `gw` only through safe indexing.
    unsafe { avx512::weight_grad(x, x_stride, (dy, dy_stride), (outputs, inputs), taps, gw) }
}

#[cfg(test)]
mod tests;
