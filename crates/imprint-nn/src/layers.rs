//! Dense layers and stacks with sizes chosen at run time.

use crate::checkpoint::NamedTensor;
use crate::{linear, Activation, ImprintDevice, Matrix, NnError, Result, Vector};
use dfdx::prelude::*;
use rand::distributions::{Distribution, Uniform};
use rand::Rng;
use std::collections::BTreeMap;

/// One fully connected layer, `act(x · Wᵀ + b)`, weight `[out, in]` as in PyTorch.
#[derive(Clone, Debug)]
pub struct Dense<D: ImprintDevice> {
    pub in_features: usize,
    pub out_features: usize,
    pub activation: Activation,
    pub weight: Vector<D>,
    pub bias: Vector<D>,
}

impl<D: ImprintDevice> Dense<D> {
    /// PyTorch's default init: weight and bias uniform in ±1/sqrt(in).
    pub fn new(
        dev: &D,
        in_features: usize,
        out_features: usize,
        activation: Activation,
        rng: &mut impl Rng,
    ) -> Self {
        let bound = 1.0 / (in_features as f32).sqrt();
        Self {
            in_features,
            out_features,
            activation,
            weight: uniform_vector(dev, in_features * out_features, bound, rng),
            bias: uniform_vector(dev, out_features, bound, rng),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>, input_grad: bool) -> Matrix<D, T> {
        linear(
            x,
            &self.weight,
            &self.bias,
            self.out_features,
            self.activation,
            input_grad,
        )
        .expect("linear forward failed on the device")
    }
}

/// A stack of dense layers: `dims[0] -> dims[1] -> ...`, `hidden` activation between layers and
/// `last` after the final one.
#[derive(Clone, Debug)]
pub struct Mlp<D: ImprintDevice> {
    pub layers: Vec<Dense<D>>,
}

impl<D: ImprintDevice> Mlp<D> {
    pub fn new(
        dev: &D,
        dims: &[usize],
        hidden: Activation,
        last: Activation,
        rng: &mut impl Rng,
    ) -> Self {
        let n = dims.len().saturating_sub(1);
        let layers = (0..n)
            .map(|i| {
                let act = if i + 1 == n { last } else { hidden };
                Dense::new(dev, dims[i], dims[i + 1], act, rng)
            })
            .collect();
        Self { layers }
    }

    /// `input_grad = false` when `x` is data, which needs no gradient.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>, input_grad: bool) -> Matrix<D, T> {
        self.layers
            .iter()
            .enumerate()
            .fold(x, |h, (i, layer)| layer.forward(h, input_grad || i > 0))
    }

    pub fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.weight, &mut l.bias])
            .collect()
    }

    /// Tensors named as in a PyTorch `nn.Sequential` of `Linear` and activation modules:
    /// `{prefix}.0.weight`, `{prefix}.0.bias`, `{prefix}.2.weight`, ... so `load_state_dict` takes
    /// them unchanged. Weights are `[out, in]`, row-major.
    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                [
                    NamedTensor {
                        name: format!("{prefix}.{}.weight", 2 * i),
                        shape: vec![l.out_features, l.in_features],
                        data: l.weight.as_vec(),
                    },
                    NamedTensor {
                        name: format!("{prefix}.{}.bias", 2 * i),
                        shape: vec![l.out_features],
                        data: l.bias.as_vec(),
                    },
                ]
            })
            .collect()
    }

    /// Copies weights from `tensors` into this stack, checking every name and shape; `source`
    /// names the checkpoint in errors.
    pub fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let shape = [layer.out_features, layer.in_features];
            load_param(
                tensors,
                &format!("{prefix}.{}.weight", 2 * i),
                &shape,
                &mut layer.weight,
                source,
            )?;
            let shape = [layer.out_features];
            load_param(
                tensors,
                &format!("{prefix}.{}.bias", 2 * i),
                &shape,
                &mut layer.bias,
                source,
            )?;
        }
        Ok(())
    }
}

/// Copies tensor `name` of `tensors` into `param`, refusing a missing tensor or another shape.
pub(crate) fn load_param<D: ImprintDevice>(
    tensors: &BTreeMap<String, NamedTensor>,
    name: &str,
    shape: &[usize],
    param: &mut Vector<D>,
    source: &str,
) -> Result<()> {
    let t = tensors.get(name).ok_or_else(|| NnError::Checkpoint {
        path: source.to_string(),
        message: format!("missing tensor `{name}` (architecture mismatch)"),
    })?;
    if t.shape != shape {
        return Err(NnError::Checkpoint {
            path: source.to_string(),
            message: format!(
                "tensor `{name}` has shape {:?}, the model needs {shape:?} (architecture mismatch)",
                t.shape
            ),
        });
    }
    param.copy_from(&t.data);
    Ok(())
}

/// `len` values uniform in ±`bound`: PyTorch's default init for linear and conv layers.
pub(crate) fn uniform_vector<D: ImprintDevice>(
    dev: &D,
    len: usize,
    bound: f32,
    rng: &mut impl Rng,
) -> Vector<D> {
    let dist = Uniform::new_inclusive(-bound, bound);
    dev.tensor_from_vec((0..len).map(|_| dist.sample(rng)).collect(), (len,))
}
