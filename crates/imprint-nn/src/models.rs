//! Autoencoder and classifier architectures chosen at run time. An [`Architecture`] is what a
//! checkpoint's sidecar records and what fine-tuning checks before loading an encoder; new kinds
//! (convolutional) are new variants, the rest of the toolkit sees only [`Encoder`]/[`Decoder`].

use crate::checkpoint::NamedTensor;
use crate::{Activation, ImprintDevice, Matrix, Mlp, Result, Vector};
use dfdx::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Fully connected: input pixels -> hidden widths (ReLU) -> latent (linear); the decoder mirrors it.
    Dense { hidden: Vec<usize>, latent: usize },
}

impl Architecture {
    pub fn latent(&self) -> usize {
        match self {
            Architecture::Dense { latent, .. } => *latent,
        }
    }

    pub fn describe(&self, input_len: usize) -> String {
        match self {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![input_len];
                dims.extend(hidden);
                dims.push(*latent);
                let s: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                format!("dense {}", s.join("-"))
            }
        }
    }
}

/// Maps flattened images `[batch, pixels]` to features `[batch, latent]`.
#[derive(Clone, Debug)]
pub struct Encoder<D: ImprintDevice> {
    pub architecture: Architecture,
    pub input_len: usize,
    net: Mlp<D>,
}

/// Maps features back to pixel logits (pre-sigmoid), `[batch, pixels]`.
#[derive(Clone, Debug)]
pub struct Decoder<D: ImprintDevice> {
    net: Mlp<D>,
}

impl<D: ImprintDevice> Encoder<D> {
    pub fn new(dev: &D, architecture: &Architecture, input_len: usize, rng: &mut impl Rng) -> Self {
        let net = match architecture {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![input_len];
                dims.extend(hidden);
                dims.push(*latent);
                Mlp::new(dev, &dims, Activation::Relu, Activation::Identity, rng)
            }
        };
        Self {
            architecture: architecture.clone(),
            input_len,
            net,
        }
    }

    /// `input_grad = false` when `x` is data.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>, input_grad: bool) -> Matrix<D, T> {
        self.net.forward(x, input_grad)
    }

    pub fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        self.net.params_mut()
    }

    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }

    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        self.net.named_tensors(prefix)
    }

    pub fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        self.net.load_named(prefix, tensors, source)
    }
}

impl<D: ImprintDevice> Decoder<D> {
    pub fn new(
        dev: &D,
        architecture: &Architecture,
        output_len: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let net = match architecture {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![*latent];
                dims.extend(hidden.iter().rev());
                dims.push(output_len);
                Mlp::new(dev, &dims, Activation::Relu, Activation::Identity, rng)
            }
        };
        Self { net }
    }

    pub fn forward<T: Tape<f32, D>>(&self, z: Matrix<D, T>) -> Matrix<D, T> {
        self.net.forward(z, true)
    }

    pub fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        self.net.params_mut()
    }

    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        self.net.named_tensors(prefix)
    }

    pub fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        self.net.load_named(prefix, tensors, source)
    }
}
