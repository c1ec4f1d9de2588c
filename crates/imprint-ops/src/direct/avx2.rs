//! AVX2 micro-kernels of the direct convolution, for CPUs without AVX-512 (AMD before Zen 4,
//! Intel's laptops and desktops). A vector of the layout is [`LANES`] pixels; here it is two
//! 8-float registers, and each 16-bit lane mask of a [`TapSet`] becomes two register masks
//! through [`LANE_MASKS`]. The forward kernel sums in the order of the AVX-512 one (input
//! channel by input channel, tap by tap), so both give the column-matrix product's bits.

use super::{Packed, TapSet, CHANNEL_BLOCK, LANES};
use crate::cpu_util::Start;
use std::arch::x86_64::*;

/// Floats in one AVX2 register.
const HALF: usize = LANES / 2;

/// Register masks for every byte of a lane mask: entry `m` has lane `l` all ones where bit `l`
/// of `m` is set (the form `vmaskmovps` takes).
static LANE_MASKS: [[i32; HALF]; 256] = lane_masks();

const fn lane_masks() -> [[i32; HALF]; 256] {
    let mut table = [[0; HALF]; 256];
    let mut m = 0;
    while m < 256 {
        let mut l = 0;
        while l < HALF {
            if (m >> l) & 1 == 1 {
                table[m][l] = -1;
            }
            l += 1;
        }
        m += 1;
    }
    table
}

/// The register mask of lanes `8 * half..8 * half + 8` of `mask`.
#[inline(always)]
unsafe fn half_mask(mask: u16, half: usize) -> __m256i {
    let byte = (mask >> (HALF * half)) as u8;
    _mm256_loadu_si256(LANE_MASKS[byte as usize].as_ptr().cast())
}

/// The lanes of `mask` from `p`'s vector (both halves), zero elsewhere; lanes off the mask are
/// never read.
#[inline(always)]
unsafe fn masked_load(mask: u16, p: *const f32) -> [__m256; 2] {
    // Most taps of most vectors read whole vectors: those skip the mask table.
    if mask == u16::MAX {
        return [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(HALF))];
    }
    [
        _mm256_maskload_ps(p, half_mask(mask, 0)),
        _mm256_maskload_ps(p.wrapping_add(HALF), half_mask(mask, 1)),
    ]
}

/// Writes the lanes of `mask` of `v` to `p`'s vector.
#[inline(always)]
unsafe fn masked_store(mask: u16, p: *mut f32, v: [__m256; 2]) {
    if mask == u16::MAX {
        _mm256_storeu_ps(p, v[0]);
        _mm256_storeu_ps(p.add(HALF), v[1]);
    } else {
        _mm256_maskstore_ps(p, half_mask(mask, 0), v[0]);
        _mm256_maskstore_ps(p.wrapping_add(HALF), half_mask(mask, 1), v[1]);
    }
}

/// One vector of pixels for [`CHANNEL_BLOCK`] output channels, pointers already moved to the
/// block's first channel and pixel. With AVX2's 16 registers, 8 sums, 2 source halves and a
/// weight broadcast leave room for the masks.
struct Block<'a> {
    src: *const f32,
    src_stride: usize,
    inputs: usize,
    offsets: &'a [isize],
    /// The block's vector's row of `[tap]` masks.
    masks: &'a [u16],
    /// Lanes of the vector that lie on the grid.
    tail: u16,
    /// The channel block's packed weights, `[input][tap][CO]`.
    w: *const f32,
    dst: *mut f32,
    dst_stride: usize,
    /// The block's own bias values, for [`Start::Bias`].
    start: Start<'a>,
}

/// See [`super::conv`], whose checks make the reads and writes in bounds.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the arguments must pass the checks of [`super::conv`].
#[target_feature(enable = "avx2,fma")]
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
    for v in 0..taps.vectors() {
        for o0 in (0..w.outputs).step_by(CHANNEL_BLOCK) {
            let no = (w.outputs - o0).min(CHANNEL_BLOCK);
            let block = Block {
                src: src.as_ptr().wrapping_add(v * LANES),
                src_stride,
                inputs: w.inputs,
                offsets: &taps.offsets,
                masks: &taps.masks[v * ntaps..(v + 1) * ntaps],
                tail: taps.tail_mask(v),
                w: w.data[o0 * ntaps * w.inputs..].as_ptr(),
                dst: dst.as_mut_ptr().wrapping_add(o0 * dst_stride + v * LANES),
                dst_stride,
                start: match start {
                    Start::Bias(b) => Start::Bias(&b[o0..o0 + no]),
                    s => s,
                },
            };
            match no {
                1 => conv_block::<1>(&block),
                2 => conv_block::<2>(&block),
                3 => conv_block::<3>(&block),
                _ => conv_block::<4>(&block),
            }
        }
    }
}

/// # Safety
/// AVX2 and FMA, and a block of [`conv`]: every unmasked lane in bounds.
#[target_feature(enable = "avx2,fma")]
// The indices address several register arrays in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn conv_block<const CO: usize>(b: &Block) {
    let ntaps = b.offsets.len();
    let mut acc = [[_mm256_setzero_ps(); 2]; CO];
    if let Start::Accumulate = b.start {
        for o in 0..CO {
            acc[o] = masked_load(b.tail, b.dst.add(o * b.dst_stride));
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
            let s = channel.wrapping_offset(*b.offsets.get_unchecked(t));
            let x = masked_load(*b.masks.get_unchecked(t), s);
            for o in 0..CO {
                let wo = _mm256_broadcast_ss(&*w.add(o));
                for h in 0..2 {
                    acc[o][h] = _mm256_fmadd_ps(wo, x[h], acc[o][h]);
                }
            }
            w = w.add(CO);
        }
    }
    if let Start::Bias(bias) = b.start {
        // Added last, as after the column-matrix product.
        for o in 0..CO {
            let bo = _mm256_set1_ps(bias[o]);
            for h in 0..2 {
                acc[o][h] = _mm256_add_ps(acc[o][h], bo);
            }
        }
    }
    for o in 0..CO {
        masked_store(b.tail, b.dst.add(o * b.dst_stride), acc[o]);
    }
}

/// Output channels and (at most) taps one call of the weight-gradient micro-kernel sums
/// together: 8 sums, 4 output-gradient halves, a source half and its mask fit the 16
/// registers.
const GRAD_CHANNEL_BLOCK: usize = 4;
const GRAD_TAP_BLOCK: usize = 2;

/// Bytes of output gradient one sweep of the weight-gradient kernel may cover: the
/// [`GRAD_CHANNEL_BLOCK`] planes of a group of images, read again for every input channel and
/// tap block, so they should stay in a 32 KiB L1 cache beside the source planes.
const GRAD_L1_BYTES: usize = 16 << 10;

/// Register sums of one block: `[channel][tap]`, each over the pixels of one half of every
/// vector.
type Sums = [[__m256; GRAD_TAP_BLOCK]; GRAD_CHANNEL_BLOCK];

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
/// register sums carry over from group to group and are added up across lanes at the end.
/// The order of every sum depends on the sizes alone.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the arguments must pass the checks of
/// [`super::weight_grad`].
#[target_feature(enable = "avx2,fma")]
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
    let tap_blocks = ntaps.div_ceil(GRAD_TAP_BLOCK);
    let group = (GRAD_L1_BYTES / (4 * GRAD_CHANNEL_BLOCK * plane_len)).max(1);
    let zero = [[_mm256_setzero_ps(); GRAD_TAP_BLOCK]; GRAD_CHANNEL_BLOCK];
    let mut sums = vec![zero; inputs * tap_blocks];
    for o0 in (0..outputs).step_by(GRAD_CHANNEL_BLOCK) {
        let no = (outputs - o0).min(GRAD_CHANNEL_BLOCK);
        sums.fill(zero);
        for first in (0..images).step_by(group) {
            for input in 0..inputs {
                for b in 0..tap_blocks {
                    let t0 = b * GRAD_TAP_BLOCK;
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
                    let nt = (ntaps - t0).min(GRAD_TAP_BLOCK);
                    grad_kernel(no, nt)(&block, &mut sums[input * tap_blocks + b]);
                }
            }
        }
        for (k, block) in sums.iter().enumerate() {
            let (input, t0) = (k / tap_blocks, (k % tap_blocks) * GRAD_TAP_BLOCK);
            let nt = (ntaps - t0).min(GRAD_TAP_BLOCK);
            for (o, row) in block.iter().enumerate().take(no) {
                let at = ((o0 + o) * inputs + input) * ntaps + t0;
                for (g, v) in gw[at..at + nt].iter_mut().zip(row) {
                    *g += lane_sum(*v);
                }
            }
        }
    }
}

/// The sum of a register's lanes, pairwise.
#[target_feature(enable = "avx2,fma")]
fn lane_sum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

type GradKernel = unsafe fn(&GradBlock, &mut Sums);

/// The weight-gradient micro-kernel for `channels` output channels and `taps` taps.
fn grad_kernel(channels: usize, taps: usize) -> GradKernel {
    fn with_taps<const CO: usize>(taps: usize) -> GradKernel {
        match taps {
            1 => grad_block::<CO, 1>,
            _ => grad_block::<CO, 2>,
        }
    }
    match channels {
        1 => with_taps::<1>(taps),
        2 => with_taps::<2>(taps),
        3 => with_taps::<3>(taps),
        _ => with_taps::<4>(taps),
    }
}

/// Adds the block's products over its images and the grid's pixels to `sums[o][t]`.
///
/// # Safety
/// AVX2 and FMA, and a block of [`weight_grad`]: every unmasked lane in bounds.
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); NT]; CO];
    for o in 0..CO {
        acc[o].copy_from_slice(&sums[o][..NT]);
    }
    for image in g.images.clone() {
        let x = g.x.as_ptr().add((image * g.inputs + g.input) * g.x_stride);
        let dy = g.dy.as_ptr().add((image * g.outputs + g.o0) * g.dy_stride);
        for v in 0..vectors {
            let tail = if v + 1 < vectors { u16::MAX } else { last_tail };
            let row = masks.add(v * ntaps);
            // Masked-off lanes may lie outside `x` and `dy`: the pointers are formed with
            // wrapping arithmetic and never read there.
            let xv = x.wrapping_add(v * LANES);
            for h in 0..2 {
                let mut d = [_mm256_setzero_ps(); CO];
                for o in 0..CO {
                    let p = dy.wrapping_add(o * g.dy_stride + v * LANES + h * HALF);
                    d[o] = if tail == u16::MAX {
                        _mm256_loadu_ps(p)
                    } else {
                        _mm256_maskload_ps(p, half_mask(tail, h))
                    };
                }
                for t in 0..NT {
                    let p = xv.wrapping_offset(offsets[t]).wrapping_add(h * HALF);
                    let xt = _mm256_maskload_ps(p, half_mask(*row.add(t), h));
                    for o in 0..CO {
                        acc[o][t] = _mm256_fmadd_ps(d[o], xt, acc[o][t]);
                    }
                }
            }
        }
    }
    for o in 0..CO {
        sums[o][..NT].copy_from_slice(&acc[o]);
    }
}
