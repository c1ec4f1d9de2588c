//! conv2d's direct bf16 passes ([`super::bf16_kernel`]) on AVX512-BF16: `vdpbf16ps` adds to
//! each of 16 f32 lanes the products of a pair of bf16, and both layouts put pairs where it
//! wants them:
//!
//! - forward: a vector of the paired source is 16 positions of two channels, multiplied by the
//!   broadcast weight pair of those channels for one output: [`CONV_ROWS`] outputs x
//!   [`CONV_VECTORS`] vectors of sums in registers;
//! - weight gradient: a vector of the plain layout is 32 positions of one channel, so output
//!   gradient times input sums pairs of neighbouring positions: [`GRAD_ROWS`] outputs x up to
//!   [`GRAD_TAPS`] taps of one input in registers, added across lanes at the end.

use super::bf16_kernel::{DirectBf16, Grid, Layout, Tiles, POSITION_BLOCK, POSITION_STEP};
use crate::direct::Tap;
use std::arch::x86_64::*;

/// Outputs one call of the forward micro-kernel sums (half of a block of 16 weight rows).
const CONV_ROWS: usize = 8;
/// Vectors of 16 positions it sums: 16 sums, 2 source vectors and a broadcast in registers.
const CONV_VECTORS: usize = 2;

const _: () = assert!(16 * CONV_VECTORS <= POSITION_BLOCK && 32 == POSITION_STEP);

/// Outputs of one call of the weight-gradient micro-kernel: 4 x 6 sums, 4 output-gradient
/// vectors and a source vector in the 32 registers.
const GRAD_ROWS: usize = 4;
const GRAD_TAPS: usize = 6;

/// The direct bf16 passes on AVX512-BF16.
pub(crate) struct Avx512;

impl DirectBf16 for Avx512 {
    fn available() -> bool {
        crate::matmul::avx512bf16::available()
    }

    fn name() -> &'static str {
        "direct bf16 on AVX512-BF16"
    }

    fn conv(
        tiles: &Tiles,
        src: &[u16],
        layout: &Layout,
        g: &Grid,
        taps: &[Tap],
        sums: &mut [f32],
        stride: usize,
    ) {
        assert!(
            layout.paired && layout.channels == tiles.inputs,
            "conv: layout"
        );
        assert!(src.len() >= layout.len(), "conv: source");
        assert!(sums.len() >= tiles.outputs * stride, "conv: sums");
        assert_eq!(taps.len(), tiles.taps, "conv: taps");
        let (start, end) = (g.start(), g.end());
        assert!(
            stride >= (end - start).next_multiple_of(16 * CONV_VECTORS),
            "conv: stride"
        );
        assert!(taps.iter().all(|t| t.plane < layout.planes), "conv: planes");
        // Where each tap's first pair of channels is read, in bf16 values from the position.
        let offsets: Vec<isize> = taps
            .iter()
            .map(|t| 2 * ((t.plane * layout.plane_len) as isize + g.offset(t)))
            .collect();
        // SAFETY: the CPU has AVX512-BF16 (`available`, which `Bf16Passes::new` checked). The
        // kernel reads 32 positions from `q0 + offset_t` of each pair of channels, `q0` from
        // `start` below `end`: between `start - reach` and `end + 31 + reach`, inside a
        // sub-plane (see `Grid`) of the `layout.len()` values `src` holds; the weights within
        // `tiles`; it writes 16 rows of 32 floats from output `16 * block + 8 * half`,
        // position `q0 - start`, inside the `outputs * stride` floats checked above.
        unsafe { conv(tiles, src, layout, &offsets, (start, end), sums, stride) }
    }

    fn grad(
        x: &[u16],
        x_layout: &Layout,
        dy: &[u16],
        dy_layout: &Layout,
        g: &Grid,
        taps: &[Tap],
        (outputs, inputs): (usize, usize),
        gw: &mut [f32],
    ) {
        assert!(!x_layout.paired && !dy_layout.paired, "grad: layouts");
        assert!(
            x.len() >= x_layout.len() && dy.len() >= dy_layout.len(),
            "grad: sizes"
        );
        assert!(
            x_layout.channels >= inputs && dy_layout.planes == 1,
            "grad: channels"
        );
        assert!(
            dy_layout.channels >= outputs.next_multiple_of(GRAD_ROWS),
            "grad: outputs"
        );
        assert!(
            taps.iter().all(|t| t.plane < x_layout.planes),
            "grad: planes"
        );
        assert_eq!(gw.len(), outputs * inputs * taps.len(), "grad: gw");
        // SAFETY: the CPU has AVX512-BF16 (as in `conv`). The kernel reads 32 values from
        // position `q` of `dy`'s channels below `outputs` rounded up to whole blocks (which
        // the layout holds), and from `q + offset_t` of `x`'s, `q` from `start` in steps of
        // 32 below `end + 32`: inside a sub-plane (see `Grid`), as in `conv`.
        unsafe { grad(x, x_layout, dy, dy_layout, g, taps, (outputs, inputs), gw) }
    }
}

/// See [`DirectBf16::conv`].
///
/// # Safety
/// AVX512-BF16, and the checks of [`Avx512::conv`].
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn conv(
    tiles: &Tiles,
    src: &[u16],
    layout: &Layout,
    offsets: &[isize],
    (start, end): (usize, usize),
    sums: &mut [f32],
    stride: usize,
) {
    let (kc, chunks, pairs) = (tiles.kc, tiles.chunks(), tiles.inputs / 2);
    let pair_step = 2 * layout.planes * layout.plane_len;
    for block in 0..tiles.outputs / 16 {
        let weights = tiles.block(block).as_ptr();
        for half in 0..16 / CONV_ROWS {
            for q0 in (start..end).step_by(16 * CONV_VECTORS) {
                let at = src.as_ptr().add(layout.index(0, 0, q0));
                let mut acc = [[_mm512_setzero_ps(); CONV_VECTORS]; CONV_ROWS];
                for (t, &offset) in offsets.iter().enumerate() {
                    let from = at.offset(offset);
                    for p in 0..pairs {
                        let (chunk, c) = (2 * p / kc, 2 * p % kc);
                        let s = from.add(p * pair_step);
                        let x: [__m512bh; CONV_VECTORS] = std::array::from_fn(|v| {
                            std::mem::transmute(_mm512_loadu_si512(s.add(32 * v).cast()))
                        });
                        // Row r's pair: channels c and c + 1 of the chunk, `kc` values a row.
                        let w =
                            weights.add(((t * chunks + chunk) * 16 + half * CONV_ROWS) * kc + c);
                        for (r, row) in acc.iter_mut().enumerate() {
                            let pair = w.add(r * kc).cast::<i32>().read_unaligned();
                            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                            for (sum, &x) in row.iter_mut().zip(&x) {
                                *sum = _mm512_dpbf16_ps(*sum, pair, x);
                            }
                        }
                    }
                }
                let out = block * 16 + half * CONV_ROWS;
                for (r, row) in acc.iter().enumerate() {
                    let dst = sums.as_mut_ptr().add((out + r) * stride + q0 - start);
                    for (v, sum) in row.iter().enumerate() {
                        _mm512_storeu_ps(dst.add(16 * v), *sum);
                    }
                }
            }
        }
    }
}

/// See [`DirectBf16::grad`].
///
/// # Safety
/// AVX512-BF16, and the checks of [`Avx512::grad`].
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad(
    x: &[u16],
    x_layout: &Layout,
    dy: &[u16],
    dy_layout: &Layout,
    g: &Grid,
    taps: &[Tap],
    (outputs, inputs): (usize, usize),
    gw: &mut [f32],
) {
    let ntaps = taps.len();
    let (start, end) = (g.start(), g.end());
    let steps = (end - start).div_ceil(32);
    for o0 in (0..outputs).step_by(GRAD_ROWS) {
        let d = dy.as_ptr().add(dy_layout.index(o0, 0, start));
        for i in 0..inputs {
            for t0 in (0..ntaps).step_by(GRAD_TAPS) {
                let group = &taps[t0..(t0 + GRAD_TAPS).min(ntaps)];
                let from: [*const u16; GRAD_TAPS] = std::array::from_fn(|k| {
                    let t = &group[k.min(group.len() - 1)];
                    let at = x_layout.index(i, t.plane, start) as isize + g.offset(t);
                    x.as_ptr().offset(at)
                });
                let block = GradBlock {
                    d,
                    d_stride: dy_layout.plane_len,
                    from,
                    steps,
                };
                let sums = match group.len() {
                    1 => grad_block::<1>(&block),
                    2 => grad_block::<2>(&block),
                    3 => grad_block::<3>(&block),
                    4 => grad_block::<4>(&block),
                    5 => grad_block::<5>(&block),
                    _ => grad_block::<6>(&block),
                };
                for (o, row) in sums.iter().enumerate().take(outputs - o0) {
                    for (k, &v) in row.iter().enumerate().take(group.len()) {
                        gw[((o0 + o) * inputs + i) * ntaps + t0 + k] += v;
                    }
                }
            }
        }
    }
}

/// One call of [`grad_block`]: [`GRAD_ROWS`] output-gradient channels from `d`, `d_stride`
/// apart, and the input at each tap's offset, over `steps` of 32 positions.
struct GradBlock {
    d: *const u16,
    d_stride: usize,
    from: [*const u16; GRAD_TAPS],
    steps: usize,
}

/// `Σ_q d[o][q] · from_t[q]` for [`GRAD_ROWS`] outputs and `NT` taps.
///
/// # Safety
/// AVX512-BF16; every row read in bounds for `32 * steps` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn grad_block<const NT: usize>(b: &GradBlock) -> [[f32; GRAD_TAPS]; GRAD_ROWS] {
    let mut acc = [[_mm512_setzero_ps(); NT]; GRAD_ROWS];
    for step in 0..b.steps {
        let d: [__m512bh; GRAD_ROWS] = std::array::from_fn(|o| {
            let row = b.d.add(o * b.d_stride + 32 * step);
            std::mem::transmute(_mm512_loadu_si512(row.cast()))
        });
        for t in 0..NT {
            let x: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.from[t].add(32 * step).cast()));
            for (row, &d) in acc.iter_mut().zip(&d) {
                row[t] = _mm512_dpbf16_ps(row[t], d, x);
            }
        }
    }
    let mut sums = [[0.0; GRAD_TAPS]; GRAD_ROWS];
    for (out, row) in sums.iter_mut().zip(&acc) {
        for (s, v) in out.iter_mut().zip(row) {
            *s = _mm512_reduce_add_ps(*v);
        }
    }
    sums
}
