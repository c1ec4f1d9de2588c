//! Batch normalisation over channels (PyTorch's `nn.BatchNorm2d`): trainable scale and shift,
//! running statistics as buffers.

use super::Tensor4;
use crate::tree::{Kind, Var};
use crate::{params, ImprintDevice, Mode};
use dfdx::prelude::*;
use imprint_ops::{
    batch_norm2d_add_relu_train, batch_norm2d_eval, batch_norm2d_relu_train, batch_norm2d_train,
    TrainOutput,
};

/// PyTorch's defaults: `momentum = 0.1`, `eps = 1e-5`, scale 1, shift 0, running mean 0 and
/// variance 1. Tensor names follow PyTorch's (`weight`, `bias`, `running_mean`, `running_var`);
/// its `num_batches_tracked` counter steers nothing with a fixed momentum and is not kept.
#[derive(Clone, Debug)]
pub struct BatchNorm2d<D: ImprintDevice> {
    pub weight: Var<D>,
    pub bias: Var<D>,
    pub running_mean: Var<D>,
    pub running_var: Var<D>,
    pub momentum: f32,
    pub eps: f32,
}
params!(BatchNorm2d {
    weight,
    bias,
    running_mean,
    running_var
});

impl<D: ImprintDevice> BatchNorm2d<D> {
    pub fn new(dev: &D, channels: usize) -> Self {
        let filled = |v: f32, kind| Var::new(dev, vec![v; channels], &[channels], kind);
        Self {
            weight: filled(1.0, Kind::Param),
            bias: filled(0.0, Kind::Param),
            running_mean: filled(0.0, Kind::Buffer),
            running_var: filled(1.0, Kind::Buffer),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    pub fn channels(&self) -> usize {
        self.weight.len()
    }

    /// Training mode normalises with the batch's statistics and moves the running ones towards
    /// them as PyTorch does, `running = (1 - momentum) * running + momentum * batch`, where the
    /// batch variance entering `running_var` is the unbiased one (`var * m / (m - 1)` over the
    /// `m = n * h * w` values of a channel) while the normalisation uses the biased one. Eval
    /// mode normalises with the running statistics and updates nothing.
    pub fn forward<T: Tape<f32, D>>(&mut self, x: Tensor4<D, T>, mode: Mode) -> Tensor4<D, T> {
        match mode {
            Mode::Train => {
                let out = batch_norm2d_train(x, &self.weight.value, &self.bias.value, self.eps);
                self.tracked(out)
            }
            Mode::Eval => self.eval(x),
        }
    }

    /// `relu(forward(x))`, one fused op in training.
    pub fn forward_relu<T: Tape<f32, D>>(&mut self, x: Tensor4<D, T>, mode: Mode) -> Tensor4<D, T> {
        match mode {
            Mode::Train => {
                let out =
                    batch_norm2d_relu_train(x, &self.weight.value, &self.bias.value, self.eps);
                self.tracked(out)
            }
            Mode::Eval => self.eval(x).relu(),
        }
    }

    /// `relu(forward(x) + residual)`, the end of a residual block, one fused op in training.
    pub fn forward_add_relu<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Tensor4<D, T>,
        residual: Tensor4<D, T>,
        mode: Mode,
    ) -> Tensor4<D, T> {
        match mode {
            Mode::Train => {
                let out = batch_norm2d_add_relu_train(
                    x,
                    residual,
                    &self.weight.value,
                    &self.bias.value,
                    self.eps,
                );
                self.tracked(out)
            }
            Mode::Eval => (self.eval(x) + residual).relu(),
        }
    }

    fn eval<T: Tape<f32, D>>(&self, x: Tensor4<D, T>) -> Tensor4<D, T> {
        batch_norm2d_eval(
            x,
            &self.weight.value,
            &self.bias.value,
            &self.running_mean.value.as_vec(),
            &self.running_var.value.as_vec(),
            self.eps,
        )
        .expect("batch_norm2d failed on the device")
    }

    /// The output of a training-mode op, after moving the running statistics towards its
    /// batch's (over `m` values per channel: every replica's, when they are synchronised).
    fn tracked<T>(&mut self, out: std::result::Result<TrainOutput<D, T>, D::Err>) -> Tensor4<D, T> {
        let (y, mean, var, m) = out.expect("batch_norm2d failed on the device");
        let m = m as f32;
        let unbiased = m / (m - 1.0);
        let k = self.momentum;
        let blend = |running: &Var<D>, batch: &[f32], scale: f32| -> Vec<f32> {
            running
                .value
                .as_vec()
                .iter()
                .zip(batch)
                .map(|(r, b)| (1.0 - k) * r + k * b * scale)
                .collect()
        };
        let new_mean = blend(&self.running_mean, &mean, 1.0);
        let new_var = blend(&self.running_var, &var, unbiased);
        self.running_mean.set(new_mean);
        self.running_var.set(new_var);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::ParamsExt;

    fn batch(dev: &Cpu) -> Tensor4<Cpu> {
        let values: Vec<f32> = (0..2 * 3 * 2 * 2)
            .map(|i| (i as f32 * 0.7).sin() * 3.0 + 1.0)
            .collect();
        dev.tensor_from_vec(values, (2, 3, 2, 2))
    }

    /// PyTorch's update, by hand: channel 0 holds 8 values; its running statistics move a
    /// tenth of the way to their mean and unbiased variance.
    #[test]
    fn train_mode_updates_running_statistics_as_pytorch() {
        let dev = Cpu::default();
        let mut bn = BatchNorm2d::new(&dev, 3);
        let x = batch(&dev);
        let values = x.as_vec();
        let ch0: Vec<f32> = values
            .chunks(4)
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .flat_map(|(_, c)| c.to_vec())
            .collect();
        let mean = ch0.iter().sum::<f32>() / 8.0;
        let var = ch0.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 7.0;
        bn.forward(x.clone(), Mode::Train);
        let rm = bn.running_mean.value.as_vec()[0];
        let rv = bn.running_var.value.as_vec()[0];
        assert!((rm - 0.1 * mean).abs() < 1e-6, "{rm} vs {}", 0.1 * mean);
        assert!(
            (rv - (0.9 + 0.1 * var)).abs() < 1e-5,
            "{rv} vs {}",
            0.9 + 0.1 * var
        );
        // Eval mode then reads them and changes nothing.
        let before = bn.named_tensors("bn");
        let y = bn.forward(x, Mode::Eval).as_vec();
        assert_eq!(bn.named_tensors("bn"), before);
        let expect = (values[0] - rm) / (rv + 1e-5).sqrt();
        assert!((y[0] - expect).abs() < 1e-5, "{} vs {expect}", y[0]);
    }

    /// The fused forms give the plain form's outputs after ReLU (and the add) and move the
    /// running statistics exactly as it does.
    #[test]
    fn fused_forms_update_the_running_statistics_as_the_plain_one() {
        let dev = Cpu::default();
        let x = batch(&dev);
        let r: Tensor4<Cpu> = dev.tensor_from_vec(
            (0..24).map(|i| (i as f32 * 0.3).cos()).collect(),
            (2, 3, 2, 2),
        );
        let (mut plain, mut relu, mut add) = (
            BatchNorm2d::new(&dev, 3),
            BatchNorm2d::new(&dev, 3),
            BatchNorm2d::new(&dev, 3),
        );
        let y = plain.forward(x.clone(), Mode::Train);
        let fused = relu.forward_relu(x.clone(), Mode::Train);
        assert_eq!(fused.as_vec(), y.clone().relu().as_vec());
        let fused = add.forward_add_relu(x, r.clone(), Mode::Train);
        assert_eq!(fused.as_vec(), (y + r).relu().as_vec());
        for bn in [&relu, &add] {
            assert_eq!(bn.named_tensors("bn"), plain.named_tensors("bn"));
        }
    }

    #[test]
    fn running_statistics_are_buffers_named_as_pytorch() {
        let dev = Cpu::default();
        let mut bn = BatchNorm2d::new(&dev, 2);
        let names: Vec<String> = bn.vars("bn1").into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
        let trained: Vec<String> = bn
            .trainable_mut("bn1")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(trained, ["bn1.weight", "bn1.bias"]);
    }
}
