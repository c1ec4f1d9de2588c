//! The AMX micro-kernels of conv2d's direct bf16 passes (see [`super::amx_kernel`]), written
//! with `asm!` (see [`crate::amx`]). Two tile configurations:
//!
//! - [`conv_config`] for [`conv_block`]: four f32 accumulators (`tmm0`-`tmm3`: 16 output
//!   channels x 16 positions each), weight tiles in `tmm4`/`tmm5` (16 output channels x `kc`
//!   input channels) and source tiles in `tmm6`/`tmm7` (`kc / 2` pairs of input channels x 16
//!   positions), each pair of registers taken in turn so that a load never waits for the
//!   product still reading the register;
//! - [`GRAD_CONFIG`] for [`grad_block`]: three f32 accumulators (`tmm0`-`tmm2`: 16 input
//!   channels x 16 output channels, one per tap), source tiles in `tmm3`-`tmm5` (16 input
//!   channels x 32 positions, one per tap), output-gradient tiles in `tmm6`/`tmm7` (16 pairs
//!   of positions x 16 output channels).

use crate::amx::TileConfig;
use std::arch::asm;

/// Positions one [`conv_block`] computes: four accumulator tiles of 16.
pub(crate) const CONV_POSITIONS: usize = 64;

/// Positions one step of [`grad_block`] sums over: a tile row of 32 bf16.
pub(crate) const GRAD_STEP: usize = 32;

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
