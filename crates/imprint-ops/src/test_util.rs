//! Helpers shared by the op tests: random data, references and finite differences.

use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

pub fn assert_close(label: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{label}: element {i}: got {g}, want {w}"
        );
    }
}

/// Checks `analytic[k]` against central finite differences of `loss = Σ f(inputs) ⊙ r`
/// (accumulated in f64) with respect to every element of `inputs[k]`.
pub fn check_finite_differences(
    label: &str,
    inputs: &[Vec<f32>],
    analytic: &[Vec<f32>],
    r: &[f32],
    f: impl Fn(&[Vec<f32>]) -> Vec<f32>,
) {
    let eps = 1e-2f32;
    assert_eq!(inputs.len(), analytic.len());
    for (which, base) in inputs.iter().enumerate() {
        assert_eq!(
            base.len(),
            analytic[which].len(),
            "{label}: gradient {which} size"
        );
        for i in 0..base.len() {
            let mut plus = inputs.to_vec();
            let mut minus = inputs.to_vec();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let numeric = (dot(&f(&plus), r) - dot(&f(&minus), r)) / (2.0 * eps as f64);
            let got = analytic[which][i] as f64;
            assert!(
                (numeric - got).abs() <= 2e-3 + 2e-3 * numeric.abs(),
                "{label}: input {which} element {i}: analytic {got}, numeric {numeric}"
            );
        }
    }
}

/// `max |a - b| / max |b|`: the difference relative to the tensor's scale, which reordered
/// sums keep small even where single elements nearly cancel.
pub fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale.max(f32::MIN_POSITIVE)
}

/// `f` run in a pool of `threads` threads.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    pool.expect("a thread pool").install(f)
}

/// `y`, `dL/dx` (added onto 0.5s) and `dL/dW` of a convolution-like op on `[x, w, b, dy]`.
pub(crate) fn slice_passes(
    op: &crate::conv2d::cpu_kernel::SliceOp,
    [x, w, b, dy]: &[Vec<f32>; 4],
) -> [Vec<f32>; 3] {
    let y = op.forward(x, w, Some(b));
    let mut gx = vec![0.5; x.len()];
    let gw = op.backward(x, w, dy, Some(&mut gx));
    [y, gx, gw]
}

/// What the convolution tests need of a convolution-like op's spec: its sizes and the op.
pub(crate) trait ConvLike: std::fmt::Debug {
    /// `(in, out)` channels.
    fn channels(&self) -> (usize, usize);
    fn groups(&self) -> usize;
    /// Kernel, stride, padding and dilation.
    fn window(&self) -> [(usize, usize); 4];
    /// Whether the op scatters each input pixel over its window (a transposed convolution)
    /// rather than gathering each output pixel from it.
    fn transposed(&self) -> bool;
    fn weight_len(&self) -> usize;
    fn output_size(&self, h: usize, w: usize) -> (usize, usize);
    fn apply<T: Tape<f32, Cpu>>(
        &self,
        x: Tensor4<Cpu, T>,
        w: &Tensor1<Cpu>,
        b: Option<&Tensor1<Cpu>>,
    ) -> Tensor4<Cpu, T>;
}

/// [`ConvLike`] for a spec type and its op function.
macro_rules! conv_like {
    ($spec:ty, $op:path, $transposed:expr) => {
        impl ConvLike for $spec {
            fn channels(&self) -> (usize, usize) {
                (self.in_channels, self.out_channels)
            }
            fn groups(&self) -> usize {
                self.groups
            }
            fn window(&self) -> [(usize, usize); 4] {
                [self.kernel, self.stride, self.padding, self.dilation]
            }
            fn transposed(&self) -> bool {
                $transposed
            }
            fn weight_len(&self) -> usize {
                self.weight_len()
            }
            fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
                self.output_size(h, w)
            }
            fn apply<T: Tape<f32, Cpu>>(
                &self,
                x: Tensor4<Cpu, T>,
                w: &Tensor1<Cpu>,
                b: Option<&Tensor1<Cpu>>,
            ) -> Tensor4<Cpu, T> {
                $op(x, w, b, self).unwrap()
            }
        }
    };
}

conv_like!(crate::Conv2dSpec, crate::conv2d, false);
conv_like!(crate::ConvTranspose2dSpec, crate::conv_transpose2d, true);

/// The `(small-side pixel, kernel tap, large-side pixel)` links of a strided, padded, dilated
/// window, as flat indices: tap `k` joins pixel `p` of the `small` grid to pixel
/// `p * stride + k * dilation - padding` of the `large` one where that lies inside it.
fn window_links(
    [kernel, stride, padding, dilation]: [(usize, usize); 4],
    small: (usize, usize),
    large: (usize, usize),
) -> Vec<(usize, usize, usize)> {
    let along = |p: usize, k: usize, axis: usize| {
        let [s, d, pad, len] = [stride, dilation, padding, large].map(|v| [v.0, v.1][axis]);
        (p * s + k * d).checked_sub(pad).filter(|&q| q < len)
    };
    let mut links = Vec::new();
    for (py, px) in (0..small.0).flat_map(|y| (0..small.1).map(move |x| (y, x))) {
        for (ky, kx) in (0..kernel.0).flat_map(|y| (0..kernel.1).map(move |x| (y, x))) {
            if let (Some(qy), Some(qx)) = (along(py, ky, 0), along(px, kx, 1)) {
                let (p, k, q) = (py * small.1 + px, ky * kernel.1 + kx, qy * large.1 + qx);
                links.push((p, k, q));
            }
        }
    }
    links
}

/// The gradients of the given tensors in `grads`, as plain vectors.
macro_rules! gradients {
    ($grads:expr, $($tensor:expr),+) => {
        [$($grads.get($tensor).as_vec()),+]
    };
}
pub(crate) use gradients;

/// Random input, weight and bias for `spec` on `n` images of `h x w`.
pub(crate) fn random_conv_inputs(
    rng: &mut ChaCha8Rng,
    spec: &impl ConvLike,
    (n, h, wd): (usize, usize, usize),
) -> [Vec<f32>; 3] {
    let (cin, cout) = spec.channels();
    let x = random(rng, n * cin * h * wd);
    let w = random(rng, spec.weight_len());
    [x, w, random(rng, cout)]
}

/// Runs the op without a tape on plain data.
pub(crate) fn run_conv(
    spec: &impl ConvLike,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (n, h, wd): (usize, usize, usize),
) -> Vec<f32> {
    let dev = Cpu::default();
    let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.to_vec(), (n, spec.channels().0, h, wd));
    let wt = dev.tensor_from_vec(w.to_vec(), (w.len(),));
    let bt = b.map(|b| dev.tensor_from_vec(b.to_vec(), (b.len(),)));
    spec.apply(xt, &wt, bt.as_ref()).as_vec()
}

/// The op on random inputs for `spec` against its definition in plain loops with f64 sums,
/// with a bias and without: a convolution gathers each output pixel from the input pixels its
/// window covers, a transposed one scatters each input pixel over the output pixels its window
/// covers, both through the same links. Each input channel meets each output channel of its
/// group.
pub(crate) fn check_against_naive(
    rng: &mut ChaCha8Rng,
    spec: &impl ConvLike,
    (n, h, wd): (usize, usize, usize),
    tol: f32,
) {
    let [x, w, b] = random_conv_inputs(rng, spec, (n, h, wd));
    let (oh, ow) = spec.output_size(h, wd);
    let ((cin, cout), g) = (spec.channels(), spec.groups());
    let (cgi, cgo) = (cin / g, cout / g);
    let window = spec.window();
    let taps = window[0].0 * window[0].1;
    // As (input pixel, tap, output pixel).
    let links: Vec<_> = match spec.transposed() {
        true => window_links(window, (h, wd), (oh, ow)),
        false => window_links(window, (oh, ow), (h, wd))
            .into_iter()
            .map(|(o, k, i)| (i, k, o))
            .collect(),
    };
    let (in_len, out_len) = (h * wd, oh * ow);
    let naive = |bias: Option<&[f32]>| {
        let mut y = vec![0.0f64; n * cout * out_len];
        for (i, o) in (0..n).flat_map(|i| (0..cout).map(move |o| (i, o))) {
            let bias = bias.map_or(0.0, |b| b[o] as f64);
            y[(i * cout + o) * out_len..][..out_len].fill(bias);
        }
        for i in 0..n {
            for (c, o) in (0..cin).flat_map(|c| (0..cgo).map(move |co| (c, c / cgi * cgo + co))) {
                // Weights are `[out][in / groups][kh][kw]`, transposed ones `[in][out / groups]..`.
                let at = match spec.transposed() {
                    true => (c * cgo + o % cgo) * taps,
                    false => (o * cgi + c % cgi) * taps,
                };
                let (xs, ys) = ((i * cin + c) * in_len, (i * cout + o) * out_len);
                for &(p, k, q) in &links {
                    y[ys + q] += x[xs + p] as f64 * w[at + k] as f64;
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect::<Vec<_>>()
    };
    for bias in [Some(&b[..]), None] {
        let got = run_conv(spec, &x, &w, bias, (n, h, wd));
        let label = format!("{spec:?} with bias: {}", bias.is_some());
        assert_close(&label, &got, &naive(bias), tol);
    }
}

/// The op's gradients for input, weight and bias against finite differences.
pub(crate) fn check_conv_gradients(spec: impl ConvLike, dims: (usize, usize, usize), seed: u64) {
    let dev = Cpu::default();
    let mut rng = rng(seed);
    let (n, h, wd) = dims;
    let (oh, ow) = spec.output_size(h, wd);
    let (cin, cout) = spec.channels();
    let [x, w, b] = random_conv_inputs(&mut rng, &spec, dims);
    let r = random(&mut rng, n * cout * oh * ow);
    let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), (n, cin, h, wd));
    let wt = dev.tensor_from_vec(w.clone(), (w.len(),));
    let bt = dev.tensor_from_vec(b.clone(), (b.len(),));
    let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), (n, cout, oh, ow));
    let y = spec.apply(xt.leaky_trace(), &wt, Some(&bt));
    let grads = (y * rt).sum().backward();
    let analytic = gradients!(grads, &xt, &wt, &bt);
    check_finite_differences(&format!("{spec:?}"), &[x, w, b], &analytic, &r, |p| {
        run_conv(&spec, &p[0], &p[1], Some(&p[2]), dims)
    });
}

/// The bound on `|bf16 product - exact product|` for one output element whose terms' absolute
/// values sum to `abs_sum` over an inner dimension of `k`.
///
/// Rounding to bf16 (8 significant bits) moves each input by at most half a unit in the last
/// place, 2^-8 of itself, so each product `a·b` by at most `(2^-7 + 2^-16)·|a·b|`; the product
/// of two bf16 is exact in f32,
/// and each of the `k` additions in f32 rounds by at most 2^-24 of a partial sum, itself at
/// most (a little over) `abs_sum`. Relative to the sum of absolute terms, not to the result:
/// where terms cancel, the result's own relative error can be larger.
pub(crate) fn bf16_bound(abs_sum: f64, k: usize) -> f64 {
    abs_sum * (2f64.powi(-7) + 2f64.powi(-16) + (k as f64 + 1.0) * 2f64.powi(-24))
}

/// The kernels of bf16 this CPU runs; prints which it cannot, once per test.
pub(crate) fn bf16_kernels(test: &str) -> Vec<crate::ProductKernel> {
    let (have, lack): (Vec<_>, Vec<_>) = [
        crate::ProductKernel::AmxBf16,
        crate::ProductKernel::Avx512Bf16,
    ]
    .into_iter()
    .partition(|k| k.available());
    for k in lack {
        println!("{test}: skipped {} (this CPU lacks it)", k.name());
    }
    have
}

/// A convolution-like op on `kernel` against its exact (f64) definition, forward and backward
/// (`L = Σ y · r`), every element of `y`, `dL/dx` and `dL/dW` within [`bf16_bound`] of the sums
/// of its absolute terms; `dL/db` and the bias, added in f32, to f32 rounding. Also checks the
/// output is not f32's bit for bit, so that the bf16 path is the one tested.
pub(crate) fn check_bf16_conv(
    spec: &impl ConvLike,
    (n, h, wd): (usize, usize, usize),
    kernel: crate::ProductKernel,
    seed: u64,
) {
    let dev = Cpu::default();
    let mut rng = rng(seed);
    let [x, w, b] = random_conv_inputs(&mut rng, spec, (n, h, wd));
    let (oh, ow) = spec.output_size(h, wd);
    let ((cin, cout), g) = (spec.channels(), spec.groups());
    let r = random(&mut rng, n * cout * oh * ow);
    let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), (n, cin, h, wd));
    let wt = dev.tensor_from_vec(w.clone(), (w.len(),));
    let bt = dev.tensor_from_vec(b.clone(), (b.len(),));
    let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), (n, cout, oh, ow));
    let run = || {
        let y = spec.apply(xt.leaky_trace(), &wt, Some(&bt));
        let y_vals = y.as_vec();
        let grads = (y * rt.clone()).sum().backward();
        let [gx, gw, gb] = gradients!(grads, &xt, &wt, &bt);
        [y_vals, gx, gw, gb]
    };
    let [y, gx, gw, gb] = crate::with_kernel(kernel, run);
    let f32_y = crate::with_kernel(crate::ProductKernel::F32, run)[0].clone();
    let label = format!("{} {spec:?} on {n}x{h}x{wd}", kernel.name());
    assert!(y != f32_y, "{label}: the same bits as f32");

    // Exact sums and sums of absolute terms, with the number of terms, per element.
    let (cgi, cgo) = (cin / g, cout / g);
    let window = spec.window();
    let taps = window[0].0 * window[0].1;
    let links: Vec<_> = match spec.transposed() {
        true => window_links(window, (h, wd), (oh, ow)),
        false => window_links(window, (oh, ow), (h, wd))
            .into_iter()
            .map(|(o, k, i)| (i, k, o))
            .collect(),
    };
    let (in_len, out_len) = (h * wd, oh * ow);
    let mut ey = vec![(0.0f64, 0.0f64, 0usize); y.len()];
    let mut ex = vec![(0.0f64, 0.0f64, 0usize); x.len()];
    let mut ew = vec![(0.0f64, 0.0f64, 0usize); w.len()];
    let add = |e: &mut (f64, f64, usize), a: f32, b: f32| {
        let p = a as f64 * b as f64;
        *e = (e.0 + p, e.1 + p.abs(), e.2 + 1);
    };
    for i in 0..n {
        for (c, o) in (0..cin).flat_map(|c| (0..cgo).map(move |co| (c, c / cgi * cgo + co))) {
            let at = match spec.transposed() {
                true => (c * cgo + o % cgo) * taps,
                false => (o * cgi + c % cgi) * taps,
            };
            let (xs, ys) = ((i * cin + c) * in_len, (i * cout + o) * out_len);
            for &(p, k, q) in &links {
                add(&mut ey[ys + q], x[xs + p], w[at + k]);
                add(&mut ex[xs + p], w[at + k], r[ys + q]);
                add(&mut ew[at + k], x[xs + p], r[ys + q]);
            }
        }
    }
    let check = |what: &str,
                 got: &[f32],
                 exact: &[(f64, f64, usize)],
                 extra: &dyn Fn(usize) -> (f64, f64)| {
        for (e, (&v, &(sum, abs, k))) in got.iter().zip(exact).enumerate() {
            let (shift, slack) = extra(e);
            let err = (v as f64 - shift - sum).abs();
            let bound = bf16_bound(abs, k) + slack;
            assert!(
                err <= bound,
                "{label}: {what}[{e}] = {v}, exact {}: error {err:e} over the bound {bound:e}",
                sum + shift
            );
        }
    };
    // The bias is added to f32 sums: one more f32 rounding.
    let f32_ulp = 2f64.powi(-24);
    check("y", &y, &ey, &|e| {
        let bias = b[e / out_len % cout] as f64;
        (bias, (bias.abs() + ey[e].1) * 2.0 * f32_ulp)
    });
    check("dL/dx", &gx, &ex, &|_| (0.0, 0.0));
    check("dL/dW", &gw, &ew, &|_| (0.0, 0.0));
    for (o, &got) in gb.iter().enumerate() {
        let rows = (0..n).map(|i| &r[(i * cout + o) * out_len..][..out_len]);
        let (sum, abs) = rows.flatten().fold((0.0f64, 0.0f64), |(s, a), &v| {
            (s + v as f64, a + v.abs() as f64)
        });
        let bound = abs * (n * out_len + 1) as f64 * f32_ulp;
        assert!(
            (got as f64 - sum).abs() <= bound,
            "{label}: dL/db[{o}] = {got}, exact {sum}"
        );
    }
}
