//! conv2d's passes in bf16 on AMX tiles, without a column matrix: for the convolutions the
//! f32 direct kernels take (one group, the image the stride times the output grid, see
//! [`crate::direct`]), which are all of ResNet's and the autoencoder's.
//!
//! With AMX the products are so fast that the passes cost what they move through memory, and
//! a column matrix nine times the image would cost most. Instead each sub-plane of a channel is
//! laid out once in bf16 with zero padding around every image, its rows `wp = gw + 2 * pad`
//! wide, the images one below the other with `pad` zero rows between them: output position `q`
//! (of this padded grid) then reads position `q + dy * wp + dx` for tap `(dy, dx)`, a constant
//! offset, so a tile of 16 consecutive positions is one load at any tap. Positions in the
//! padding are computed too and thrown away (6% on a 32x32 grid, 41% on 8x8).
//!
//! - Forward (and the input gradient, the same kernel on the output gradient with the taps
//!   turned around, once per sub-plane of the input): accumulators of 16 output channels x 16
//!   positions, the source laid out as pairs of channels side by side (`[c / 2][q][2]`, the
//!   layout `tdpbf16ps` multiplies), the weights as 16 x `kc` tiles per tap.
//! - Weight gradient: accumulators of 16 input x 16 output channels per tap, summed over
//!   positions: the input laid out plainly (`[c][q]`), the output gradient as pairs of
//!   positions side by side (`[q / 2][c][2]`), the padding's gradient zero.
//!
//! Every output element is one f32 sum in an order fixed by the sizes; the weight gradient is
//! summed chunk by chunk in chunk order, as the other kernels do, so results do not depend on
//! the thread count.

use super::amx_tiles::{
    conv_block, conv_config, grad_block, ConvBlock, GradBlock, CONV_POSITIONS, GRAD_CONFIG,
    GRAD_STEP, GRAD_TAPS,
};
use super::cpu_kernel::{weight_grad_by_chunks, ConvPasses, Dims};
use crate::amx::with_tiles;
use crate::cpu_util::{with_scratch, Chunks, Start};
use crate::direct::{Plan, Tap};
use crate::matmul::avx512bf16;
use rayon::prelude::*;
use std::cell::Cell;

thread_local! {
    /// A chunk's source in the layout of the forward kernel (pairs of channels).
    static PAIRS: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// A chunk's input in the plain layout of the weight gradient.
    static PLANAR: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// A chunk's output gradient by pairs of positions.
    static BY_POSITION: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// The kernels' f32 output on the padded grid.
    static SUMS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The passes of one convolution on AMX tiles.
pub(crate) struct AmxPasses {
    d: Dims,
    plan: Plan,
    /// Zero rows and columns around each image: the largest reach of a tap.
    pad: usize,
}

impl AmxPasses {
    /// The AMX passes of `d`, where this CPU has AMX and the direct plan takes `d`.
    pub fn new(d: &Dims) -> Option<Self> {
        if d.groups != 1 || !crate::amx::available() {
            return None;
        }
        let plan = Plan::new(&d.geo)?;
        let pad = plan
            .taps
            .iter()
            .map(|t| t.dy.unsigned_abs().max(t.dx.unsigned_abs()))
            .max()
            .unwrap_or(0);
        Some(Self { d: *d, plan, pad })
    }

    fn grid(&self, images: usize) -> Grid {
        Grid {
            size: self.plan.grid,
            pad: self.pad,
            images,
        }
    }

    /// Images per chunk: cut by the batch and image size alone.
    fn chunk_images(&self) -> usize {
        Chunks::new(self.d.batch, self.d.in_len() + self.d.out_len()).images
    }

    /// The adjoint's taps and weights for each sub-plane of the input that some tap reads.
    fn adjoints(&self, w: &[f32]) -> Vec<(usize, Vec<Tap>, Tiles)> {
        let (cin, cout, ntaps) = (
            self.d.geo.channels,
            self.d.out_per_group,
            self.plan.taps.len(),
        );
        (0..self.plan.planes())
            .filter_map(|s| {
                let (taps, index) = self.plan.adjoint_taps(s);
                let tiles = Tiles::new((cin, cout, taps.len()), |i, o, t| {
                    w[(o * cin + i) * ntaps + index[t]]
                });
                (!taps.is_empty()).then_some((s, taps, tiles))
            })
            .collect()
    }

    /// `gx += convᵀ(dy)` for one chunk of images (`dys` NCHW, `gxs` NCHW).
    fn adjoint_chunk(&self, adjoints: &[(usize, Vec<Tap>, Tiles)], dys: &[f32], gxs: &mut [f32]) {
        let (cin, cout) = (self.d.geo.channels, self.d.out_per_group);
        let images = dys.len() / self.d.out_len();
        let g = self.grid(images);
        let Some((_, _, first)) = adjoints.first() else {
            return;
        };
        let layout = Layout::pairs(&g, first.inputs, 1);
        with_scratch(&PAIRS, layout.len(), |src| {
            write_rows(dys, cout, (1, 1), &g, &layout, src);
            let stride = g.sums_stride();
            with_scratch(&SUMS, first.outputs * stride, |sums| {
                for (s, taps, tiles) in adjoints {
                    run_conv(tiles, src, &layout, &g, taps, sums, stride);
                    let phase = (s / self.plan.phases.1, s % self.plan.phases.1);
                    let into = Into {
                        channels: cin,
                        phases: self.plan.phases,
                        phase,
                    };
                    unpad(sums, stride, &g, &into, gxs, Start::Accumulate);
                }
            });
        });
    }
}

impl ConvPasses for AmxPasses {
    fn dims(&self) -> &Dims {
        &self.d
    }

    fn name(&self) -> &'static str {
        "direct bf16 on AMX"
    }

    fn forward_into(&self, x: &[f32], w: &[f32], start: Start, y: &mut [f32]) {
        let (cin, cout, ntaps) = (
            self.d.geo.channels,
            self.d.out_per_group,
            self.plan.taps.len(),
        );
        let tiles = Tiles::new((cout, cin, ntaps), |o, i, t| w[(o * cin + i) * ntaps + t]);
        let images = self.chunk_images();
        let (in_len, out_len) = (self.d.in_len(), self.d.out_len());
        y.par_chunks_mut(images * out_len)
            .zip(x.par_chunks(images * in_len))
            .for_each(|(ys, xs)| {
                let g = self.grid(xs.len() / in_len);
                let layout = Layout::pairs(&g, tiles.inputs, self.plan.planes());
                with_scratch(&PAIRS, layout.len(), |src| {
                    write_rows(xs, cin, self.plan.phases, &g, &layout, src);
                    let stride = g.sums_stride();
                    with_scratch(&SUMS, tiles.outputs * stride, |sums| {
                        run_conv(&tiles, src, &layout, &g, &self.plan.taps, sums, stride);
                        let into = Into {
                            channels: cout,
                            phases: (1, 1),
                            phase: (0, 0),
                        };
                        unpad(sums, stride, &g, &into, ys, start);
                    });
                });
            });
    }

    fn adjoint_into(&self, w: &[f32], dy: &[f32], gx: &mut [f32]) {
        let adjoints = self.adjoints(w);
        let images = self.chunk_images();
        gx.par_chunks_mut(images * self.d.in_len())
            .zip(dy.par_chunks(images * self.d.out_len()))
            .for_each(|(gxs, dys)| self.adjoint_chunk(&adjoints, dys, gxs));
    }

    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>) -> Vec<f32> {
        let d = &self.d;
        let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, self.plan.taps.len());
        let adjoints = match gx {
            Some(_) => self.adjoints(w),
            None => Vec::new(),
        };
        let images = self.chunk_images();
        let len = cout * cin * ntaps;
        weight_grad_by_chunks((x, dy, gx), d, images, len, |xs, dys, gxs, gw| {
            if let Some(gxs) = gxs {
                self.adjoint_chunk(&adjoints, dys, gxs);
            }
            let g = self.grid(xs.len() / d.in_len());
            let planes = self.plan.planes();
            let input = Layout::planar(&g, cin.next_multiple_of(16), planes);
            let output = Layout::planar(&g, cout.next_multiple_of(16), 1);
            with_scratch(&PLANAR, input.len() + output.len(), |buf| {
                let (xp, dyp) = buf.split_at_mut(input.len());
                write_rows(xs, cin, self.plan.phases, &g, &input, xp);
                write_rows(dys, cout, (1, 1), &g, &output, dyp);
                with_scratch(&BY_POSITION, output.len(), |by_position| {
                    let pairs = (g.front() + g.start()) / 2..(g.front() + g.end()) / 2 + GRAD_STEP;
                    by_position_pairs(dyp, output.channels, g.plane_len() / 2, pairs, by_position);
                    run_grad(
                        xp,
                        &input,
                        by_position,
                        output.channels,
                        &g,
                        &self.plan.taps,
                        (cout, cin),
                        gw,
                    );
                });
            });
        })
    }
}

/// A stack of `images` grids of `size` with `pad` zeros around each, as the kernels read it:
/// rows `wp` wide, image `i`'s row `y` at row `pad + i * (gh + pad) + y`, column `x` at
/// `pad + x`. Position `q` is `row * wp + column`; a buffer holds it at `front() + q`.
#[derive(Clone, Copy, Debug)]
struct Grid {
    size: (usize, usize),
    pad: usize,
    images: usize,
}

impl Grid {
    fn wp(&self) -> usize {
        self.size.1 + 2 * self.pad
    }

    /// Rows from one image to the next.
    fn image_rows(&self) -> usize {
        self.size.0 + self.pad
    }

    /// Position of pixel `(y, x)` of image `i`.
    fn position(&self, i: usize, y: usize) -> usize {
        (self.pad + i * self.image_rows() + y) * self.wp() + self.pad
    }

    /// The farthest a tap reads from its output position.
    fn reach(&self) -> usize {
        self.pad * self.wp() + self.pad
    }

    /// Zeros before position 0, for taps reaching back from the first positions computed.
    fn front(&self) -> usize {
        (self.reach() + GRAD_STEP).next_multiple_of(GRAD_STEP)
    }

    /// The first position computed: the first image's first row, rounded down to whole steps
    /// of the weight gradient (whose pairs of positions start even).
    fn start(&self) -> usize {
        self.pad * self.wp() / GRAD_STEP * GRAD_STEP
    }

    /// One past the last image's last pixel.
    fn end(&self) -> usize {
        self.position(self.images - 1, self.size.0 - 1) + self.size.1
    }

    /// Elements of one sub-plane of one channel: room for the blocks computed past `end` and
    /// for the taps' reach beyond them.
    fn plane_len(&self) -> usize {
        (self.front() + self.end() + CONV_POSITIONS + self.reach()).next_multiple_of(GRAD_STEP)
    }

    /// Floats from one channel of the kernels' f32 output to the next.
    fn sums_stride(&self) -> usize {
        (self.end() - self.start()).next_multiple_of(CONV_POSITIONS)
    }

    /// Where tap `t` reads, from the output position.
    fn offset(&self, t: &Tap) -> isize {
        t.dy * self.wp() as isize + t.dx
    }
}

/// A bf16 buffer of `channels` channels (zeros past the real ones) of `planes` sub-planes of a
/// [`Grid`]: plain (`[c][s][q]`) or by pairs of channels (`[c / 2][s][q][2]`).
struct Layout {
    channels: usize,
    planes: usize,
    plane_len: usize,
    front: usize,
    paired: bool,
}

impl Layout {
    fn pairs(g: &Grid, channels: usize, planes: usize) -> Self {
        Self {
            channels,
            planes,
            plane_len: g.plane_len(),
            front: g.front(),
            paired: true,
        }
    }

    fn planar(g: &Grid, channels: usize, planes: usize) -> Self {
        Self {
            paired: false,
            ..Self::pairs(g, channels, planes)
        }
    }

    fn len(&self) -> usize {
        self.channels * self.planes * self.plane_len
    }

    /// Index of channel `c`'s (of the pair's first channel, when paired) value at position
    /// `q` of sub-plane `s`.
    fn index(&self, c: usize, s: usize, q: usize) -> usize {
        match self.paired {
            true => ((c / 2 * self.planes + s) * self.plane_len + self.front + q) * 2,
            false => (c * self.planes + s) * self.plane_len + self.front + q,
        }
    }
}

/// Writes `images` (NCHW, `channels` channels of `phases` times the grid) into `out` in
/// `layout`, zeros everywhere else.
fn write_rows(
    images: &[f32],
    channels: usize,
    phases: (usize, usize),
    g: &Grid,
    layout: &Layout,
    out: &mut [u16],
) {
    let ((gh, gw), (sy, sx)) = (g.size, phases);
    let (h, w) = (sy * gh, sx * gw);
    assert_eq!(
        images.len(),
        g.images * channels * h * w,
        "write_rows: images"
    );
    assert!(out.len() >= layout.len(), "write_rows: layout");
    let mut split = [vec![0.0f32; gw], vec![0.0f32; gw]];
    // Row `y` of phase `(a, b)` of channel `c` of image `i`: in place where the stride is 1,
    // else split out of its row into `buf`.
    let row = |i: usize, c: usize, (a, b): (usize, usize), y: usize, buf: &mut [f32]| {
        let at = ((i * channels + c) * h + sy * y + a) * w;
        if c >= channels {
            buf.fill(0.0);
        } else if sx == 1 {
            buf.copy_from_slice(&images[at..at + w]);
        } else {
            let src = images[at..at + w].iter().skip(b).step_by(sx);
            buf.iter_mut().zip(src).for_each(|(d, &s)| *d = s);
        }
    };
    let (step, width) = if layout.paired { (2, 2) } else { (1, 1) };
    for c in (0..layout.channels).step_by(step) {
        for (a, b) in (0..sy).flat_map(|a| (0..sx).map(move |b| (a, b))) {
            let s = a * sx + b;
            let plane = layout.index(c, s, 0) - width * layout.front;
            let plane = &mut out[plane..plane + width * layout.plane_len];
            // The plane's rows in order, the gaps between them zeroed.
            let mut done = 0;
            for i in 0..g.images {
                for y in 0..gh {
                    let at = width * (layout.front + g.position(i, y));
                    plane[done..at].fill(0);
                    let dst = &mut plane[at..at + width * gw];
                    let [first, second] = &mut split;
                    if c >= channels {
                        dst.fill(0);
                    } else if !layout.paired {
                        if sx == 1 {
                            let at = ((i * channels + c) * h + y) * w;
                            convert(&images[at..at + w], dst);
                        } else {
                            row(i, c, (a, b), y, first);
                            convert(first, dst);
                        }
                    } else {
                        row(i, c, (a, b), y, first);
                        row(i, c + 1, (a, b), y, second);
                        interleave(first, second, dst);
                    }
                    done = at + width * gw;
                }
            }
            plane[done..].fill(0);
        }
    }
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

fn convert(src: &[f32], dst: &mut [u16]) {
    // SAFETY: AMX, which these passes need, comes with AVX512-BF16 (see `crate::amx`).
    unsafe { avx512bf16::convert(src, dst) }
}

fn interleave(even: &[f32], odd: &[f32], dst: &mut [u16]) {
    // SAFETY: as in `convert`.
    unsafe { avx512bf16::interleave(even, odd, dst) }
}

/// Weights as the forward kernel's tiles: per block of 16 outputs, `[tap][chunk][16][kc]`,
/// the inputs cut into chunks of `kc` (zeros past the real outputs and inputs).
struct Tiles {
    data: Vec<u16>,
    /// Outputs and inputs, padded.
    outputs: usize,
    inputs: usize,
    kc: usize,
    taps: usize,
}

impl Tiles {
    /// `weight(o, i, t)` from input `i` to output `o` at tap `t`.
    fn new(
        (outputs, inputs, taps): (usize, usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        // Inputs padded to pairs, and to whole tiles of 32 beyond one tile.
        let even = inputs.next_multiple_of(2);
        let (kc, inputs_p) = if even <= 32 {
            (even, even)
        } else {
            (32, inputs.next_multiple_of(32))
        };
        let outputs_p = outputs.next_multiple_of(16);
        let mut values = Vec::with_capacity(outputs_p * inputs_p * taps);
        for o0 in (0..outputs_p).step_by(16) {
            for t in 0..taps {
                for i0 in (0..inputs_p).step_by(kc) {
                    for o in o0..o0 + 16 {
                        for i in i0..i0 + kc {
                            let real = o < outputs && i < inputs;
                            values.push(if real { weight(o, i, t) } else { 0.0 });
                        }
                    }
                }
            }
        }
        let mut data = vec![0u16; values.len()];
        convert(&values, &mut data);
        Self {
            data,
            outputs: outputs_p,
            inputs: inputs_p,
            kc,
            taps,
        }
    }

    fn chunks(&self) -> usize {
        self.inputs / self.kc
    }

    /// The tiles of outputs `16 * block..`.
    fn block(&self, block: usize) -> &[u16] {
        let len = self.taps * self.inputs * 16;
        &self.data[block * len..(block + 1) * len]
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

/// Where the kernels' output on the padded grid goes: `channels` channels of NCHW images of
/// `phases` times the grid, at phase `phase`.
struct Into {
    channels: usize,
    phases: (usize, usize),
    phase: (usize, usize),
}

/// Writes the real positions of `sums` (`[c][q - start]`, channels `stride` apart) into
/// `images` from `start`.
fn unpad(sums: &[f32], stride: usize, g: &Grid, into: &Into, images: &mut [f32], start: Start) {
    let ((gh, gw), (sy, sx), (a, b)) = (g.size, into.phases, into.phase);
    let (h, w) = (sy * gh, sx * gw);
    assert_eq!(
        images.len(),
        g.images * into.channels * h * w,
        "unpad: images"
    );
    let first = g.start();
    for i in 0..g.images {
        for c in 0..into.channels {
            for y in 0..gh {
                let from = c * stride + g.position(i, y) - first;
                let src = &sums[from..from + gw];
                let at = ((i * into.channels + c) * h + sy * y + a) * w;
                let row = &mut images[at..at + w];
                if sx == 1 {
                    let pairs = row.iter_mut().zip(src);
                    match start {
                        Start::Zero => row.copy_from_slice(src),
                        Start::Bias(bias) => pairs.for_each(|(d, s)| *d = s + bias[c]),
                        Start::Accumulate => pairs.for_each(|(d, s)| *d += s),
                    }
                } else {
                    assert!(matches!(start, Start::Accumulate), "unpad: phases add");
                    let pairs = row.iter_mut().skip(b).step_by(sx).zip(src);
                    pairs.for_each(|(d, s)| *d += s);
                }
            }
        }
    }
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
