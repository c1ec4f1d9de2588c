//! The bottleneck residual block of ResNet-50/101/152 and Wide ResNet-50-2, as torchvision
//! defines it (its "v1.5": the stride sits on the 3x3 convolution, not on the first 1x1):
//! `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))`, where `conv1`
//! and `conv3` are 1x1 and `downsample` is a strided 1x1 convolution and batch norm wherever the
//! block changes size or width.

use super::{BatchNorm2d, Conv2d, Tensor4};
use crate::tree::{join, Params, Var};
use crate::{ImprintDevice, Pass};
use dfdx::prelude::*;

#[derive(Clone, Debug)]
pub struct Bottleneck<D: ImprintDevice> {
    pub conv1: Conv2d<D>,
    pub bn1: BatchNorm2d<D>,
    pub conv2: Conv2d<D>,
    pub bn2: BatchNorm2d<D>,
    pub conv3: Conv2d<D>,
    pub bn3: BatchNorm2d<D>,
    /// torchvision's `downsample`, named `.0` and `.1`; `None` for the identity.
    pub downsample: Option<Box<(Conv2d<D>, BatchNorm2d<D>)>>,
}

impl<D: ImprintDevice> Params<D> for Bottleneck<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        for (name, conv, bn) in [
            ("1", &self.conv1, &self.bn1),
            ("2", &self.conv2, &self.bn2),
            ("3", &self.conv3, &self.bn3),
        ] {
            conv.visit(&join(prefix, &format!("conv{name}")), f);
            bn.visit(&join(prefix, &format!("bn{name}")), f);
        }
        if let Some(projection) = &self.downsample {
            let (conv, bn) = &**projection;
            conv.visit(&join(prefix, "downsample.0"), f);
            bn.visit(&join(prefix, "downsample.1"), f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        for (name, conv, bn) in [
            ("1", &mut self.conv1, &mut self.bn1),
            ("2", &mut self.conv2, &mut self.bn2),
            ("3", &mut self.conv3, &mut self.bn3),
        ] {
            conv.visit_mut(&join(prefix, &format!("conv{name}")), f);
            bn.visit_mut(&join(prefix, &format!("bn{name}")), f);
        }
        if let Some(projection) = &mut self.downsample {
            let (conv, bn) = &mut **projection;
            conv.visit_mut(&join(prefix, "downsample.0"), f);
            bn.visit_mut(&join(prefix, "downsample.1"), f);
        }
    }
}

impl<D: ImprintDevice> Bottleneck<D> {
    pub fn forward<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Tensor4<D, T>,
        pass: &mut Pass,
    ) -> Tensor4<D, T> {
        let mode = pass.mode;
        // The shortcut reads a copy of the input under the same id, so the gradients of both
        // paths meet in the input's own.
        let skip = x.retaped::<T>();
        let h = self.bn1.forward_relu(self.conv1.forward(x, true), mode);
        let h = self.bn2.forward_relu(self.conv2.forward(h, true), mode);
        let h = self.conv3.forward(h, true);
        let skip = match &mut self.downsample {
            None => skip,
            Some(projection) => {
                let (conv, bn) = &mut **projection;
                bn.forward(conv.forward(skip, true), mode)
            }
        };
        self.bn3.forward_add_relu(h, skip, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::ParamsExt;
    use crate::Mode;
    use imprint_ops::Conv2dSpec;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A block from 3 to 8 channels through a width of 2, halving the size when `stride` is 2;
    /// scales, shifts and running statistics away from their defaults, so that their gradients
    /// and eval mode's use of them show.
    fn block(dev: &Cpu, stride: usize, rng: &mut ChaCha8Rng) -> Bottleneck<Cpu> {
        let conv = |from, to, k: usize, stride, rng: &mut ChaCha8Rng| {
            let spec = Conv2dSpec::new(from, to, k).stride(stride).padding(k / 2);
            Conv2d::he_without_bias(dev, spec, rng)
        };
        let mut b = Bottleneck {
            conv1: conv(3, 2, 1, 1, rng),
            bn1: BatchNorm2d::new(dev, 2),
            conv2: conv(2, 2, 3, stride, rng),
            bn2: BatchNorm2d::new(dev, 2),
            conv3: conv(2, 8, 1, 1, rng),
            bn3: BatchNorm2d::new(dev, 8),
            downsample: Some(Box::new((
                conv(3, 8, 1, stride, rng),
                BatchNorm2d::new(dev, 8),
            ))),
        };
        for (name, v) in b.vars_mut("") {
            let n = v.len();
            let ramp = |a: f32, step: f32| (0..n).map(|i| a + step * i as f32).collect();
            let batch_norm = name.contains("bn") || name.contains("downsample.1");
            if batch_norm && name.ends_with(".weight") {
                v.set(ramp(0.6, 0.1));
            } else if name.ends_with(".bias") {
                v.set(ramp(-0.15, 0.05));
            } else if name.ends_with("running_mean") {
                v.set(ramp(-0.3, 0.1));
            } else if name.ends_with("running_var") {
                v.set(ramp(0.5, 0.2));
            }
        }
        b
    }

    /// `Σ block(x) ⊙ r` and its gradient with respect to the input and every trainable tensor.
    fn loss_and_grads(
        b: &Bottleneck<Cpu>,
        x: &[f32],
        r: &[f32],
        mode: Mode,
    ) -> (f64, Vec<Vec<f32>>) {
        let dev = Cpu::default();
        let mut b = b.clone();
        let x: Tensor4<Cpu> = dev.tensor_from_vec(x.to_vec(), (2, 3, 5, 5));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let y = b.forward(x.leaky_trace(), &mut Pass::train(&mut rng).with_mode(mode));
        let weights: Tensor4<Cpu> = dev.tensor_from_vec(r.to_vec(), *y.shape());
        let loss = (y * weights).sum::<(), _>();
        let value = loss.as_vec()[0] as f64;
        let grads = loss.backward();
        let mut out = vec![grads.get(&x).as_vec()];
        for (_, v) in b.trainable_mut("") {
            out.push(grads.get(&*v).as_vec());
        }
        (value, out)
    }

    /// Central differences of `loss` at two step sizes (large enough for the f32 loss's
    /// rounding): the derivative where they agree (no ReLU kink within reach), `None` where
    /// they do not.
    fn smooth_derivative(loss: impl Fn(f32) -> f64) -> Option<f64> {
        let at = |eps: f32| (loss(eps) - loss(-eps)) / (2.0 * eps as f64);
        let (coarse, fine) = (at(4e-3), at(2e-3));
        ((coarse - fine).abs() < 5e-3 + 1e-2 * fine.abs()).then_some(fine)
    }

    /// With and without a change of size, on batch statistics (training) and on running ones
    /// (eval): the input's gradient and every trainable tensor's match central differences
    /// wherever the loss is smooth, which it is at most of the points checked.
    #[test]
    fn bottleneck_gradients_match_finite_differences() {
        let dev = Cpu::default();
        for (stride, mode) in [1, 2]
            .into_iter()
            .flat_map(|s| [Mode::Train, Mode::Eval].map(|m| (s, m)))
        {
            let mut rng = ChaCha8Rng::seed_from_u64(stride as u64);
            let b = block(&dev, stride, &mut rng);
            let x: Vec<f32> = (0..2 * 3 * 25).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let side = if stride == 2 { 3 } else { 5 };
            let r: Vec<f32> = (0..2 * 8 * side * side)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            let (_, analytic) = loss_and_grads(&b, &x, &r, mode);
            let (mut checked, mut kinked) = (0, 0);
            let mut check = |what: &str, numeric: Option<f64>, got: f32| {
                checked += 1;
                let Some(numeric) = numeric else {
                    kinked += 1;
                    return;
                };
                let got = got as f64;
                assert!(
                    (numeric - got).abs() < 5e-3 + 1e-2 * numeric.abs(),
                    "stride {stride}, {mode:?}: {what}: analytic {got}, numeric {numeric}"
                );
            };
            for i in (0..x.len()).step_by(5) {
                let numeric = smooth_derivative(|d| {
                    let mut x = x.clone();
                    x[i] += d;
                    loss_and_grads(&b, &x, &r, mode).0
                });
                check(&format!("input {i}"), numeric, analytic[0][i]);
            }
            let names: Vec<String> = b
                .clone()
                .trainable_mut("")
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(
                names.len(),
                12,
                "4 convolutions, 4 batch norms' scales and shifts"
            );
            for (k, name) in names.iter().enumerate() {
                for i in [0, 1] {
                    let numeric = smooth_derivative(|d| {
                        let mut b = b.clone();
                        let (_, v) = b
                            .trainable_mut("")
                            .into_iter()
                            .find(|(n, _)| n == name)
                            .unwrap();
                        let mut values = v.as_vec();
                        values[i] += d;
                        v.copy_from(&values);
                        loss_and_grads(&b, &x, &r, mode).0
                    });
                    check(&format!("{name}[{i}]"), numeric, analytic[k + 1][i]);
                }
            }
            assert!(
                kinked * 5 <= checked,
                "stride {stride}, {mode:?}: {kinked} of {checked} points at a kink"
            );
        }
    }

    #[test]
    fn names_follow_torchvision() {
        let dev = Cpu::default();
        let b = block(&dev, 2, &mut ChaCha8Rng::seed_from_u64(0));
        let names: Vec<String> = b.vars("layer2.0").into_iter().map(|(n, _)| n).collect();
        for want in [
            "layer2.0.conv1.weight",
            "layer2.0.bn2.running_var",
            "layer2.0.conv3.weight",
            "layer2.0.bn3.bias",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean",
        ] {
            assert!(names.contains(&want.to_string()), "{want} in {names:?}");
        }
    }
}
