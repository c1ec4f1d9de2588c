//! conv2d's passes in bf16 without a column matrix, on AMX tiles ([`super::bf16_amx`]) or
//! AVX512-BF16 ([`super::bf16_avx512`]): for the convolutions the f32 direct kernels take (one
//! group, the image the stride times the output grid, see [`crate::direct`]), which are all of
//! ResNet's and the autoencoder's.
//!
//! With bf16 products (AMX's above all) the passes cost what they move through memory, and a
//! column matrix nine times the image would cost most. Instead each sub-plane of a channel is
//! laid out once in bf16 with zero padding around every image, its rows `wp = gw + 2 * pad`
//! wide, the images one below the other with `pad` zero rows between them: output position `q`
//! (of this padded grid) then reads position `q + dy * wp + dx` for tap `(dy, dx)`, a constant
//! offset, so a tile of 16 consecutive positions is one load at any tap. Positions in the
//! padding are computed too and thrown away (10% more positions on a 32x32 grid, 41% on 8x8).
//!
//! - Forward (and the input gradient, the same kernel on the output gradient with the taps
//!   turned around, once per sub-plane of the input): the source laid out as pairs of channels
//!   side by side (`[c / 2][q][2]`, the layout `tdpbf16ps` and `vdpbf16ps` multiply), the
//!   weights as blocks of 16 outputs x `kc` inputs per tap ([`Tiles`]).
//! - Weight gradient, summed over positions: the input and the output gradient laid out plainly
//!   (`[c][q]`), the padding's gradient zero.
//!
//! The kernels ([`DirectBf16`]) multiply; everything here is shared.
//!
//! Every output element is one f32 sum in an order fixed by the sizes; the weight gradient is
//! summed chunk by chunk in chunk order, as the other kernels do, so results do not depend on
//! the thread count.

use super::cpu_kernel::{weight_grad_by_chunks, ConvPasses, Dims};
use crate::cpu_util::{with_scratch, Chunks, Start};
use crate::direct::{Plan, Tap};
use crate::matmul::avx512bf16;
use rayon::prelude::*;
use std::cell::Cell;
use std::marker::PhantomData;

/// Positions the kernels compute in one block at most: the positions from the grid's start are
/// computed in whole blocks, past its end.
pub(super) const POSITION_BLOCK: usize = 64;

/// The steps the weight gradient sums positions in; the first position computed is a multiple
/// of it (even, for pairs of positions).
pub(super) const POSITION_STEP: usize = 32;

/// The products of the direct bf16 passes on one instruction set: the glue here lays the data
/// out, a kernel multiplies.
pub(super) trait DirectBf16: Send + Sync + 'static {
    /// Whether this CPU runs the kernel.
    fn available() -> bool;

    fn name() -> &'static str;

    /// `sums[o][q - start] = Σ_t Σ_i w[o][i][t] · src[i][plane_t][q + offset_t]` for every
    /// output of `tiles` (padded) and the positions from the grid's start to its end (and on
    /// to the next multiple of 64), `src` in the paired `layout`, outputs `stride` floats apart.
    fn conv(
        tiles: &Tiles,
        src: &[u16],
        layout: &Layout,
        g: &Grid,
        taps: &[Tap],
        sums: &mut [f32],
        stride: usize,
    );

    /// Adds `Σ_q dy[o][q] · x[i][plane_t][q + offset_t]` to `gw[(o * inputs + i) * taps + t]`,
    /// `x` and `dy` in plain layouts (channels padded to 16, `dy` zero outside the images).
    #[allow(clippy::too_many_arguments)]
    fn grad(
        x: &[u16],
        x_layout: &Layout,
        dy: &[u16],
        dy_layout: &Layout,
        g: &Grid,
        taps: &[Tap],
        outputs_inputs: (usize, usize),
        gw: &mut [f32],
    );
}

thread_local! {
    /// A chunk's source in the layout of the forward kernel (pairs of channels).
    static PAIRS: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// A chunk's input in the plain layout of the weight gradient.
    static PLANAR: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// The kernels' f32 output on the padded grid.
    static SUMS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The passes of one convolution on the direct bf16 kernel `K`.
pub(crate) struct Bf16Passes<K> {
    d: Dims,
    plan: Plan,
    /// Zero rows and columns around each image: the largest reach of a tap.
    pad: usize,
    kernel: PhantomData<K>,
}

impl<K: DirectBf16> Bf16Passes<K> {
    /// The passes of `d`, where this CPU runs `K` and the direct plan takes `d`.
    pub fn new(d: &Dims) -> Option<Self> {
        if d.groups != 1 || !K::available() {
            return None;
        }
        let plan = Plan::new(&d.geo)?;
        let pad = plan
            .taps
            .iter()
            .map(|t| t.dy.unsigned_abs().max(t.dx.unsigned_abs()))
            .max()
            .unwrap_or(0);
        Some(Self {
            d: *d,
            plan,
            pad,
            kernel: PhantomData,
        })
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
                    K::conv(tiles, src, &layout, &g, taps, sums, stride);
                    let phase = (s / self.plan.phases.1, s % self.plan.phases.1);
                    let into = Destination {
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

impl<K: DirectBf16> ConvPasses for Bf16Passes<K> {
    fn dims(&self) -> &Dims {
        &self.d
    }

    fn name(&self) -> &'static str {
        K::name()
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
                        K::conv(&tiles, src, &layout, &g, &self.plan.taps, sums, stride);
                        let into = Destination {
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
                let taps = &self.plan.taps;
                K::grad(xp, &input, dyp, &output, &g, taps, (cout, cin), gw);
            });
        })
    }
}

/// A stack of `images` grids of `size` with `pad` zeros around each, as the kernels read it:
/// rows `wp` wide, image `i`'s row `y` at row `pad + i * (gh + pad) + y`, column `x` at
/// `pad + x`. Position `q` is `row * wp + column`; a buffer holds it at `front() + q`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    size: (usize, usize),
    pad: usize,
    images: usize,
}

impl Grid {
    pub(super) fn wp(&self) -> usize {
        self.size.1 + 2 * self.pad
    }

    /// Rows from one image to the next.
    pub(super) fn image_rows(&self) -> usize {
        self.size.0 + self.pad
    }

    /// Position of pixel `(y, x)` of image `i`.
    pub(super) fn position(&self, i: usize, y: usize) -> usize {
        (self.pad + i * self.image_rows() + y) * self.wp() + self.pad
    }

    /// The farthest a tap reads from its output position.
    pub(super) fn reach(&self) -> usize {
        self.pad * self.wp() + self.pad
    }

    /// Zeros before position 0, for taps reaching back from the first positions computed.
    pub(super) fn front(&self) -> usize {
        (self.reach() + POSITION_STEP).next_multiple_of(POSITION_STEP)
    }

    /// The first position computed: the first image's first row, rounded down to whole steps
    /// of the weight gradient (whose pairs of positions start even).
    pub(super) fn start(&self) -> usize {
        self.pad * self.wp() / POSITION_STEP * POSITION_STEP
    }

    /// One past the last image's last pixel.
    pub(super) fn end(&self) -> usize {
        self.position(self.images - 1, self.size.0 - 1) + self.size.1
    }

    /// Elements of one sub-plane of one channel: room for the blocks computed past `end` and
    /// for the taps' reach beyond them.
    pub(super) fn plane_len(&self) -> usize {
        (self.front() + self.end() + POSITION_BLOCK + self.reach()).next_multiple_of(POSITION_STEP)
    }

    /// Floats from one channel of the kernels' f32 output to the next.
    pub(super) fn sums_stride(&self) -> usize {
        (self.end() - self.start()).next_multiple_of(POSITION_BLOCK)
    }

    /// Where tap `t` reads, from the output position.
    pub(super) fn offset(&self, t: &Tap) -> isize {
        t.dy * self.wp() as isize + t.dx
    }
}

/// A bf16 buffer of `channels` channels (zeros past the real ones) of `planes` sub-planes of a
/// [`Grid`]: plain (`[c][s][q]`) or by pairs of channels (`[c / 2][s][q][2]`).
pub(super) struct Layout {
    pub(super) channels: usize,
    pub(super) planes: usize,
    pub(super) plane_len: usize,
    pub(super) front: usize,
    pub(super) paired: bool,
}

impl Layout {
    pub(super) fn pairs(g: &Grid, channels: usize, planes: usize) -> Self {
        Self {
            channels,
            planes,
            plane_len: g.plane_len(),
            front: g.front(),
            paired: true,
        }
    }

    pub(super) fn planar(g: &Grid, channels: usize, planes: usize) -> Self {
        Self {
            paired: false,
            ..Self::pairs(g, channels, planes)
        }
    }

    pub(super) fn len(&self) -> usize {
        self.channels * self.planes * self.plane_len
    }

    /// Index of channel `c`'s (of the pair's first channel, when paired) value at position
    /// `q` of sub-plane `s`.
    pub(super) fn index(&self, c: usize, s: usize, q: usize) -> usize {
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

fn convert(src: &[f32], dst: &mut [u16]) {
    // SAFETY: both kernels of these passes need AVX512-BF16 (see `DirectBf16::available`).
    unsafe { avx512bf16::convert(src, dst) }
}

fn interleave(even: &[f32], odd: &[f32], dst: &mut [u16]) {
    // SAFETY: as in `convert`.
    unsafe { avx512bf16::interleave(even, odd, dst) }
}

/// Weights as the forward kernel's tiles: per block of 16 outputs, `[tap][chunk][16][kc]`,
/// the inputs cut into chunks of `kc` (zeros past the real outputs and inputs).
pub(super) struct Tiles {
    pub(super) data: Vec<u16>,
    /// Outputs and inputs, padded.
    pub(super) outputs: usize,
    pub(super) inputs: usize,
    pub(super) kc: usize,
    pub(super) taps: usize,
}

impl Tiles {
    /// `weight(o, i, t)` from input `i` to output `o` at tap `t`.
    pub(super) fn new(
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

    pub(super) fn chunks(&self) -> usize {
        self.inputs / self.kc
    }

    /// The tiles of outputs `16 * block..`.
    pub(super) fn block(&self, block: usize) -> &[u16] {
        let len = self.taps * self.inputs * 16;
        &self.data[block * len..(block + 1) * len]
    }
}

/// Where the kernels' output on the padded grid goes: `channels` channels of NCHW images of
/// `phases` times the grid, at phase `phase`.
struct Destination {
    channels: usize,
    phases: (usize, usize),
    phase: (usize, usize),
}

/// Writes the real positions of `sums` (`[c][q - start]`, channels `stride` apart) into
/// `images` from `start`.
fn unpad(
    sums: &[f32],
    stride: usize,
    g: &Grid,
    into: &Destination,
    images: &mut [f32],
    start: Start,
) {
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
