//! Fully connected nets: input pixels -> hidden widths (ReLU) -> latent (linear), and the
//! mirrored decoder. Named as a PyTorch `nn.Sequential` of `Linear` and `ReLU`, so the linear
//! layers sit at the even indices (`encoder.0`, `encoder.2`, ...).

use crate::layers::{Layer, Linear, Sequential};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use rand::Rng;

/// `dims[0] -> dims[1] -> ...`, ReLU between the linear layers, none after the last.
pub fn mlp<D: ImprintDevice>(dev: &D, dims: &[usize], rng: &mut impl Rng) -> Sequential<D> {
    let n = dims.len().saturating_sub(1);
    let mut layers = Vec::new();
    for i in 0..n {
        layers.push(Layer::Linear(Linear::new(dev, dims[i], dims[i + 1], rng)));
        if i + 1 < n {
            layers.push(Layer::Relu);
        }
    }
    Sequential::indexed(layers)
}

pub(super) fn encoder<D: ImprintDevice>(
    dev: &D,
    input: ImageShape,
    hidden: &[usize],
    latent: usize,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let mut dims = vec![input.len()];
    dims.extend(hidden);
    dims.push(latent);
    mlp(dev, &dims, rng)
}

pub(super) fn decoder<D: ImprintDevice>(
    dev: &D,
    output: ImageShape,
    hidden: &[usize],
    latent: usize,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let mut dims = vec![latent];
    dims.extend(hidden.iter().rev());
    dims.push(output.len());
    mlp(dev, &dims, rng)
}

pub(super) fn describe(input: ImageShape, hidden: &[usize], latent: usize) -> String {
    let mut dims = vec![input.len()];
    dims.extend(hidden);
    dims.push(latent);
    let s: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("dense {}", s.join("-"))
}
