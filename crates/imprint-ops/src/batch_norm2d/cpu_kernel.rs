use super::{synced, BatchNorm2dKernel, FusedBatchNorm2dKernel, SumOverReplicas, TrainOutput};
use crate::cpu_util::{with_wide_vectors, zeros, PooledVec};
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use rayon::prelude::*;

fn read(t: &Tensor1<Cpu>, channels: usize, what: &str) -> Vec<f32> {
    assert_eq!(
        t.shape().0,
        channels,
        "batch_norm2d: {what} has {} elements but the input has {channels} channels",
        t.shape().0
    );
    let mut v = vec![0.0; channels];
    t.copy_into(&mut v);
    v
}

/// `f(channel)` for every channel, in parallel, collected in channel order.
fn per_channel<R: Send>(channels: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    (0..channels).into_par_iter().map(f).collect()
}

/// Iterates the planes (`h * w` values) of channel `c` across the batch.
fn planes(data: &[f32], c: usize, channels: usize, plane: usize) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(plane).skip(c).step_by(channels)
}

/// Per-channel affine map `y = x * scale_c + shift_c` into a new buffer.
fn affine(x: &[f32], scale: &[f32], shift: &[f32], plane: usize) -> Vec<f32> {
    let channels = scale.len();
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (s, t) = (scale[i % channels], shift[i % channels]);
            yp.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * s + t);
        });
    y
}

/// One channel's batch statistics and the affine map they make with gamma and beta.
#[derive(Clone, Copy, Debug)]
struct Channel {
    mean: f32,
    /// Biased variance.
    var: f32,
    inv_std: f32,
    gamma: f32,
    /// `y = x * scale + shift`.
    scale: f32,
    shift: f32,
}

/// What follows the normalisation inside the op (after the residual, where one is added).
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    Relu,
}

/// The planes of each channel: entry `c` lists channel `c`'s `plane`-long planes in batch
/// order, so that one task per channel can read or write them all.
fn channel_planes(data: &[f32], channels: usize, plane: usize) -> Vec<Vec<&[f32]>> {
    let mut out: Vec<Vec<&[f32]>> = (0..channels).map(|_| Vec::new()).collect();
    for (k, p) in data.chunks_exact(plane).enumerate() {
        out[k % channels].push(p);
    }
    out
}

/// [`channel_planes`] for writing.
fn channel_planes_mut(data: &mut [f32], channels: usize, plane: usize) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..channels).map(|_| Vec::new()).collect();
    for (k, p) in data.chunks_exact_mut(plane).enumerate() {
        out[k % channels].push(p);
    }
    out
}

/// Running sums per lane: one sum would make every add wait for the one before, and 16 f64
/// lanes fill two 512-bit registers.
const SUM_LANES: usize = 16;

/// `Σ f(v)` over every value of `planes`, in f64, in [`SUM_LANES`] running sums added up in a
/// fixed order at the end.
#[inline(always)]
fn lane_sum(planes: &[&[f32]], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; SUM_LANES];
    for p in planes {
        let chunks = p.chunks_exact(SUM_LANES);
        for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *l += f(v);
        }
        for c in chunks {
            let c: &[f32; SUM_LANES] = c.try_into().expect("chunks of SUM_LANES");
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
    }
    lanes.iter().sum()
}

/// A channel's mean and biased variance over `planes` (two passes in f64: the mean, then the
/// mean squared deviation from it), and the affine map they make.
#[inline(always)]
fn channel_stats(planes: &[&[f32]], gamma: f32, beta: f32, eps: f32) -> Channel {
    let m = planes.iter().map(|p| p.len()).sum::<usize>() as f64;
    let mean = lane_sum(planes, |v| v as f64) / m;
    let var = (lane_sum(planes, |v| (v as f64 - mean).powi(2)) / m) as f32;
    Channel::new(mean, var, (gamma, beta, eps))
}

impl Channel {
    /// The affine map of a channel of this mean and biased variance.
    #[inline(always)]
    fn new(mean: f64, var: f32, (gamma, beta, eps): (f32, f32, f32)) -> Self {
        let (mean, inv_std) = (mean as f32, 1.0 / (var + eps).sqrt());
        let scale = gamma * inv_std;
        Channel {
            mean,
            var,
            inv_std,
            gamma,
            scale,
            shift: beta - mean * scale,
        }
    }
}

with_wide_vectors! {
    /// `Σ v` over a channel's planes, as [`channel_stats`] takes it.
    fn channel_sum(planes: &[&[f32]]) -> f64 = channel_sum_body
}

#[inline(always)]
fn channel_sum_body(planes: &[&[f32]]) -> f64 {
    lane_sum(planes, |v| v as f64)
}

with_wide_vectors! {
    /// `Σ (v - mean)²` over a channel's planes, as [`channel_stats`] takes it.
    fn channel_deviations(planes: &[&[f32]], mean: f64) -> f64 = channel_deviations_body
}

#[inline(always)]
fn channel_deviations_body(planes: &[&[f32]], mean: f64) -> f64 {
    lane_sum(planes, |v| (v as f64 - mean).powi(2))
}

/// Every channel's statistics over every replica's share of the batch: the sums of this
/// share's values, and their count, summed over the replicas for the means; then the squared
/// deviations from those means, summed likewise for the variances. The same two passes as
/// [`channel_stats`], with the replicas' partial sums added between them. Returns the channels
/// and the count of values each is over.
fn synced_stats(
    xs: &[Vec<&[f32]>],
    (gamma, beta, eps): (&[f32], &[f32], f32),
    sum: &SumOverReplicas,
) -> (Vec<Channel>, usize) {
    let local: usize = xs.first().map_or(0, |p| p.iter().map(|p| p.len()).sum());
    let mut sums: Vec<f64> = xs.par_iter().map(|p| channel_sum(p)).collect();
    sums.push(local as f64);
    sum(&mut sums);
    let m = sums.pop().expect("the count follows the sums");
    let means: Vec<f64> = sums.iter().map(|s| s / m).collect();
    let mut squares: Vec<f64> = xs
        .par_iter()
        .zip(&means)
        .map(|(p, &mean)| channel_deviations(p, mean))
        .collect();
    sum(&mut squares);
    let channels = (0..xs.len())
        .map(|c| Channel::new(means[c], (squares[c] / m) as f32, (gamma[c], beta[c], eps)))
        .collect();
    (channels, m as usize)
}

/// `y = x * scale + shift`, followed by `after` (the residual `r` added first where given).
#[inline(always)]
fn normalise(c: &Channel, after: After, x: &[f32], r: Option<&[f32]>, y: &mut [f32]) {
    match (after, r) {
        (After::Nothing, _) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * c.scale + c.shift;
            }
        }
        (After::Relu, None) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x * c.scale + c.shift).max(0.0);
            }
        }
        (After::Relu, Some(r)) => {
            for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                *y = (x * c.scale + c.shift + r).max(0.0);
            }
        }
    }
}

/// The gradient reaching the normalisation's own output: `dy` where the ReLU after it passed
/// its input on (where its input was positive), zero elsewhere.
#[inline(always)]
fn relu_grad(c: &Channel, x: &[f32], r: Option<&[f32]>, dy: &[f32], out: &mut [f32]) {
    match r {
        None => {
            for ((o, &x), &d) in out.iter_mut().zip(x).zip(dy) {
                *o = if x * c.scale + c.shift > 0.0 { d } else { 0.0 };
            }
        }
        Some(r) => {
            for (((o, &x), &d), &r) in out.iter_mut().zip(x).zip(dy).zip(r) {
                *o = if x * c.scale + c.shift + r > 0.0 {
                    d
                } else {
                    0.0
                };
            }
        }
    }
}

/// Adds `d` and `d * x̂` of one plane to the lanes of `Σ dy` and `Σ dy x̂`: value `k` of every
/// whole run of [`SUM_LANES`] to lane `k`, then the rest to the first lanes.
fn add_grad_sums(c: &Channel, x: &[f32], d: &[f32], sums: &mut [[f64; SUM_LANES]; 2]) {
    let full = x.len() / SUM_LANES * SUM_LANES;
    for (xc, dc) in x[..full]
        .chunks_exact(SUM_LANES)
        .zip(d[..full].chunks_exact(SUM_LANES))
    {
        add_grad_sums_tail(c, xc, dc, sums);
    }
    add_grad_sums_tail(c, &x[full..], &d[full..], sums);
}

/// [`add_grad_sums`] for at most [`SUM_LANES`] values, into the first lanes.
#[inline(always)]
fn add_grad_sums_tail(c: &Channel, x: &[f32], d: &[f32], sums: &mut [[f64; SUM_LANES]; 2]) {
    for (j, (&x, &d)) in x.iter().zip(d).enumerate() {
        let xhat = (x - c.mean) * c.inv_std;
        sums[0][j] += d as f64;
        sums[1][j] += (d * xhat) as f64;
    }
}

/// [`add_grad_sums`] in AVX-512, the same operations on the same lanes: the compiler leaves
/// the plain version scalar.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
// AVX-512 intrinsics are stable from Rust 1.89, which the `gemm` dependency's AVX-512 kernels
// already require of this crate.
#[clippy::msrv = "1.89"]
unsafe fn add_grad_sums_avx512(
    c: &Channel,
    x: &[f32],
    d: &[f32],
    sums: &mut [[f64; SUM_LANES]; 2],
) {
    use std::arch::x86_64::*;
    let full = x.len().min(d.len()) / SUM_LANES * SUM_LANES;
    let (mean, inv_std) = (_mm512_set1_ps(c.mean), _mm512_set1_ps(c.inv_std));
    // Lanes 0..8 and 8..16 of each sum.
    let halves = |lanes: &[f64; SUM_LANES]| {
        // SAFETY: each half holds eight f64.
        unsafe {
            [
                _mm512_loadu_pd(lanes.as_ptr()),
                _mm512_loadu_pd(lanes.as_ptr().add(8)),
            ]
        }
    };
    let (mut sdy, mut sdyx) = (halves(&sums[0]), halves(&sums[1]));
    let wide = |v: __m512| {
        let high = _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1);
        let low = _mm512_castps512_ps256(v);
        [
            _mm512_cvtps_pd(low),
            _mm512_cvtps_pd(_mm256_castpd_ps(high)),
        ]
    };
    for k in (0..full).step_by(SUM_LANES) {
        // SAFETY: `k + SUM_LANES <= full`, within both slices.
        let (xv, dv) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr().add(k)),
                _mm512_loadu_ps(d.as_ptr().add(k)),
            )
        };
        let xhat = _mm512_mul_ps(_mm512_sub_ps(xv, mean), inv_std);
        let (dw, pw) = (wide(dv), wide(_mm512_mul_ps(dv, xhat)));
        for h in 0..2 {
            sdy[h] = _mm512_add_pd(sdy[h], dw[h]);
            sdyx[h] = _mm512_add_pd(sdyx[h], pw[h]);
        }
    }
    for (lanes, v) in sums.iter_mut().zip([sdy, sdyx]) {
        // SAFETY: each half holds eight f64.
        unsafe {
            _mm512_storeu_pd(lanes.as_mut_ptr(), v[0]);
            _mm512_storeu_pd(lanes.as_mut_ptr().add(8), v[1]);
        }
    }
    add_grad_sums_tail(c, &x[full..], &d[full..], sums);
}

/// [`add_grad_sums`] in AVX2, the same operations on the same lanes: each 16 values are two
/// vectors of eight, each widened into two vectors of four f64 lanes.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_grad_sums_avx2(c: &Channel, x: &[f32], d: &[f32], sums: &mut [[f64; SUM_LANES]; 2]) {
    use std::arch::x86_64::*;
    let full = x.len().min(d.len()) / SUM_LANES * SUM_LANES;
    let (mean, inv_std) = (_mm256_set1_ps(c.mean), _mm256_set1_ps(c.inv_std));
    // Lanes 4q..4q + 4 of each sum in vector q.
    let mut acc = [[_mm256_setzero_pd(); 4]; 2];
    for (a, lanes) in acc.iter_mut().zip(sums.iter()) {
        for (q, v) in a.iter_mut().enumerate() {
            // SAFETY: lanes 4q..4q + 4 lie within the 16.
            *v = unsafe { _mm256_loadu_pd(lanes.as_ptr().add(4 * q)) };
        }
    }
    for k in (0..full).step_by(SUM_LANES) {
        for half in 0..2 {
            let at = k + 8 * half;
            // SAFETY: `at + 8 <= k + SUM_LANES <= full`, within both slices.
            let (xv, dv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(at)),
                    _mm256_loadu_ps(d.as_ptr().add(at)),
                )
            };
            let xhat = _mm256_mul_ps(_mm256_sub_ps(xv, mean), inv_std);
            let dx = _mm256_mul_ps(dv, xhat);
            for (a, v) in acc.iter_mut().zip([dv, dx]) {
                let low = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
                let high = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
                a[2 * half] = _mm256_add_pd(a[2 * half], low);
                a[2 * half + 1] = _mm256_add_pd(a[2 * half + 1], high);
            }
        }
    }
    for (lanes, a) in sums.iter_mut().zip(acc) {
        for (q, v) in a.into_iter().enumerate() {
            // SAFETY: lanes 4q..4q + 4 lie within the 16.
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * q), v) };
        }
    }
    add_grad_sums_tail(c, &x[full..], &d[full..], sums);
}

/// Saved for the training-mode backward pass.
struct Saved {
    x: PooledVec,
    residual: Option<PooledVec>,
    channels: Vec<Channel>,
    plane: usize,
    after: After,
    /// Values per channel the statistics are over (every replica's, when synchronised).
    count: usize,
}

/// The planes of every channel of `x`, the residual and `dy`.
struct Planes<'a> {
    x: Vec<Vec<&'a [f32]>>,
    r: Option<Vec<Vec<&'a [f32]>>>,
    dy: Vec<Vec<&'a [f32]>>,
}

impl<'a> Planes<'a> {
    fn new(s: &'a Saved, dy: &'a [f32]) -> Self {
        let n = s.channels.len();
        Self {
            x: channel_planes(s.x.as_slice(), n, s.plane),
            r: s.residual
                .as_ref()
                .map(|r| channel_planes(r.as_slice(), n, s.plane)),
            dy: channel_planes(dy, n, s.plane),
        }
    }

    /// Plane `i` of channel `c`: `x`, the residual where one was added, `dy`.
    fn plane(&self, c: usize, i: usize) -> (&[f32], Option<&[f32]>, &[f32]) {
        (
            self.x[c][i],
            self.r.as_ref().map(|r| r[c][i]),
            self.dy[c][i],
        )
    }

    /// Planes per channel: the samples of the batch.
    fn samples(&self) -> usize {
        self.x.first().map_or(0, Vec::len)
    }
}

/// Channels per task of the backward pass. A task walks its channels' planes sample by
/// sample, so that it reads runs of adjacent planes, where one task per channel would jump a
/// whole sample's planes between every two of its own, a cache miss at each plane that the
/// prefetcher cannot foresee (on 8x8 maps, every 256 bytes). Each channel's sums still add
/// its planes in batch order: the same bits whatever the grouping. The forward pass keeps a
/// task per channel: it reads a channel's planes three times, and one channel's stay in cache
/// between the passes where a group's do not (grouped, it ran slower).
fn channels_per_task(channels: usize) -> usize {
    channels.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// The gradient reaching the normalisation of one plane: `dy`, or where a ReLU follows, `dy`
/// masked, in `buf`.
#[inline(always)]
fn norm_grad<'a>(
    c: &Channel,
    after: After,
    (x, r, dy): (&[f32], Option<&[f32]>, &'a [f32]),
    buf: &'a mut [f32],
) -> &'a [f32] {
    if after == After::Nothing {
        return dy;
    }
    relu_grad(c, x, r, dy, buf);
    buf
}

/// One channel's share of the backward pass's first pass: the residual's gradient, and the
/// sums.
struct FirstPass<'a> {
    /// Where a residual was added: its gradient planes, to which `d` is added.
    gr: Option<Vec<&'a mut [f32]>>,
    /// The lanes of `Σ d` and `Σ d x̂`.
    sums: [[f64; SUM_LANES]; 2],
}

/// Backward, first pass over channels `first..first + outs.len()`, `d` being the gradient
/// reaching the normalisation: see [`FirstPass`].
#[inline(always)]
fn first_pass_body(
    s: &Saved,
    planes: &Planes,
    first: usize,
    outs: &mut [FirstPass],
    add_grad_sums: impl Fn(&Channel, &[f32], &[f32], &mut [[f64; SUM_LANES]; 2]),
) {
    let mut buf = vec![0.0; s.plane];
    for i in 0..planes.samples() {
        for (j, o) in outs.iter_mut().enumerate() {
            let c = &s.channels[first + j];
            let (xp, rp, dp) = planes.plane(first + j, i);
            let d = norm_grad(c, s.after, (xp, rp, dp), &mut buf);
            add_grad_sums(c, xp, d, &mut o.sums);
            if let Some(g) = o.gr.as_mut() {
                g[i].iter_mut().zip(d).for_each(|(g, d)| *g += d);
            }
        }
    }
}

/// See [`first_pass_body`].
fn first_pass(s: &Saved, planes: &Planes, first: usize, outs: &mut [FirstPass]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { first_pass_avx512(s, planes, first, outs) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { first_pass_avx2(s, planes, first, outs) };
    }
    first_pass_body(s, planes, first, outs, add_grad_sums)
}

/// [`first_pass_body`] compiled for AVX2, with its sums in AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn first_pass_avx2(s: &Saved, planes: &Planes, first: usize, outs: &mut [FirstPass]) {
    first_pass_body(s, planes, first, outs, |c, x, d, s| {
        // SAFETY: only run where the CPU has AVX2, like this function.
        unsafe { add_grad_sums_avx2(c, x, d, s) }
    })
}

/// [`first_pass_body`] compiled for AVX-512, with its sums in AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn first_pass_avx512(s: &Saved, planes: &Planes, first: usize, outs: &mut [FirstPass]) {
    first_pass_body(s, planes, first, outs, |c, x, d, s| {
        // SAFETY: only run where the CPU has AVX-512F, like this function.
        unsafe { add_grad_sums_avx512(c, x, d, s) }
    })
}

/// Backward, second pass over channels `first..first + gx.len()`: adds `dL/dx` to each
/// channel's planes in `gx`, given every channel's `(Σ d, Σ d x̂)` over the `m` values of its
/// statistics.
///
/// With `x̂ = (x - mean) * inv_std`: `dx = gamma * inv_std / m * (m d - Σ d - x̂ Σ d x̂)`.
#[inline(always)]
fn second_pass_body(
    s: &Saved,
    planes: &Planes,
    sums: &[(f64, f64)],
    first: usize,
    gx: &mut [Vec<&mut [f32]>],
) {
    let m = s.count as f64;
    let mut buf = vec![0.0; s.plane];
    for i in 0..planes.samples() {
        for (j, gc) in gx.iter_mut().enumerate() {
            let c = first + j;
            let ch = &s.channels[c];
            let k = ch.gamma * ch.inv_std;
            let (mean_dy, mean_dyx) = ((sums[c].0 / m) as f32, (sums[c].1 / m) as f32);
            let (xp, rp, dp) = planes.plane(c, i);
            let d = norm_grad(ch, s.after, (xp, rp, dp), &mut buf);
            for ((g, &x), &d) in gc[i].iter_mut().zip(xp).zip(d) {
                let xhat = (x - ch.mean) * ch.inv_std;
                *g += k * (d - mean_dy - xhat * mean_dyx);
            }
        }
    }
}

with_wide_vectors! {
    /// See [`second_pass_body`].
    fn second_pass(
        s: &Saved,
        planes: &Planes,
        sums: &[(f64, f64)],
        first: usize,
        gx: &mut [Vec<&mut [f32]>],
    ) -> () = second_pass_body
}

/// One channel's statistics, then its output planes `y`.
#[inline(always)]
fn channel_forward_body(
    x: &[&[f32]],
    r: Option<&[&[f32]]>,
    (gamma, beta, eps): (f32, f32, f32),
    after: After,
    y: &mut [&mut [f32]],
) -> Channel {
    let c = channel_stats(x, gamma, beta, eps);
    for (i, (xp, yp)) in x.iter().zip(y).enumerate() {
        normalise(&c, after, xp, r.map(|r| r[i]), yp);
    }
    c
}

with_wide_vectors! {
    /// See [`channel_forward_body`].
    fn channel_forward(
        x: &[&[f32]],
        r: Option<&[&[f32]]>,
        params: (f32, f32, f32),
        after: After,
        y: &mut [&mut [f32]],
    ) -> Channel = channel_forward_body
}

/// Training-mode backward, first pass, a task per group of channels: each channel's `(Σ d,
/// Σ d x̂)`, and where a residual was added, `dL/dr` added to `gr`.
fn train_sums(s: &Saved, planes: &Planes, gr: Option<&mut [f32]>) -> Vec<(f64, f64)> {
    let n = s.channels.len();
    let grs: Vec<Option<Vec<&mut [f32]>>> = match gr {
        Some(g) => channel_planes_mut(g, n, s.plane)
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..n).map(|_| None).collect(),
    };
    let mut outs: Vec<FirstPass> = grs
        .into_iter()
        .map(|gr| FirstPass {
            gr,
            sums: [[0.0; SUM_LANES]; 2],
        })
        .collect();
    let group = channels_per_task(n);
    outs.par_chunks_mut(group)
        .enumerate()
        .for_each(|(g, outs)| first_pass(s, planes, g * group, outs));
    let total = |l: &[f64; SUM_LANES]| l.iter().sum::<f64>();
    outs.iter()
        .map(|o| (total(&o.sums[0]), total(&o.sums[1])))
        .collect()
}

/// Training-mode backward, second pass, a task per group of channels: adds `dL/dx` to `gx`,
/// given every channel's `(Σ d, Σ d x̂)`.
fn train_input_grad(s: &Saved, planes: &Planes, sums: &[(f64, f64)], gx: &mut [f32]) {
    let n = s.channels.len();
    let group = channels_per_task(n);
    channel_planes_mut(gx, n, s.plane)
        .par_chunks_mut(group)
        .enumerate()
        .for_each(|(g, gx)| second_pass(s, planes, sums, g * group, gx));
}

/// Training-mode forward on plain slices: every channel's statistics, then its output planes,
/// one task per channel; with `synced`, all the statistics first, over every replica. Returns
/// the output, the channels and the count of values each channel's statistics are over.
fn train_forward(
    x: &[f32],
    residual: Option<&[f32]>,
    after: After,
    (gamma, beta, eps): (&[f32], &[f32], f32),
    plane: usize,
    synced: Option<&SumOverReplicas>,
) -> (Vec<f32>, Vec<Channel>, usize) {
    let n = gamma.len();
    let xs = channel_planes(x, n, plane);
    let rs = residual.map(|r| channel_planes(r, n, plane));
    let mut y = zeros(x.len());
    let ys = channel_planes_mut(&mut y, n, plane);
    let Some(sum) = synced else {
        let channels = ys
            .into_par_iter()
            .enumerate()
            .map(|(c, mut yc)| {
                let r = rs.as_ref().map(|r| &r[c][..]);
                channel_forward(&xs[c], r, (gamma[c], beta[c], eps), after, &mut yc)
            })
            .collect();
        return (y, channels, x.len() / n);
    };
    let (channels, count) = synced_stats(&xs, (gamma, beta, eps), sum);
    ys.into_par_iter().enumerate().for_each(|(c, yc)| {
        for (i, (xp, yp)) in xs[c].iter().zip(yc).enumerate() {
            let r = rs.as_ref().map(|r| r[c][i]);
            normalise(&channels[c], after, xp, r, yp);
        }
    });
    (y, channels, count)
}

/// A training-mode batch norm followed by `after`, on the tape: the op behind
/// [`batch_norm2d_train`](crate::batch_norm2d_train) and its fused variants.
fn train_op<T, R>(
    x: Tensor4<Cpu, T>,
    residual: Option<Tensor4<Cpu, R>>,
    after: After,
    gamma: &Tensor1<Cpu>,
    beta: &Tensor1<Cpu>,
    eps: f32,
) -> Result<TrainOutput<Cpu, T>, CpuError>
where
    T: Tape<f32, Cpu> + Merge<R>,
    R: Tape<f32, Cpu>,
{
    let shape = *x.shape();
    let (n, channels, h, w) = shape;
    let plane = h * w;
    assert!(
        n * plane >= 2,
        "batch_norm2d: training needs more than one value per channel, got input {shape:?}"
    );
    let g = read(gamma, channels, "gamma");
    let b = read(beta, channels, "beta");
    let dev = x.device().clone();
    let (x, tape) = x.split_tape();
    let (residual, mut tape) = match residual {
        Some(r) => {
            assert_eq!(*r.shape(), shape, "batch_norm2d: residual shape");
            let (r, r_tape) = r.split_tape();
            (Some(r), tape.merge(r_tape))
        }
        None => (None, tape),
    };
    let copy = |t: &Tensor4<Cpu>| {
        let mut v = PooledVec::new(t.shape().num_elements());
        t.copy_into(v.as_mut_slice());
        v
    };
    let (xs, rs) = (copy(&x), residual.as_ref().map(copy));
    let r = rs.as_ref().map(|r| r.as_slice());
    let synced = synced();
    let (y, stats, count) = train_forward(
        xs.as_slice(),
        r,
        after,
        (&g, &b, eps),
        plane,
        synced.as_ref(),
    );
    let y = dev.try_tensor_from_vec(y, shape)?;
    let mean: Vec<f32> = stats.iter().map(|c| c.mean).collect();
    let var: Vec<f32> = stats.iter().map(|c| c.var).collect();
    if !T::OWNS_TAPE {
        return Ok((y.put_tape(tape), mean, var, count));
    }
    let saved = Saved {
        x: xs,
        residual: rs,
        channels: stats,
        plane,
        after,
        count,
    };
    let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
    let r_g = residual.map(|r| r.ghost());
    tape.add_backward_op(move |grads| {
        // Taken out of the gradients for reading beside the others, rather than copied; put
        // back below.
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&y_g)?);
        // The residual's gradient in a pass of its own, before dL/dx: it may be the gradient
        // of `x` too.
        let gr = match &r_g {
            Some(r_g) => Some(&mut grads.get_or_alloc_mut(r_g)?[..]),
            None => None,
        };
        // The planes' slices, listed once for both passes.
        let planes = Planes::new(&saved, &dy);
        let sums = train_sums(&saved, &planes, gr);
        // dL/dx reads the sums over the whole batch; gamma and beta take this share's, which
        // the loop sums over the replicas with every other gradient.
        // The backward pass sums over the replicas when the forward pass did.
        let whole: Option<Vec<(f64, f64)>> = synced.as_ref().map(|sum| {
            let mut flat: Vec<f64> = sums.iter().flat_map(|&(a, b)| [a, b]).collect();
            sum(&mut flat);
            flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
        });
        let whole = whole.as_deref().unwrap_or(&sums);
        train_input_grad(&saved, &planes, whole, grads.get_or_alloc_mut(&x_g)?);
        drop(planes);
        **grads.get_or_alloc_mut(&y_g)? = dy;
        let dgamma: Vec<f32> = sums.iter().map(|&(_, v)| v as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|&(v, _)| v as f32).collect();
        add_into(grads.get_or_alloc_mut(&g_g)?, &dgamma);
        add_into(grads.get_or_alloc_mut(&b_g)?, &dbeta);
        Ok(())
    });
    Ok((y.put_tape(tape), mean, var, count))
}

fn add_into(acc: &mut [f32], v: &[f32]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

impl BatchNorm2dKernel for Cpu {
    fn batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err> {
        train_op::<T, NoneTape>(x, None, After::Nothing, gamma, beta, eps)
    }

    fn batch_norm2d_eval<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let shape = *x.shape();
        let (_, channels, h, w) = shape;
        let plane = h * w;
        let g = read(gamma, channels, "gamma");
        let b = read(beta, channels, "beta");
        assert_eq!(mean.len(), channels, "batch_norm2d: mean per channel");
        assert_eq!(var.len(), channels, "batch_norm2d: variance per channel");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let mut xs = vec![0.0; x.shape().num_elements()];
        x.copy_into(&mut xs);
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f32> = (0..channels).map(|c| g[c] * inv_std[c]).collect();
        let shift: Vec<f32> = (0..channels).map(|c| b[c] - mean[c] * scale[c]).collect();
        let y = dev.try_tensor_from_vec(affine(&xs, &scale, &shift, plane), shape)?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let mean = mean.to_vec();
        let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            // y = x * scale + shift: dx = dy * scale, dgamma = Σ dy x̂, dbeta = Σ dy.
            let zero = vec![0.0; channels];
            let dx = affine(&dy, &scale, &zero, plane);
            let sums = per_channel(channels, |c| {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                for (xp, dp) in planes(&xs, c, channels, plane).zip(planes(&dy, c, channels, plane))
                {
                    for (&x, &d) in xp.iter().zip(dp) {
                        sdy += d as f64;
                        sdyx += (d * (x - mean[c]) * inv_std[c]) as f64;
                    }
                }
                (sdy as f32, sdyx as f32)
            });
            add_into(grads.get_or_alloc_mut(&x_g)?, &dx);
            let dgamma: Vec<f32> = sums.iter().map(|s| s.1).collect();
            let dbeta: Vec<f32> = sums.iter().map(|s| s.0).collect();
            add_into(grads.get_or_alloc_mut(&g_g)?, &dgamma);
            add_into(grads.get_or_alloc_mut(&b_g)?, &dbeta);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}

impl FusedBatchNorm2dKernel for Cpu {
    fn batch_norm2d_relu_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err> {
        train_op::<T, NoneTape>(x, None, After::Relu, gamma, beta, eps)
    }

    fn batch_norm2d_add_relu_train<T, R>(
        x: Tensor4<Self, T>,
        residual: Tensor4<Self, R>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err>
    where
        T: Tape<f32, Self> + Merge<R>,
        R: Tape<f32, Self>,
    {
        train_op(x, Some(residual), After::Relu, gamma, beta, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector forms of the backward pass's sums give the plain form's bits, lane by lane,
    /// whole runs of 16 values and a tail alike, on lanes that already hold sums.
    #[test]
    fn vector_grad_sums_match_the_plain_ones() {
        let c = Channel::new(0.3, 1.7, (1.2, -0.1, 1e-5));
        for len in [7, 64, 69, 269] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
                .collect();
            let d: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 7.0)
                .collect();
            let mut start = [[0.0f64; SUM_LANES]; 2];
            for (k, lane) in start.iter_mut().flatten().enumerate() {
                *lane = k as f64 / 3.0;
            }
            let mut plain = start;
            add_grad_sums(&c, &x, &d, &mut plain);
            #[cfg(target_arch = "x86_64")]
            {
                if crate::isa::avx2() {
                    let mut v = start;
                    // SAFETY: the CPU has AVX2.
                    unsafe { add_grad_sums_avx2(&c, &x, &d, &mut v) };
                    assert_eq!(v, plain, "AVX2, {len} values");
                }
                if crate::isa::avx512() {
                    let mut v = start;
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { add_grad_sums_avx512(&c, &x, &d, &mut v) };
                    assert_eq!(v, plain, "AVX-512, {len} values");
                }
            }
        }
    }
}
