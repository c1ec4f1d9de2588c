//! Adam over parameter groups, each with its own settings (e.g. a smaller learning rate for a
//! pre-trained encoder than for a fresh head). The update itself is dfdx's Adam kernel.

use crate::{NnError, Result, Vector};
use dfdx::prelude::*;
pub use dfdx::tensor_ops::{AdamConfig, WeightDecay};

/// Parameters updated with one configuration.
pub struct ParamGroup<'a, D: Device<f32>> {
    pub config: AdamConfig,
    pub params: Vec<&'a mut Vector<D>>,
}

/// Adam moments for every parameter it has seen, keyed by tensor identity.
pub struct Adam<D: Device<f32>> {
    step: i32,
    moment1: Gradients<f32, D>,
    moment2: Gradients<f32, D>,
}

impl<D: Device<f32>> Default for Adam<D> {
    fn default() -> Self {
        Self {
            step: 0,
            moment1: Gradients::leaky(),
            moment2: Gradients::leaky(),
        }
    }
}

impl<D: Device<f32>> Adam<D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One update of every parameter in `groups` from `grads`; a parameter without a gradient
    /// (frozen, or unused this step) is left as it is.
    pub fn step(
        &mut self,
        groups: &mut [ParamGroup<'_, D>],
        grads: &mut Gradients<f32, D>,
    ) -> Result<()> {
        self.step += 1;
        for group in groups.iter_mut() {
            let cfg = group.config;
            for param in group.params.iter_mut() {
                let grad = grads.get_or_alloc_mut(&**param).map_err(NnError::device)?;
                let m1 = self
                    .moment1
                    .get_or_alloc_mut(&**param)
                    .map_err(NnError::device)?;
                let m2 = self
                    .moment2
                    .get_or_alloc_mut(&**param)
                    .map_err(NnError::device)?;
                cfg.try_update(self.step, param, m1, m2, grad)
                    .map_err(NnError::device)?;
            }
        }
        Ok(())
    }
}

/// Adam settings in PyTorch's terms: `weight_decay` is decoupled (AdamW) when `decoupled`.
pub fn adam_config(lr: f64, weight_decay: f64, decoupled: bool) -> AdamConfig {
    AdamConfig {
        lr,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: match (weight_decay > 0.0, decoupled) {
            (false, _) => None,
            (true, true) => Some(WeightDecay::Decoupled(weight_decay)),
            (true, false) => Some(WeightDecay::L2(weight_decay)),
        },
    }
}
