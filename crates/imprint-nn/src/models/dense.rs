//! Fully connected nets: input pixels -> hidden widths (ReLU) -> latent (linear), and the
//! mirrored decoder. Named as a PyTorch `nn.Sequential` of `Linear` and `ReLU`, so the linear
//! layers sit at the even indices (`encoder.0`, `encoder.2`, ...).

use super::{linear_parameters, Activations, Kind, Net, ZERO_WIDTH};
use crate::layers::{Layer, Linear, Sequential};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Fully connected: input pixels -> hidden widths (ReLU) -> latent (linear); the decoder
/// mirrors it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNet {
    pub hidden: Vec<usize>,
    pub latent: usize,
}

impl DenseNet {
    /// Input pixels, hidden widths, latent.
    fn widths(&self, input: ImageShape) -> Vec<usize> {
        let mut dims = vec![input.len()];
        dims.extend(&self.hidden);
        dims.push(self.latent);
        dims
    }
}

impl Kind for DenseNet {
    fn latent(&self) -> usize {
        self.latent
    }

    fn check_widths(&self) -> Result<(), String> {
        match self.latent > 0 && !self.hidden.contains(&0) {
            true => Ok(()),
            false => Err(ZERO_WIDTH.into()),
        }
    }

    fn any_size(&self) -> bool {
        false
    }

    fn fits(&self, _input: ImageShape) -> Result<(), String> {
        Ok(())
    }

    fn describe(&self, input: ImageShape) -> String {
        let s: Vec<String> = self.widths(input).iter().map(|d| d.to_string()).collect();
        format!("dense {}", s.join("-"))
    }

    fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        let dims = self.widths(input);
        // Encoder and mirrored decoder.
        let one_way: u128 = dims.windows(2).map(|w| linear_parameters(w[0], w[1])).sum();
        Some(2 * one_way)
    }

    fn widest(&self, input: ImageShape) -> usize {
        self.widths(input).into_iter().max().unwrap_or(0)
    }

    fn widest_row(&self, input: ImageShape) -> usize {
        self.widest(input)
    }

    fn activations(&self, input: ImageShape) -> Option<Activations> {
        let dims = self.widths(input);
        let mut a = Activations::default();
        // The input and the decoder's output; each hidden layer's linear and ReLU outputs, on
        // the way in and on the way back; the code.
        a.add(dims[0] as u128, 2)?;
        for &h in &dims[1..dims.len() - 1] {
            a.add(h as u128, 4)?;
        }
        a.add(self.latent as u128, 1)?;
        Some(a)
    }

    fn encoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        Ok(mlp(dev, &self.widths(shape), rng))
    }

    fn decoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        let mut dims = self.widths(shape);
        dims.reverse();
        Ok(mlp(dev, &dims, rng))
    }
}

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
