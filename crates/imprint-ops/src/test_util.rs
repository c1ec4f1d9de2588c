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
    ($spec:ty, $op:path) => {
        impl ConvLike for $spec {
            fn channels(&self) -> (usize, usize) {
                (self.in_channels, self.out_channels)
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

conv_like!(crate::Conv2dSpec, crate::conv2d);
conv_like!(crate::ConvTranspose2dSpec, crate::conv_transpose2d);

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
    let analytic = [
        grads.get(&xt).as_vec(),
        grads.get(&wt).as_vec(),
        grads.get(&bt).as_vec(),
    ];
    check_finite_differences(&format!("{spec:?}"), &[x, w, b], &analytic, &r, |p| {
        run_conv(&spec, &p[0], &p[1], Some(&p[2]), dims)
    });
}
