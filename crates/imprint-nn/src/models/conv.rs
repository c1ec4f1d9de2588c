//! Convolutional nets: convolutions (ReLU) with `channels[i]` filters each, then a linear map to
//! the latent code; the decoder mirrors them with transposed convolutions. Named as PyTorch's
//! `nn.Sequential(Conv2d, ReLU, ..., Flatten, Linear)` (`encoder.0`, `encoder.2`, ...,
//! `encoder.{2n+1}`) and `nn.Sequential(Linear, ReLU, Unflatten, ConvTranspose2d, ReLU, ...)`
//! (`decoder.0`, `decoder.3`, `decoder.5`, ...).

use super::{linear_parameters, Activations, Kind, Net, ZERO_WIDTH};
use crate::layers::{Conv2d, ConvTranspose2d, Layer, Linear, Sequential};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use imprint_ops::{Conv2dSpec, ConvTranspose2dSpec};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Convolutions (ReLU) with `channels[i]` filters each, then a linear map to `latent`; the
/// decoder mirrors it with transposed convolutions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvNet {
    pub channels: Vec<usize>,
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    #[serde(default = "default_stride")]
    pub stride: usize,
    pub latent: usize,
}

fn default_kernel() -> usize {
    3
}
fn default_stride() -> usize {
    2
}

/// Each convolution's spec and the shape it maps from, then the shape the last one maps to.
type Stages = (Vec<(Conv2dSpec, ImageShape)>, ImageShape);

impl ConvNet {
    /// Each convolution's spec and the (channels, height, width) it maps from, then the shape
    /// the last one maps to; an error names the first convolution that does not fit.
    fn stages(&self, input: ImageShape) -> Result<Stages, String> {
        let mut shape = input;
        let mut stages = Vec::new();
        for &c in &self.channels {
            let spec = Conv2dSpec::new(shape.channels, c, self.kernel)
                .stride(self.stride)
                .padding(self.kernel / 2);
            let (h, w) = spec
                .output_size_checked(shape.height, shape.width)
                .map_err(|e| {
                    format!(
                        "a convolution with {c} filters does not fit {}x{} images: {e}",
                        shape.height, shape.width
                    )
                })?;
            stages.push((spec, shape));
            shape = ImageShape {
                channels: c,
                height: h,
                width: w,
            };
        }
        Ok((stages, shape))
    }
}

impl Kind for ConvNet {
    fn latent(&self) -> usize {
        self.latent
    }

    fn check_widths(&self) -> Result<(), String> {
        let c = &self.channels;
        match self.latent > 0
            && !c.is_empty()
            && !c.contains(&0)
            && self.kernel > 0
            && self.stride > 0
        {
            true => Ok(()),
            false => Err(ZERO_WIDTH.into()),
        }
    }

    // The last maps are flattened into a linear layer of one size.
    fn any_size(&self) -> bool {
        false
    }

    fn fits(&self, input: ImageShape) -> Result<(), String> {
        self.stages(input).map(drop)
    }

    fn describe(&self, input: ImageShape) -> String {
        let s: Vec<String> = self.channels.iter().map(|d| d.to_string()).collect();
        let (kernel, stride, latent) = (self.kernel, self.stride, self.latent);
        format!(
            "conv {input} -> {} (kernel {kernel}, stride {stride}) -> linear {latent}",
            s.join("-")
        )
    }

    fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        let (stages, last) = self.stages(input).ok()?;
        let convs: u128 = stages
            .iter()
            .map(|(s, _)| s.weight_len() as u128 + s.out_channels as u128)
            .sum();
        Some(2 * (convs + linear_parameters(last.len(), self.latent)))
    }

    fn widest(&self, input: ImageShape) -> usize {
        let Ok((stages, last)) = self.stages(input) else {
            return 0;
        };
        let maps = stages.iter().map(|(_, s)| s.len()).chain([last.len()]);
        maps.max().unwrap_or(0).max(self.latent)
    }

    fn widest_row(&self, input: ImageShape) -> usize {
        self.stages(input)
            .map_or(0, |(_, last)| last.len())
            .max(self.latent)
    }

    fn activations(&self, input: ImageShape) -> Option<Activations> {
        let (stages, last) = self.stages(input).ok()?;
        let mut a = Activations::default();
        // The input and the decoder's output; each convolution's and ReLU's outputs, on the
        // way in and (transposed) on the way back; the code.
        a.add(input.len() as u128, 2)?;
        for (_, from) in stages.iter().skip(1) {
            a.add(from.len() as u128, 4)?;
        }
        a.add(last.len() as u128, 4)?;
        a.add(self.latent as u128, 1)?;
        Some(a)
    }

    fn encoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        let (stages, last) = self.stages(shape)?;
        let mut layers = Vec::new();
        for (spec, _) in stages {
            layers.push(Layer::Conv2d(Conv2d::new(dev, spec, rng)));
            layers.push(Layer::Relu);
        }
        layers.push(Layer::Flatten);
        let head = Linear::new(dev, last.len(), self.latent, rng);
        layers.push(Layer::Linear(head));
        Ok(Sequential::indexed(layers))
    }

    fn decoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        let (stages, start) = self.stages(shape)?;
        // Each transposed convolution undoes one convolution, back to its exact size. They draw
        // their init before the linear layer, as they always have (a checkpoint's seed keeps its
        // meaning).
        let convs: Vec<ConvTranspose2d<D>> = stages
            .iter()
            .rev()
            .map(|(s, from)| {
                let (h, w) = s.output_size(from.height, from.width);
                let natural =
                    |out: usize, k: usize, st: usize, p: usize| (out - 1) * st + k - 2 * p;
                let mut spec = ConvTranspose2dSpec::new(s.out_channels, s.in_channels, s.kernel.0)
                    .stride(s.stride.0)
                    .padding(s.padding.0);
                spec.output_padding = (
                    from.height - natural(h, s.kernel.0, s.stride.0, s.padding.0),
                    from.width - natural(w, s.kernel.1, s.stride.1, s.padding.1),
                );
                ConvTranspose2d::new(dev, spec, rng)
            })
            .collect();
        let mut layers = vec![
            Layer::Linear(Linear::new(dev, self.latent, start.len(), rng)),
            Layer::Relu,
            Layer::Unflatten(start),
        ];
        let last = convs.len().saturating_sub(1);
        for (i, conv) in convs.into_iter().enumerate() {
            layers.push(Layer::ConvTranspose2d(conv));
            if i < last {
                layers.push(Layer::Relu);
            }
        }
        Ok(Sequential::indexed(layers))
    }
}
