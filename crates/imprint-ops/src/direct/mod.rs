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
//! Small grids are stacked: the sub-planes of several images one after another make one
//! taller grid (see [`Stack`]), the masks keeping each image's taps inside it. The kernels
//! ([`conv`], [`weight_grad`]) work on one stack or a run of stacks; the callers in `conv2d`
//! and `conv_transpose2d` spread them over threads. They come in two forms, AVX-512 and AVX2
//! (see [`Kernels`]), which read the same layout.

#[cfg(target_arch = "x86_64")]
mod avx2;
// AVX-512 intrinsics are stable from Rust 1.89, which the `gemm` dependency's AVX-512 kernels
// (its `x86-v4` feature) already require of this crate.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod avx512;

use crate::cpu_util::{Geometry, Start};

/// Floats in one vector register.
pub(crate) const LANES: usize = 16;

/// Output channels one call of the forward micro-kernel computes together.
pub(crate) const CHANNEL_BLOCK: usize = 4;

/// The instruction sets the kernels are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernels {
    Avx512,
    /// With FMA: every x86 CPU since 2013-2015 (Intel's Haswell, AMD's Zen).
    Avx2,
}

impl Kernels {
    /// Every form, fastest first.
    const ALL: [Self; 2] = [Self::Avx512, Self::Avx2];

    /// The forms this CPU runs, fastest first (AVX-512 left aside where
    /// [`crate::isa::NO_AVX512_VAR`] says so), for the tests to check each.
    #[cfg(test)]
    pub fn on_this_cpu() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.runs_here()).collect()
    }

    /// The fastest form this CPU runs.
    pub fn best() -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.runs_here())
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => crate::isa::avx512(),
                Self::Avx2 => crate::isa::avx2(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// Whether this CPU runs the direct kernels.
pub(crate) fn available() -> bool {
    Kernels::best().is_some()
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

/// Channel stride for copies the kernels read: whole vectors and one more. Channels a
/// multiple of 4 KiB apart (a 32x32 plane) would all map to the same few cache sets, and the
/// kernels, which read every channel at the same pixels, would evict their own lines.
pub(crate) fn padded_stride(len: usize) -> usize {
    len.next_multiple_of(LANES) + LANES
}

/// Where a stack of NCHW images lies in the layout the kernels read: every channel split into
/// the sub-planes of `phases` (one where the stride is 1), channel `c`'s sub-plane `s` holding
/// the images' sub-planes one after another, a grid `images` times as tall; channels `stride`
/// apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stack {
    pub grid: (usize, usize),
    pub phases: (usize, usize),
    pub channels: usize,
    pub images: usize,
    pub stride: usize,
}

impl Stack {
    /// Pixels of one image's sub-plane.
    pub fn plane_len(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    fn channel_len(&self) -> usize {
        self.phases.0 * self.phases.1 * self.plane_len()
    }

    /// Floats of the whole stack in this layout.
    pub fn len(&self) -> usize {
        self.channels * self.stride
    }

    /// Floats the stack's images take in NCHW.
    pub fn images_len(&self) -> usize {
        self.images * self.channels * self.channel_len()
    }

    /// Distance between the rows of two neighbouring phases `(a, b)` and `(a, b + 1)`.
    fn phase_step(&self) -> usize {
        self.images * self.plane_len()
    }

    /// Calls `f(row, at)` for every row of every channel of the images: `row` where the
    /// image row starts in NCHW, `at` where its phase `(a, 0)` row starts in the layout
    /// (phase `(a, b)` is `b` phase steps further), for rows `sy * u + a`.
    fn for_each_row(&self, mut f: impl FnMut(usize, usize)) {
        let ((gh, gw), (sy, sx)) = (self.grid, self.phases);
        for g in 0..self.images {
            for c in 0..self.channels {
                let image = (g * self.channels + c) * self.channel_len();
                for a in 0..sy {
                    let plane = c * self.stride + (a * sx * self.images + g) * self.plane_len();
                    for u in 0..gh {
                        f(image + (sy * u + a) * sx * gw, plane + u * gw);
                    }
                }
            }
        }
    }

    /// Copies `images` (NCHW, `self.images` of them) into `out` in this layout.
    pub fn gather(&self, images: &[f32], out: &mut [f32]) {
        assert_eq!(images.len(), self.images_len(), "gather: images");
        assert!(
            self.stride >= self.images * self.channel_len(),
            "gather: stride"
        );
        assert!(out.len() >= self.len(), "gather: layout");
        let (gw, sx, step) = (self.grid.1, self.phases.1, self.phase_step());
        if self.phases == (1, 1) {
            let len = self.channel_len();
            for (i, src) in images.chunks_exact(len).enumerate() {
                let (g, c) = (i / self.channels, i % self.channels);
                out[c * self.stride + g * len..][..len].copy_from_slice(src);
            }
            return;
        }
        self.for_each_row(|row, at| {
            let src = &images[row..row + sx * gw];
            if sx == 2 {
                let (even, odd) = out[at..].split_at_mut(step);
                return deinterleave(src, &mut even[..gw], &mut odd[..gw]);
            }
            for b in 0..sx {
                let dst = &mut out[at + b * step..][..gw];
                dst.iter_mut()
                    .zip(src.chunks_exact(sx))
                    .for_each(|(d, s)| *d = s[b]);
            }
        });
    }

    /// Writes `src`, in this layout, onto `images` (NCHW), adding where `add`.
    pub fn scatter(&self, src: &[f32], images: &mut [f32], add: bool) {
        assert_eq!(images.len(), self.images_len(), "scatter: images");
        assert!(
            self.stride >= self.images * self.channel_len(),
            "scatter: stride"
        );
        assert!(src.len() >= self.len(), "scatter: layout");
        let (gw, sx, step) = (self.grid.1, self.phases.1, self.phase_step());
        let put = |d: &mut f32, s: f32| *d = if add { *d + s } else { s };
        if self.phases == (1, 1) {
            let len = self.channel_len();
            for (i, dst) in images.chunks_exact_mut(len).enumerate() {
                let (g, c) = (i / self.channels, i % self.channels);
                let from = &src[c * self.stride + g * len..][..len];
                dst.iter_mut().zip(from).for_each(|(d, &s)| put(d, s));
            }
            return;
        }
        self.for_each_row(|row, at| {
            let dst = &mut images[row..row + sx * gw];
            for b in 0..sx {
                let from = &src[at + b * step..][..gw];
                dst.chunks_exact_mut(sx)
                    .zip(from)
                    .for_each(|(d, &s)| put(&mut d[b], s));
            }
        });
    }
}

/// Splits `src` into its even and odd elements.
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for ((e, o), pair) in even.iter_mut().zip(odd).zip(src.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// Taps as the kernels read them, for a stack of images (see [`Stack`]): each tap's source
/// offset from the output pixel (sub-planes a stack apart), and for every vector of the
/// stacked grid a mask of the lanes whose source lies inside its own image's sub-plane (lanes
/// past the stack's end included in none).
pub(crate) struct TapSet {
    offsets: Vec<isize>,
    /// `[vector][tap]`.
    masks: Vec<u16>,
    /// Sub-planes the source must hold per channel.
    planes: usize,
    /// Pixels of the stacked grid.
    pixels: usize,
}

impl TapSet {
    pub fn new(grid: (usize, usize), images: usize, taps: &[Tap]) -> Self {
        let (gh, gw) = grid;
        let plane_len = gh * gw;
        let pixels = images * plane_len;
        let vectors = pixels.div_ceil(LANES);
        let offsets = taps
            .iter()
            .map(|t| (t.plane * pixels) as isize + t.dy * gw as isize + t.dx)
            .collect();
        let inside = |p: usize, t: &Tap| {
            let q = p % plane_len.max(1);
            let (y, x) = ((q / gw) as isize + t.dy, (q % gw) as isize + t.dx);
            p < pixels && (0..gh as isize).contains(&y) && (0..gw as isize).contains(&x)
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
            pixels,
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Pixels of the stacked grid.
    fn pixels(&self) -> usize {
        self.pixels
    }

    fn vectors(&self) -> usize {
        self.pixels.div_ceil(LANES)
    }

    /// Lanes of vector `v` inside the stacked grid.
    fn tail_mask(&self, v: usize) -> u16 {
        let left = self.pixels - v * LANES;
        if left >= LANES {
            u16::MAX
        } else {
            (1u16 << left) - 1
        }
    }
}

/// Weights for [`conv`]: output channels in blocks of [`CHANNEL_BLOCK`], each block laid out
/// `[in][tap][out]` so that the kernel reads them in order.
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
            for i in 0..inputs {
                for t in 0..taps {
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

/// `dst[o * dst_stride + p] = start + Σ_i Σ_t w(o, i, t) · src[i * src_stride + p + offset_t]`
/// over the stacked grid's pixels `p`, the sum skipping sources outside their sub-plane; `src`
/// holds the sub-planes of each input channel `src_stride` apart.
pub(crate) fn conv(
    src: &[f32],
    src_stride: usize,
    taps: &TapSet,
    w: &Packed,
    dst: &mut [f32],
    dst_stride: usize,
    start: Start,
) {
    let kernels = Kernels::best().expect("conv: the CPU lacks AVX2 and AVX-512");
    conv_in(kernels, src, src_stride, taps, w, (dst, dst_stride), start)
}

/// [`conv`] in the given form of the kernels.
pub(crate) fn conv_in(
    kernels: Kernels,
    src: &[f32],
    src_stride: usize,
    taps: &TapSet,
    w: &Packed,
    (dst, dst_stride): (&mut [f32], usize),
    start: Start,
) {
    let plane_len = taps.pixels();
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
    assert!(kernels.runs_here(), "conv: the CPU lacks {kernels:?}");
    // SAFETY: the CPU has the kernels' instructions (checked above). Every lane a kernel reads
    // unmasked is pixel `p + offset_t` of an input channel's sub-plane with `p` on the grid,
    // which the source stride and size checked above keep inside `src`; every lane it writes
    // is a grid pixel of an output channel, inside `dst` by the checks on the destination.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match kernels {
            Kernels::Avx512 => avx512::conv(src, src_stride, taps, w, dst, dst_stride, start),
            Kernels::Avx2 => avx2::conv(src, src_stride, taps, w, dst, dst_stride, start),
        }
    }
}

/// `gw[(o * inputs + i) * taps + t] += Σ_images Σ_p dy[o][p] · x[i][p + offset_t]` over the
/// grid's pixels, the sum skipping sources outside their sub-plane. `x` holds images of
/// `inputs` channels `x_stride` apart, `dy` (with its channel stride) the same images'
/// `outputs` channels.
pub(crate) fn weight_grad(
    x: &[f32],
    x_stride: usize,
    dy: (&[f32], usize),
    channels: (usize, usize),
    taps: &TapSet,
    gw: &mut [f32],
) {
    let kernels = Kernels::best().expect("weight_grad: the CPU lacks AVX2 and AVX-512");
    weight_grad_in(kernels, (x, x_stride), dy, channels, taps, gw)
}

/// [`weight_grad`] in the given form of the kernels.
pub(crate) fn weight_grad_in(
    kernels: Kernels,
    (x, x_stride): (&[f32], usize),
    (dy, dy_stride): (&[f32], usize),
    (outputs, inputs): (usize, usize),
    taps: &TapSet,
    gw: &mut [f32],
) {
    let plane_len = taps.pixels();
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
    assert!(
        kernels.runs_here(),
        "weight_grad: the CPU lacks {kernels:?}"
    );
    // SAFETY: the CPU has the kernels' instructions (checked above). The kernel reads `dy`
    // unmasked only at grid pixels of the `images * outputs` channels checked above, and `x`
    // only at pixel `p + offset_t` of a sub-plane with `p` on the grid, inside the
    // `images * inputs` channels of `x_stride` floats checked above; it writes `gw` only
    // through safe indexing.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let (dy, channels) = ((dy, dy_stride), (outputs, inputs));
        match kernels {
            Kernels::Avx512 => avx512::weight_grad(x, x_stride, dy, channels, taps, gw),
            Kernels::Avx2 => avx2::weight_grad(x, x_stride, dy, channels, taps, gw),
        }
    }
}

#[cfg(test)]
mod tests;
