//! conv2d's direct bf16 passes ([`super::bf16_kernel`]) on AMX tiles, written with `asm!` (see
//! [`crate::amx`]). Two tile configurations:
//!
//! - [`conv_config`] for [`conv_block`]: four f32 accumulators (`tmm0`-`tmm3`: 16 output
//!   channels x 16 positions each), weight tiles in `tmm4`/`tmm5` (16 output channels x `kc`
//!   input channels) and source tiles in `tmm6`/`tmm7` (`kc / 2` pairs of input channels x 16
//!   positions), each pair of registers taken in turn so that a load never waits for the
//!   product still reading the register;
//! - [`GRAD_CONFIG`] for [`grad_block`]: three f32 accumulators (`tmm0`-`tmm2`: 16 input
//!   channels x 16 output channels, one per tap), source tiles in `tmm3`-`tmm5` (16 input
//!   channels x 32 positions, one per tap), output-gradient tiles in `tmm6`/`tmm7` (16 pairs
//!   of positions x 16 output channels): the output gradient moved by pairs of positions
//!   (`[q / 2][c][2]`, [`by_position_pairs`]) first.

use super::bf16_kernel::{DirectBf16, Grid, Layout, Tiles, POSITION_BLOCK, POSITION_STEP};
use crate::amx::{with_tiles, TileConfig};
use crate::cpu_util::with_scratch;
use crate::direct::Tap;
use std::arch::asm;
use std::cell::Cell;

thread_local! {
    /// A chunk's output gradient by pairs of positions.
    static BY_POSITION: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// The direct bf16 passes on AMX tiles.
pub(crate) struct Amx;

impl DirectBf16 for Amx {
    fn available() -> bool {
        crate::amx::available()
    }

    fn name() -> &'static str {
        "direct bf16 on AMX"
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
        run_conv(tiles, src, layout, g, taps, sums, stride)
    }

    fn grad(
        x: &[u16],
        x_layout: &Layout,
        dy: &[u16],
        dy_layout: &Layout,
        g: &Grid,
        taps: &[Tap],
        outputs_inputs: (usize, usize),
        gw: &mut [f32],
    ) {
        with_scratch(&BY_POSITION, dy_layout.len(), |by_position| {
            let pairs = (g.front() + g.start()) / 2..(g.front() + g.end()) / 2 + GRAD_STEP;
            let channels = dy_layout.channels;
            by_position_pairs(dy, channels, g.plane_len() / 2, pairs, by_position);
            run_grad(
                x,
                x_layout,
                by_position,
                channels,
                g,
                taps,
                outputs_inputs,
                gw,
            );
        });
    }
}

/// Positions one [`conv_block`] computes: four accumulator tiles of 16.
pub(crate) const CONV_POSITIONS: usize = 64;

/// Positions one step of [`grad_block`] sums over: a tile row of 32 bf16.
pub(crate) const GRAD_STEP: usize = 32;

const _: () = assert!(CONV_POSITIONS <= POSITION_BLOCK && GRAD_STEP == POSITION_STEP);

/// Taps one [`grad_block`] sums together.
pub(crate) const GRAD_TAPS: usize = 3;

/// The configuration of [`conv_block`] for `kc` input channels per tile (even, at most 32).
pub(crate) fn conv_config(kc: usize) -> TileConfig {
    assert!(
        (2..=32).contains(&kc) && kc.is_multiple_of(2),
        "conv_config: {kc} channels"
    );
    let mut config = TileConfig::new();
    for t in 0..4 {
        config = config.tile(t, 16, 64);
    }
    config
        .tile(4, 16, 2 * kc)
        .tile(5, 16, 2 * kc)
        .tile(6, kc / 2, 64)
        .tile(7, kc / 2, 64)
}

/// The configuration of [`grad_block`]: every tile 16 rows of 64 bytes.
pub(crate) const GRAD_CONFIG: TileConfig = {
    let mut config = TileConfig::new();
    let mut t = 0;
    while t < 8 {
        config = config.tile(t, 16, 64);
        t += 1;
    }
    config
};

/// What one [`conv_block`] reads.
pub(crate) struct ConvBlock<'a> {
    /// The packed weight tiles of 16 output channels, `[tap][chunk][16][kc]`.
    pub weights: *const u16,
    pub kc: usize,
    pub chunks: usize,
    /// The source at the block's first position, channel pair 0, sub-plane 0.
    pub src: *const u16,
    /// Bytes from one channel pair's row to the next.
    pub pair_stride: usize,
    /// bf16 values from one chunk of `kc` channels to the next.
    pub chunk_step: usize,
    /// Where each tap reads, in bf16 values from `src`.
    pub taps: &'a [isize],
    /// The output at the block's first channel and position, f32, rows `dst_stride` bytes
    /// apart.
    pub dst: *mut f32,
    pub dst_stride: usize,
}

/// `dst[o][p] = Σ_tap Σ_i w[o][i][tap] · src[i][p + tap]` for 16 output channels and
/// [`CONV_POSITIONS`] positions.
///
/// # Safety
/// Inside [`crate::amx::with_tiles`] with [`conv_config`] of `b.kc`; every tile read in bounds
/// (the weights: `taps * chunks` tiles of `16 * kc`; the source: `kc / 2` rows from
/// `src + tap + chunk * chunk_step`, 64 bytes each, `pair_stride` apart) and the 16 rows of
/// 256 bytes at `dst` writable.
pub(crate) unsafe fn conv_block(b: &ConvBlock) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    let tile = 16 * b.kc;
    let mut w = b.weights;
    let mut odd = false;
    for &tap in b.taps {
        for chunk in 0..b.chunks {
            let src = b.src.offset(tap).add(chunk * b.chunk_step);
            // Weight rows are `kc` values; the four source tiles lie 16 positions (64 bytes)
            // apart.
            macro_rules! step {
                ($a:literal) => {
                    asm!(
                        concat!("tileloadd ", $a, ", [{w} + {sw} * 1]"),
                        "tileloadd tmm6, [{s} + {ss} * 1]",
                        concat!("tdpbf16ps tmm0, ", $a, ", tmm6"),
                        "tileloadd tmm7, [{s} + {ss} * 1 + 64]",
                        concat!("tdpbf16ps tmm1, ", $a, ", tmm7"),
                        "tileloadd tmm6, [{s} + {ss} * 1 + 128]",
                        concat!("tdpbf16ps tmm2, ", $a, ", tmm6"),
                        "tileloadd tmm7, [{s} + {ss} * 1 + 192]",
                        concat!("tdpbf16ps tmm3, ", $a, ", tmm7"),
                        w = in(reg) w,
                        sw = in(reg) 2 * b.kc,
                        s = in(reg) src,
                        ss = in(reg) b.pair_stride,
                        options(nostack, readonly)
                    )
                };
            }
            if odd {
                step!("tmm5");
            } else {
                step!("tmm4");
            }
            odd = !odd;
            w = w.add(tile);
        }
    }
    asm!(
        "tilestored [{d} + {sd} * 1], tmm0",
        "tilestored [{d} + {sd} * 1 + 64], tmm1",
        "tilestored [{d} + {sd} * 1 + 128], tmm2",
        "tilestored [{d} + {sd} * 1 + 192], tmm3",
        d = in(reg) b.dst,
        sd = in(reg) b.dst_stride,
        options(nostack)
    );
}

/// What one [`grad_block`] reads.
pub(crate) struct GradBlock {
    /// The source (16 input channels, `x_stride` bytes apart) at the first position, moved by
    /// each of the [`GRAD_TAPS`] taps.
    pub x: [*const u16; GRAD_TAPS],
    pub x_stride: usize,
    /// The output gradient by pairs of positions, at the first pair and the block's first
    /// output channel; pairs `dy_stride` bytes apart.
    pub dy: *const u16,
    pub dy_stride: usize,
    /// Steps of [`GRAD_STEP`] positions.
    pub steps: usize,
}

/// `out[t][i][o] = Σ_p x_t[i][p] · dy[o][p]` over `steps * GRAD_STEP` positions, for 16 input
/// channels, 16 output channels and [`GRAD_TAPS`] taps; `out` is `[tap][16][16]`.
///
/// # Safety
/// Inside [`crate::amx::with_tiles`] with [`GRAD_CONFIG`]; the 16 rows of 64 bytes of every
/// tile read (`x[t]` plus `64 * step` bytes, `dy` plus `16 * dy_stride * step` bytes) in bounds.
pub(crate) unsafe fn grad_block(g: &GradBlock, out: &mut [f32; GRAD_TAPS * 256]) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        options(nostack, nomem)
    );
    for step in 0..g.steps {
        let dy = g.dy.cast::<u8>().add(step * 16 * g.dy_stride);
        let [x0, x1, x2] = g.x.map(|x| x.add(step * GRAD_STEP));
        macro_rules! step {
            ($b:literal) => {
                asm!(
                    concat!("tileloadd ", $b, ", [{d} + {sd} * 1]"),
                    "tileloadd tmm3, [{x0} + {sx} * 1]",
                    concat!("tdpbf16ps tmm0, tmm3, ", $b),
                    "tileloadd tmm4, [{x1} + {sx} * 1]",
                    concat!("tdpbf16ps tmm1, tmm4, ", $b),
                    "tileloadd tmm5, [{x2} + {sx} * 1]",
                    concat!("tdpbf16ps tmm2, tmm5, ", $b),
                    d = in(reg) dy,
                    sd = in(reg) g.dy_stride,
                    x0 = in(reg) x0,
                    x1 = in(reg) x1,
                    x2 = in(reg) x2,
                    sx = in(reg) g.x_stride,
                    options(nostack, readonly)
                )
            };
        }
        if step % 2 == 1 {
            step!("tmm7");
        } else {
            step!("tmm6");
        }
    }
    asm!(
        "tilestored [{d} + {s} * 1], tmm0",
        "tilestored [{d} + {s} * 1 + 1024], tmm1",
        "tilestored [{d} + {s} * 1 + 2048], tmm2",
        d = in(reg) out.as_mut_ptr(),
        s = in(reg) 64usize,
        options(nostack)
    );
}

/// `out[p][c] = planar[c][p]` for the pairs of bf16 `p` in `pairs` (of `len` per channel) and
/// every channel (a multiple of 16): a channel's values at two neighbouring positions, the
/// unit of the weight gradient's output-gradient tiles, move together.
fn by_position_pairs(
    planar: &[u16],
    channels: usize,
    len: usize,
    pairs: std::ops::Range<usize>,
    out: &mut [u16],
) {
    assert!(channels.is_multiple_of(16), "by_position_pairs: channels");
    assert!(planar.len() >= 2 * channels * len && out.len() >= 2 * channels * len);
    assert!(pairs.end <= len, "by_position_pairs: pairs");
    // SAFETY: AMX, which these passes need, comes with AVX-512 (see `crate::amx`); the sizes
    // are checked above.
    unsafe { transpose_pairs(planar, channels, len, pairs, out) }
}

/// See [`by_position_pairs`]: 16 x 16 blocks of pairs transposed in registers.
///
/// # Safety
/// AVX-512F, and the sizes `by_position_pairs` checks.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(
    planar: &[u16],
    channels: usize,
    len: usize,
    pairs: std::ops::Range<usize>,
    out: &mut [u16],
) {
    use std::arch::x86_64::*;
    let (src, dst) = (
        planar.as_ptr().cast::<i32>(),
        out.as_mut_ptr().cast::<i32>(),
    );
    for c0 in (0..channels).step_by(16) {
        for p0 in pairs.clone().step_by(16) {
            let n = (pairs.end - p0).min(16);
            let mask = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
            let mut r = [_mm512_setzero_si512(); 16];
            for (k, v) in r.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi32(mask, src.add((c0 + k) * len + p0));
            }
            let mut t = [_mm512_setzero_si512(); 16];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
            }
            for k in 0..4 {
                let (a, b, c, d) = (t[4 * k], t[4 * k + 1], t[4 * k + 2], t[4 * k + 3]);
                r[4 * k] = _mm512_unpacklo_epi64(a, c);
                r[4 * k + 1] = _mm512_unpackhi_epi64(a, c);
                r[4 * k + 2] = _mm512_unpacklo_epi64(b, d);
                r[4 * k + 3] = _mm512_unpackhi_epi64(b, d);
            }
            for k in 0..4 {
                t[k] = _mm512_shuffle_i32x4::<0x88>(r[k], r[k + 4]);
                t[k + 4] = _mm512_shuffle_i32x4::<0xdd>(r[k], r[k + 4]);
                t[k + 8] = _mm512_shuffle_i32x4::<0x88>(r[k + 8], r[k + 12]);
                t[k + 12] = _mm512_shuffle_i32x4::<0xdd>(r[k + 8], r[k + 12]);
            }
            for k in 0..4 {
                r[k] = _mm512_shuffle_i32x4::<0x88>(t[k], t[k + 8]);
                r[k + 4] = _mm512_shuffle_i32x4::<0x88>(t[k + 4], t[k + 12]);
                r[k + 8] = _mm512_shuffle_i32x4::<0xdd>(t[k], t[k + 8]);
                r[k + 12] = _mm512_shuffle_i32x4::<0xdd>(t[k + 4], t[k + 12]);
            }
            for (j, v) in r.iter().enumerate().take(n) {
                _mm512_storeu_si512(dst.add((p0 + j) * channels + c0).cast(), *v);
            }
        }
    }
}

/// `sums[o][q - start] = Σ_t Σ_i w[o][i][t] · src[i][plane_t][q + offset_t]` for every output of
/// `tiles` and the positions from the grid's start to its end (and a little past), on the
/// tiles.
fn run_conv(
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
        "run_conv: layout"
    );
    assert!(src.len() >= layout.len(), "run_conv: source");
    assert!(sums.len() >= tiles.outputs * stride, "run_conv: sums");
    assert_eq!(taps.len(), tiles.taps, "run_conv: taps");
    let (start, end) = (g.start(), g.end());
    assert!(
        stride >= end - start && stride.is_multiple_of(CONV_POSITIONS),
        "run_conv: stride"
    );
    let offsets: Vec<isize> = taps
        .iter()
        .map(|t| 2 * ((t.plane * layout.plane_len) as isize + g.offset(t)))
        .collect();
    assert!(
        taps.iter().all(|t| t.plane < layout.planes),
        "run_conv: planes"
    );
    with_tiles(&conv_config(tiles.kc), || {
        for block in 0..tiles.outputs / 16 {
            let weights = tiles.block(block);
            for q0 in (start..end).step_by(CONV_POSITIONS) {
                let b = ConvBlock {
                    weights: weights.as_ptr(),
                    kc: tiles.kc,
                    chunks: tiles.chunks(),
                    src: src[layout.index(0, 0, q0)..].as_ptr(),
                    pair_stride: 4 * layout.planes * layout.plane_len,
                    chunk_step: layout.index(tiles.kc, 0, 0) - layout.index(0, 0, 0),
                    taps: &offsets,
                    dst: sums[block * 16 * stride + q0 - start..].as_mut_ptr(),
                    dst_stride: 4 * stride,
                };
                // SAFETY: inside `with_tiles` with the kernel's configuration. The weights
                // hold `taps * chunks` tiles. Each source tile is `kc / 2` pairs of channels
                // from the chunk's first, 16 positions from `q0 + 16 j + offset_t`, `j < 4`:
                // positions from `start - reach` to `end + 63 + reach` of a sub-plane, inside
                // `front` and `plane_len` (see `Grid`), of `layout.len()` values, which `src`
                // holds. The sums are 16 rows of 64 floats from output `16 * block` and
                // position `q0 - start < stride`, inside the `outputs * stride` floats.
                unsafe { conv_block(&b) };
            }
        }
    });
}

/// Adds `dL/dW` of one chunk to `gw` (`[out][in][tap]`): `x` the input in the plain `layout`,
/// `by_position` the output gradient as `[q / 2][out_padded][2]` over the same buffer
/// positions.
#[allow(clippy::too_many_arguments)]
fn run_grad(
    x: &[u16],
    layout: &Layout,
    by_position: &[u16],
    outputs_p: usize,
    g: &Grid,
    taps: &[Tap],
    (outputs, inputs): (usize, usize),
    gw: &mut [f32],
) {
    assert!(
        !layout.paired && layout.channels.is_multiple_of(16),
        "run_grad: layout"
    );
    assert!(x.len() >= layout.len(), "run_grad: x");
    assert!(
        outputs_p.is_multiple_of(16) && outputs_p >= outputs,
        "run_grad: outputs"
    );
    assert!(
        by_position.len() >= outputs_p * layout.plane_len,
        "run_grad: dy"
    );
    assert!(
        taps.iter().all(|t| t.plane < layout.planes),
        "run_grad: planes"
    );
    let ntaps = taps.len();
    assert_eq!(gw.len(), outputs * inputs * ntaps, "run_grad: gw");
    let (start, end) = (g.start(), g.end());
    let steps = (end - start).div_ceil(GRAD_STEP);
    let mut out = [0.0f32; GRAD_TAPS * 256];
    with_tiles(&GRAD_CONFIG, || {
        for o0 in (0..outputs).step_by(16) {
            for i0 in (0..inputs).step_by(16) {
                for t0 in (0..ntaps).step_by(GRAD_TAPS) {
                    // A short last group repeats its first tap; those sums are dropped.
                    let x_at = |k: usize| {
                        let t = &taps[if t0 + k < ntaps { t0 + k } else { t0 }];
                        let at = layout.index(i0, t.plane, start) as isize + g.offset(t);
                        x[at as usize..].as_ptr()
                    };
                    let block = GradBlock {
                        x: [x_at(0), x_at(1), x_at(2)],
                        x_stride: 2 * layout.planes * layout.plane_len,
                        dy: by_position[((layout.front + start) / 2 * outputs_p + o0) * 2..]
                            .as_ptr(),
                        dy_stride: 4 * outputs_p,
                        steps,
                    };
                    // SAFETY: inside `with_tiles` with the kernel's configuration. Each x
                    // tile is 16 channels from `i0` (of `layout.channels`, a multiple of 16)
                    // at 32 positions from `start + 32 step + offset_t`, between
                    // `start - reach` and `end + 31 + reach`, inside the sub-plane (see
                    // `Grid`). Each dy tile is 16 pairs of positions from
                    // `(front + start) / 2 + 16 step`, below `plane_len / 2`, of 16 outputs
                    // from `o0 < outputs_p`.
                    unsafe { grad_block(&block, &mut out) };
                    for (k, sums) in out.chunks_exact(256).enumerate() {
                        let t = t0 + k;
                        if t >= ntaps {
                            break;
                        }
                        for (ci, row) in sums.chunks_exact(16).enumerate() {
                            let i = i0 + ci;
                            if i >= inputs {
                                break;
                            }
                            for (co, &v) in row.iter().enumerate().take(outputs - o0.min(outputs)) {
                                gw[((o0 + co) * inputs + i) * ntaps + t] += v;
                            }
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_move_by_position_as_a_plain_transpose_does() {
        if !crate::amx::available() {
            println!("skipped: this CPU lacks AMX");
            return;
        }
        for (channels, len, pairs) in [(16, 40, 3..37), (32, 64, 0..64), (48, 17, 1..17)] {
            let planar: Vec<u16> = (0..2 * channels * len).map(|v| v as u16).collect();
            let mut got = vec![0u16; planar.len()];
            by_position_pairs(&planar, channels, len, pairs.clone(), &mut got);
            for p in pairs {
                for c in 0..channels {
                    for k in 0..2 {
                        let (g, w) = (
                            got[(p * channels + c) * 2 + k],
                            planar[(c * len + p) * 2 + k],
                        );
                        assert_eq!(g, w, "{channels}x{len}: pair {p} channel {c}");
                    }
                }
            }
        }
    }
}
