//! The basic residual block of ResNet-18/34 and the CIFAR ResNets (He et al. 2016):
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.

use super::{BatchNorm2d, Conv2d, Tensor4};
use crate::tree::{join, Params, Var};
use crate::{ImprintDevice, Pass};
use dfdx::prelude::*;
use imprint_ops::subsample_pad_channels;

/// How the block's input reaches its sum when the block changes the size or the width.
#[derive(Clone, Debug)]
pub enum Shortcut<D: ImprintDevice> {
    /// The input itself (same size and width).
    Identity,
    /// Option A: every `stride`-th pixel, with zero channels added before and after.
    Pad {
        stride: usize,
        channels: (usize, usize),
    },
    /// Option B: a strided 1x1 convolution and batch norm, named `.0` and `.1`.
    Project(Box<(Conv2d<D>, BatchNorm2d<D>)>),
}

#[derive(Clone, Debug)]
pub struct BasicBlock<D: ImprintDevice> {
    pub conv1: Conv2d<D>,
    pub bn1: BatchNorm2d<D>,
    pub conv2: Conv2d<D>,
    pub bn2: BatchNorm2d<D>,
    pub shortcut: Shortcut<D>,
    /// What checkpoints call the shortcut: `shortcut` (CIFAR nets) or `downsample`
    /// (torchvision's).
    pub shortcut_name: &'static str,
}

impl<D: ImprintDevice> Params<D> for BasicBlock<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        self.conv1.visit(&join(prefix, "conv1"), f);
        self.bn1.visit(&join(prefix, "bn1"), f);
        self.conv2.visit(&join(prefix, "conv2"), f);
        self.bn2.visit(&join(prefix, "bn2"), f);
        if let Shortcut::Project(projection) = &self.shortcut {
            let (conv, bn) = &**projection;
            let at = join(prefix, self.shortcut_name);
            conv.visit(&join(&at, "0"), f);
            bn.visit(&join(&at, "1"), f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        self.conv1.visit_mut(&join(prefix, "conv1"), f);
        self.bn1.visit_mut(&join(prefix, "bn1"), f);
        self.conv2.visit_mut(&join(prefix, "conv2"), f);
        self.bn2.visit_mut(&join(prefix, "bn2"), f);
        if let Shortcut::Project(projection) = &mut self.shortcut {
            let (conv, bn) = &mut **projection;
            let at = join(prefix, self.shortcut_name);
            conv.visit_mut(&join(&at, "0"), f);
            bn.visit_mut(&join(&at, "1"), f);
        }
    }
}

impl<D: ImprintDevice> BasicBlock<D> {
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
        let h = self.conv2.forward(h, true);
        let skip = match &mut self.shortcut {
            Shortcut::Identity => skip,
            Shortcut::Pad { stride, channels } => subsample_pad_channels(skip, *stride, *channels)
                .expect("shortcut failed on the device"),
            Shortcut::Project(projection) => {
                let (conv, bn) = &mut **projection;
                bn.forward(conv.forward(skip, true), mode)
            }
        };
        self.bn2.forward_add_relu(h, skip, mode)
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

    fn block(dev: &Cpu, project: bool, rng: &mut ChaCha8Rng) -> BasicBlock<Cpu> {
        let conv = |from, to, k, stride, rng: &mut ChaCha8Rng| {
            let pad = k / 2;
            Conv2d::he_without_bias(
                dev,
                Conv2dSpec::new(from, to, k).stride(stride).padding(pad),
                rng,
            )
        };
        let shortcut = if project {
            Shortcut::Project(Box::new((conv(2, 4, 1, 2, rng), BatchNorm2d::new(dev, 4))))
        } else {
            Shortcut::Pad {
                stride: 2,
                channels: (1, 1),
            }
        };
        let mut b = BasicBlock {
            conv1: conv(2, 4, 3, 2, rng),
            bn1: BatchNorm2d::new(dev, 4),
            conv2: conv(4, 4, 3, 1, rng),
            bn2: BatchNorm2d::new(dev, 4),
            shortcut,
            shortcut_name: "shortcut",
        };
        // Scales and shifts away from 1 and 0, so their gradients are exercised too, and running
        // statistics away from 0 and 1, so that eval mode's use of them shows.
        for (name, v) in b.vars_mut("") {
            if name.ends_with("bn1.weight") || name.ends_with("bn2.weight") {
                v.set((0..4).map(|i| 0.5 + 0.3 * i as f32).collect());
            } else if name.ends_with(".bias") {
                v.set((0..4).map(|i| 0.1 * i as f32 - 0.15).collect());
            } else if name.ends_with("running_mean") {
                v.set((0..4).map(|i| 0.2 * i as f32 - 0.3).collect());
            } else if name.ends_with("running_var") {
                v.set((0..4).map(|i| 0.5 + 0.4 * i as f32).collect());
            }
        }
        b
    }

    /// `Σ block(x) ⊙ r` with the block in `mode` (batch statistics in training, the running
    /// ones in eval), and its gradient with respect to the input and every trainable tensor.
    fn loss_and_grads(
        b: &BasicBlock<Cpu>,
        x: &[f32],
        r: &[f32],
        mode: Mode,
    ) -> (f64, Vec<Vec<f32>>) {
        let dev = Cpu::default();
        let mut b = b.clone();
        let x: Tensor4<Cpu> = dev.tensor_from_vec(x.to_vec(), (2, 2, 5, 5));
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

    /// Both shortcuts, with batch norm on batch statistics (training) and on running ones
    /// (eval, as `finetune.freeze_bn` trains): every gradient matches central finite
    /// differences of the loss.
    #[test]
    fn block_gradients_match_finite_differences() {
        let dev = Cpu::default();
        for (project, mode) in [false, true]
            .into_iter()
            .flat_map(|p| [Mode::Train, Mode::Eval].map(|m| (p, m)))
        {
            let mut rng = ChaCha8Rng::seed_from_u64(if project { 1 } else { 2 });
            let b = block(&dev, project, &mut rng);
            let x: Vec<f32> = (0..100).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let r: Vec<f32> = (0..2 * 4 * 3 * 3)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            let (_, analytic) = loss_and_grads(&b, &x, &r, mode);
            // Small enough that no step crosses a ReLU's kink at these seeds (1e-2 did once).
            let eps = 1e-3f32;
            // The input's gradient, element by element.
            for i in (0..x.len()).step_by(7) {
                let shifted = |d: f32| {
                    let mut x = x.clone();
                    x[i] += d;
                    loss_and_grads(&b, &x, &r, mode).0
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                let got = analytic[0][i] as f64;
                assert!(
                    (numeric - got).abs() < 5e-3 + 1e-2 * numeric.abs(),
                    "project {project}, {mode:?}: input {i}: analytic {got}, numeric {numeric}"
                );
            }
            // Each trainable tensor, a few elements each.
            let names: Vec<String> = b
                .clone()
                .trainable_mut("")
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            for (k, name) in names.iter().enumerate() {
                for i in [0, 3] {
                    let shifted = |d: f32| {
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
                    };
                    let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                    let got = analytic[k + 1][i] as f64;
                    assert!(
                        (numeric - got).abs() < 5e-3 + 1e-2 * numeric.abs(),
                        "project {project}, {mode:?}: {name}[{i}]: analytic {got}, numeric {numeric}"
                    );
                }
            }
        }
    }

    #[test]
    fn shortcut_names_follow_the_layout() {
        let dev = Cpu::default();
        let mut b = block(&dev, true, &mut ChaCha8Rng::seed_from_u64(0));
        let names: Vec<String> = b.vars("layer2.0").into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"layer2.0.shortcut.0.weight".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"layer2.0.shortcut.1.running_var".to_string()));
        b.shortcut_name = "downsample";
        let names: Vec<String> = b.vars("layer2.0").into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"layer2.0.downsample.1.weight".to_string()),
            "{names:?}"
        );
        // Option A has no tensors of its own.
        let a = block(&dev, false, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(a.vars("").iter().all(|(n, _)| !n.contains("shortcut")));
    }
}
