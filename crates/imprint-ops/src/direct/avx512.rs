//! AVX-512 micro-kernels of the direct convolution. Each keeps a block of sums in registers:
//! [`conv_block`] `CO` output channels times `V` vectors of pixels, [`grad_block`] `CO`
//! output channels times `NT` taps of one input channel.

use super::{Packed, TapSet, CHANNEL_BLOCK, LANES};
use crate::cpu_util::Start;
use std::arch::x86_64::*;

/// Vectors of pixels one call of the forward micro-kernel computes together: with
/// [`CHANNEL_BLOCK`] channels, 16 sums, 4 source vectors and the weight broadcasts stay in
/// the 32 registers.
const VECTOR_BLOCK: usize = 4;

/// Output channels and (at most) taps one call of the weight-gradient micro-kernel sums
/// together: 27 sums, the 3 output-gradient vectors and a source vector fill the 32
/// registers, 27 products for 12 loads per vector of pixels (4 channels of 3 taps, within 16
/// registers, make 12 for 7).
const GRAD_CHANNEL_BLOCK: usize = 3;
const GRAD_TAP_BLOCK: usize = 9;

/// One block of [`conv`]: pointers already moved to the block's first channel and pixel.
struct Block<'a> {
    src: *const f32,
    src_stride: usize,
    inputs: usize,
    offsets: &'a [isize],
    /// From the block's first vector on, `[vector][tap]`.
    masks: &'a [u16],
    /// Lanes of each of the block's vectors that lie on the grid.
    tails: [u16; VECTOR_BLOCK],
    /// The channel block's packed weights, `[tap][input][CO]`.
    w: *const f32,
    dst: *mut f32,
    dst_stride: usize,
    /// The block's own bias values, for [`Start::Bias`].
    start: Start<'a>,
}

/// See [`super::conv`], whose checks make the reads and writes in bounds.
///
/// # Safety
/// The CPU must have AVX-512F, and the arguments must pass the checks of [`super::conv`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn conv(
    src: &[f32],
    src_stride: usize,
    taps: &TapSet,
    w: &Packed,
    dst: &mut [f32],
    dst_stride: usize,
    start: Start,
) {
    let ntaps = taps.len();
    let vectors = taps.vectors();
    for v0 in (0..vectors).step_by(VECTOR_BLOCK) {
        let nv = (vectors - v0).min(VECTOR_BLOCK);
        let mut tails = [0u16; VECTOR_BLOCK];
        for (v, t) in tails.iter_mut().enumerate().take(nv) {
            *t = taps.tail_mask(v0 + v);
        }
        for o0 in (0..w.outputs).step_by(CHANNEL_BLOCK) {
            let no = (w.outputs - o0).min(CHANNEL_BLOCK);
            let block = Block {
                src: src.as_ptr().wrapping_add(v0 * LANES),
                src_stride,
                inputs: w.inputs,
                offsets: &taps.offsets,
                masks: &taps.masks[v0 * ntaps..],
                tails,
                w: w.data[o0 * ntaps * w.inputs..].as_ptr(),
                dst: dst.as_mut_ptr().wrapping_add(o0 * dst_stride + v0 * LANES),
                dst_stride,
                start: match start {
                    Start::Bias(b) => Start::Bias(&b[o0..o0 + no]),
                    s => s,
                },
            };
            conv_kernel(no, nv)(&block);
        }
    }
}

/// The forward micro-kernel for `channels` output channels and `vectors` vectors.
fn conv_kernel(channels: usize, vectors: usize) -> unsafe fn(&Block) {
    fn with_vectors<const CO: usize>(vectors: usize) -> unsafe fn(&Block) {
        match vectors {
            1 => conv_block::<CO, 1>,
            2 => conv_block::<CO, 2>,
            3 => conv_block::<CO, 3>,
            _ => conv_block::<CO, 4>,
        }
    }
    match channels {
        1 => with_vectors::<1>(vectors),
        2 => with_vectors::<2>(vectors),
        3 => with_vectors::<3>(vectors),
        _ => with_vectors::<4>(vectors),
    }
}

/// # Safety
/// AVX-512F, and a block of [`conv`]: every unmasked lane in bounds.
#[target_feature(enable = "avx512f")]
// The indices address several register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn conv_block<const CO: usize, const V: usize>(b: &Block) {
    let ntaps = b.offsets.len();
    let mut acc = [[_mm512_setzero_ps(); V]; CO];
    if let Start::Accumulate = b.start {
        for o in 0..CO {
            for v in 0..V {
                let p = b.dst.add(o * b.dst_stride + v * LANES);
                acc[o][v] = _mm512_maskz_loadu_ps(b.tails[v], p);
            }
        }
    }
    // Input channel by input channel, tap by tap: the order of the column-matrix product, so
    // that every sum is the same chain of multiply-adds.
    let mut w = b.w;
    for i in 0..b.inputs {
        let channel = b.src.wrapping_add(i * b.src_stride);
        for t in 0..ntaps {
            // Lanes outside the source's sub-plane are masked off, so the pointer may point
            // outside `src` there; it is only formed with wrapping arithmetic.
            let s = channel.wrapping_offset(b.offsets[t]);
            let mut x = [_mm512_setzero_ps(); V];
            for v in 0..V {
                // SAFETY: `masks` holds a row of `ntaps` for each of the block's `V` vectors.
                let mask = *b.masks.get_unchecked(v * ntaps + t);
                x[v] = _mm512_maskz_loadu_ps(mask, s.wrapping_add(v * LANES));
            }
            for o in 0..CO {
                let wo = _mm512_set1_ps(*w.add(o));
                for v in 0..V {
                    acc[o][v] = _mm512_fmadd_ps(wo, x[v], acc[o][v]);
                }
            }
            w = w.add(CO);
        }
    }
    if let Start::Bias(bias) = b.start {
        // Added last, as after the column-matrix product.
        for o in 0..CO {
            let bo = _mm512_set1_ps(bias[o]);
            for v in 0..V {
                acc[o][v] = _mm512_add_ps(acc[o][v], bo);
            }
        }
    }
    for o in 0..CO {
        for v in 0..V {
            let p = b.dst.add(o * b.dst_stride + v * LANES);
            _mm512_mask_storeu_ps(p, b.tails[v], acc[o][v]);
        }
    }
}

/// Bytes of output gradient one sweep of the weight-gradient kernel may cover: the
/// [`GRAD_CHANNEL_BLOCK`] planes of a group of images, read again for every input channel and
/// tap block, so they should stay in the 48 KiB L1 cache beside the source planes.
const GRAD_L1_BYTES: usize = 24 << 10;

/// Vector sums of one block: `[channel][tap]`.
type Sums = [[__m512; GRAD_TAP_BLOCK]; GRAD_CHANNEL_BLOCK];

/// One block of [`weight_grad`]: `CO` output channels from `o0`, one input channel, `NT`
/// taps from `t0`, over images `images.start..images.end`.
struct GradBlock<'a> {
    x: &'a [f32],
    x_stride: usize,
    dy: &'a [f32],
    dy_stride: usize,
    outputs: usize,
    inputs: usize,
    taps: &'a TapSet,
    o0: usize,
    input: usize,
    t0: usize,
    images: std::ops::Range<usize>,
}

/// See [`super::weight_grad`], whose checks make the reads in bounds.
///
/// Channel block by channel block, the images go in groups small enough for their output
/// gradient to stay in L1 while every input channel and tap block sweeps it; each block's
/// vector sums carry over from group to group and are added up across lanes at the end. The
/// order of every sum depends on the sizes alone.
///
/// # Safety
/// The CPU must have AVX-512F, and the arguments must pass the checks of
/// [`super::weight_grad`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_grad(
    x: &[f32],
    x_stride: usize,
    (dy, dy_stride): (&[f32], usize),
    (outputs, inputs): (usize, usize),
    taps: &TapSet,
    gw: &mut [f32],
) {
    let (ntaps, plane_len) = (taps.len(), taps.pixels());
    let images = x.len() / (inputs * x_stride).max(1);
    let tap_block = GRAD_TAP_BLOCK;
    let tap_blocks = ntaps.div_ceil(tap_block);
    let group = (GRAD_L1_BYTES / (4 * GRAD_CHANNEL_BLOCK * plane_len)).max(1);
    let zero = [[_mm512_setzero_ps(); GRAD_TAP_BLOCK]; GRAD_CHANNEL_BLOCK];
    let mut sums = vec![zero; inputs * tap_blocks];
    for o0 in (0..outputs).step_by(GRAD_CHANNEL_BLOCK) {
        let no = (outputs - o0).min(GRAD_CHANNEL_BLOCK);
        sums.fill(zero);
        for first in (0..images).step_by(group) {
            for input in 0..inputs {
                for b in 0..tap_blocks {
                    let t0 = b * tap_block;
                    let block = GradBlock {
                        x,
                        x_stride,
                        dy,
                        dy_stride,
                        outputs,
                        inputs,
                        taps,
                        o0,
                        input,
                        t0,
                        images: first..(first + group).min(images),
                    };
                    let nt = (ntaps - t0).min(tap_block);
                    grad_kernel(no, nt)(&block, &mut sums[input * tap_blocks + b]);
                }
            }
        }
        for (k, block) in sums.iter().enumerate() {
            let (input, t0) = (k / tap_blocks, (k % tap_blocks) * tap_block);
            let nt = (ntaps - t0).min(tap_block);
            for (o, row) in block.iter().enumerate().take(no) {
                let at = ((o0 + o) * inputs + input) * ntaps + t0;
                for (g, v) in gw[at..at + nt].iter_mut().zip(row) {
                    *g += _mm512_reduce_add_ps(*v);
                }
            }
        }
    }
}

type GradKernel = unsafe fn(&GradBlock, &mut Sums);

/// The weight-gradient micro-kernel for `channels` output channels and `taps` taps.
fn grad_kernel(channels: usize, taps: usize) -> GradKernel {
    fn with_taps<const CO: usize>(taps: usize) -> GradKernel {
        match taps {
            1 => grad_block::<CO, 1>,
            2 => grad_block::<CO, 2>,
            3 => grad_block::<CO, 3>,
            4 => grad_block::<CO, 4>,
            5 => grad_block::<CO, 5>,
            6 => grad_block::<CO, 6>,
            7 => grad_block::<CO, 7>,
            8 => grad_block::<CO, 8>,
            _ => grad_block::<CO, 9>,
        }
    }
    match channels {
        1 => with_taps::<1>(taps),
        2 => with_taps::<2>(taps),
        _ => with_taps::<3>(taps),
    }
}

/// Adds the block's products over its images and the grid's pixels to `sums[o][t]`.
///
/// # Safety
/// AVX-512F, and a block of [`weight_grad`]: every unmasked lane in bounds.
#[target_feature(enable = "avx512f")]
// The indices address several register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn grad_block<const CO: usize, const NT: usize>(g: &GradBlock, sums: &mut Sums) {
    let taps = g.taps;
    let (ntaps, vectors) = (taps.len(), taps.vectors());
    let last_tail = taps.tail_mask(vectors - 1);
    let mut offsets = [0isize; NT];
    offsets.copy_from_slice(&taps.offsets[g.t0..g.t0 + NT]);
    // Row `v` of the block's masks starts `v * ntaps` further on.
    let masks = taps.masks[g.t0..].as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NT]; CO];
    for o in 0..CO {
        acc[o].copy_from_slice(&sums[o][..NT]);
    }
    for image in g.images.clone() {
        let x = g.x.as_ptr().add((image * g.inputs + g.input) * g.x_stride);
        let dy = g.dy.as_ptr().add((image * g.outputs + g.o0) * g.dy_stride);
        for v in 0..vectors {
            let tail = if v + 1 < vectors { u16::MAX } else { last_tail };
            let mut d = [_mm512_setzero_ps(); CO];
            for o in 0..CO {
                d[o] = _mm512_maskz_loadu_ps(tail, dy.add(o * g.dy_stride + v * LANES));
            }
            let row = masks.add(v * ntaps);
            // Masked-off lanes may lie outside `x`: the pointer is formed with wrapping
            // arithmetic and never read there.
            let xv = x.wrapping_add(v * LANES);
            for t in 0..NT {
                let xt = _mm512_maskz_loadu_ps(*row.add(t), xv.wrapping_offset(offsets[t]));
                for o in 0..CO {
                    acc[o][t] = _mm512_fmadd_ps(d[o], xt, acc[o][t]);
                }
            }
        }
    }
    for o in 0..CO {
        sums[o][..NT].copy_from_slice(&acc[o]);
    }
}
