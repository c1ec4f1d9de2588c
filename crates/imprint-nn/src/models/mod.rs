//! Encoder and decoder architectures chosen at run time. An [`Architecture`] is what a
//! checkpoint's sidecar records and what fine-tuning checks before loading an encoder. Each kind
//! lives in a file of its own that builds its layers; the rest of the toolkit sees only
//! [`Encoder`] and [`Decoder`], which take and give flattened images `[batch, c*h*w]`.

mod conv;
mod dense;
mod resnet;

pub use dense::mlp;
pub use resnet::{Layout, ShortcutKind};

use crate::layers::{Act, Layer, Sequential};
use crate::params;
use crate::{ImprintDevice, Matrix, NnError, Pass, Result};
use dfdx::prelude::*;
use imprint_data::{ImageShape, Normalize};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Fully connected: input pixels -> hidden widths (ReLU) -> latent (linear); the decoder mirrors it.
    Dense { hidden: Vec<usize>, latent: usize },
    /// Convolutions (ReLU) with `channels[i]` filters each, then a linear map to `latent`; the
    /// decoder mirrors it with transposed convolutions.
    Conv {
        channels: Vec<usize>,
        #[serde(default = "default_kernel")]
        kernel: usize,
        #[serde(default = "default_stride")]
        stride: usize,
        latent: usize,
    },
    /// A residual net of basic blocks: `depth = 6n + 2` in the CIFAR layout (stages of 16, 32,
    /// 64 filters by default), 18 or 34 in the ImageNet layout (64-128-256-512); features are
    /// the global average of the last stage.
    Resnet {
        #[serde(default = "default_depth")]
        depth: usize,
        #[serde(default)]
        layout: Layout,
        /// Filters per stage; the layout's own when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        widths: Option<Vec<usize>>,
        /// `a` (the CIFAR nets' default) or `b` (the ImageNet layout's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shortcut: Option<ShortcutKind>,
    },
}

fn default_depth() -> usize {
    20
}
fn default_kernel() -> usize {
    3
}
fn default_stride() -> usize {
    2
}

impl Architecture {
    /// Width of the features the encoder gives.
    pub fn latent(&self) -> usize {
        match self {
            Architecture::Dense { latent, .. } | Architecture::Conv { latent, .. } => *latent,
            Architecture::Resnet { .. } => self.resnet().map_or(0, |p| p.features()),
        }
    }

    /// The checked plan of a ResNet (an error for any other kind of net).
    fn resnet(&self) -> std::result::Result<resnet::Plan, String> {
        match self {
            Architecture::Resnet {
                depth,
                layout,
                widths,
                shortcut,
            } => resnet::Plan::new(*depth, *layout, widths, *shortcut),
            _ => Err("not a ResNet".into()),
        }
    }

    /// Checks that every width, kernel and stride is at least 1.
    pub fn check_widths(&self) -> std::result::Result<(), String> {
        let widths_ok = match self {
            Architecture::Dense { hidden, latent } => *latent > 0 && !hidden.contains(&0),
            Architecture::Conv {
                channels,
                kernel,
                stride,
                latent,
            } => {
                *latent > 0
                    && !channels.is_empty()
                    && !channels.contains(&0)
                    && *kernel > 0
                    && *stride > 0
            }
            Architecture::Resnet { .. } => return self.resnet().map(drop),
        };
        if widths_ok {
            Ok(())
        } else {
            Err("layer widths, kernel and stride must be at least 1".into())
        }
    }

    /// Checks widths and that the layers fit images of `input`'s size.
    pub fn validate(&self, input: ImageShape) -> std::result::Result<(), String> {
        self.check_widths()?;
        if let Architecture::Conv {
            channels,
            kernel,
            stride,
            ..
        } = self
        {
            conv::stages(channels, *kernel, *stride, input)?;
        }
        if let Architecture::Resnet { .. } = self {
            self.resnet()?.levels(input)?;
        }
        Ok(())
    }

    pub fn describe(&self, input: ImageShape) -> String {
        match self {
            Architecture::Dense { hidden, latent } => dense::describe(input, hidden, *latent),
            Architecture::Conv {
                channels,
                kernel,
                stride,
                latent,
            } => conv::describe(input, channels, *kernel, *stride, *latent),
            Architecture::Resnet { depth, .. } => match self.resnet() {
                Ok(plan) => plan.describe(*depth, input),
                Err(_) => format!("ResNet-{depth}"),
            },
        }
    }

    /// Trainable values of the encoder and its decoder on images of `input`, counted without
    /// building them (so a mistyped width is caught before memory is asked for); `None` when
    /// the layers do not fit the images or the count overflows.
    pub fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        let linear = |i: usize, o: usize| (i as u128 + 1) * o as u128;
        match self {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![input.len()];
                dims.extend(hidden);
                dims.push(*latent);
                // Encoder and mirrored decoder.
                Some(2 * dims.windows(2).map(|w| linear(w[0], w[1])).sum::<u128>())
            }
            Architecture::Conv {
                channels,
                kernel,
                stride,
                latent,
            } => {
                let (stages, last) = conv::stages(channels, *kernel, *stride, input).ok()?;
                let convs: u128 = stages
                    .iter()
                    .map(|(s, _)| s.weight_len() as u128 + s.out_channels as u128)
                    .sum();
                Some(2 * (convs + linear(last.len(), *latent)))
            }
            Architecture::Resnet { .. } => {
                let plan = self.resnet().ok()?;
                let levels = plan.levels(input).ok()?;
                let last = levels.last()?;
                // The encoder's 3x3 convolutions dominate; the decoder adds a linear map back
                // to the last feature maps.
                let encoder = plan.conv_parameters(input.channels);
                Some(encoder + linear(plan.features(), last.len()) + encoder)
            }
        }
    }

    /// The validated architecture, or an error naming it and what does not fit.
    fn checked(&self, input: ImageShape) -> Result<()> {
        self.validate(input)
            .map_err(|m| NnError::Architecture(format!("{}: {m}", self.describe(input))))
    }

    /// The layers of the encoder (images of `shape` to features) or of the decoder (back to
    /// `shape`).
    fn layers<D: ImprintDevice>(
        &self,
        dev: &D,
        shape: ImageShape,
        side: Side,
        rng: &mut impl Rng,
    ) -> Result<Sequential<D>> {
        self.checked(shape)?;
        Ok(match self {
            Architecture::Dense { hidden, latent } => match side {
                Side::Encoder => dense::encoder(dev, shape, hidden, *latent, rng),
                Side::Decoder => dense::decoder(dev, shape, hidden, *latent, rng),
            },
            Architecture::Conv {
                channels,
                kernel,
                stride,
                latent,
            } => {
                let (stages, last) = conv::stages(channels, *kernel, *stride, shape)
                    .map_err(NnError::Architecture)?;
                match side {
                    Side::Encoder => conv::encoder(dev, &stages, last, *latent, rng),
                    Side::Decoder => conv::decoder(dev, &stages, last, *latent, rng),
                }
            }
            Architecture::Resnet { .. } => {
                let plan = self.resnet().map_err(NnError::Architecture)?;
                match side {
                    Side::Encoder => resnet::encoder(dev, &plan, shape, rng),
                    Side::Decoder => {
                        resnet::decoder(dev, &plan, shape, rng).map_err(NnError::Architecture)?
                    }
                }
            }
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Encoder,
    Decoder,
}

/// Maps flattened images `[batch, pixels]` to features `[batch, latent]`.
#[derive(Clone, Debug)]
pub struct Encoder<D: ImprintDevice> {
    pub architecture: Architecture,
    pub input: ImageShape,
    /// Applied to the images before the first layer (recorded in the sidecar's `preprocess`).
    pub normalize: Option<Normalize>,
    net: Sequential<D>,
}

params!(Encoder { net as _ });

impl<D: ImprintDevice> Encoder<D> {
    /// A fresh encoder, its init drawn from `rng`; errors when the architecture does not fit
    /// `input`.
    pub fn new(
        dev: &D,
        architecture: &Architecture,
        input: ImageShape,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        Ok(Self {
            net: architecture.layers(dev, input, Side::Encoder, rng)?,
            architecture: architecture.clone(),
            input,
            normalize: None,
        })
    }

    /// The same encoder reading images through `normalize`.
    pub fn normalized(self, normalize: Option<Normalize>) -> Self {
        Self { normalize, ..self }
    }

    /// Width of the features.
    pub fn features(&self) -> usize {
        self.architecture.latent()
    }

    /// The layers holding tensors, by name, from the input up (see [`Sequential::units`]).
    pub fn units(&self) -> Vec<String> {
        self.net.units("")
    }

    /// Features of the images `x` (data: no gradient flows back into it).
    pub fn forward<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Matrix<D, T>,
        pass: &mut Pass,
    ) -> Matrix<D, T> {
        let x = match &self.normalize {
            Some(n) => normalize(x, n, self.input),
            None => x,
        };
        let takes_maps = self.net.layers().next().is_some_and(Layer::takes_maps);
        let x = if takes_maps {
            Act::Maps(Act::Flat(x).into_maps(self.input))
        } else {
            Act::Flat(x)
        };
        self.net.forward(x, pass, false).into_flat()
    }

    /// The first convolution's filters `[filters, channels, kh, kw]`, for pictures of what the
    /// encoder learned to see; `None` without convolutions.
    pub fn first_filters(&self) -> Option<(Vec<f32>, [usize; 4])> {
        self.net.layers().find_map(|l| match l {
            Layer::Conv2d(c) => Some((c.weight.value.as_vec(), c.spec.weight_shape())),
            _ => None,
        })
    }
}

/// `(x - mean[c]) / std[c]` for every pixel of channel `c` of the flattened images `x`.
fn normalize<D: ImprintDevice, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    n: &Normalize,
    shape: ImageShape,
) -> Matrix<D, T> {
    let plane = shape.height * shape.width;
    let per_pixel =
        |f: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..shape.len()).map(|i| f(i / plane)).collect() };
    let scale = per_pixel(&|c| 1.0 / n.std[c]);
    let shift = per_pixel(&|c| -n.mean[c] / n.std[c]);
    let (b, len) = *x.shape();
    let dev = x.device().clone();
    let scale: crate::Vector<D> = dev.tensor_from_vec(scale, (len,));
    let shift: crate::Vector<D> = dev.tensor_from_vec(shift, (len,));
    x * scale.broadcast_like::<(usize, usize), Axis<0>>(&(b, len))
        + shift.broadcast_like::<(usize, usize), Axis<0>>(&(b, len))
}

/// Maps features back to pixel logits (pre-sigmoid), `[batch, pixels]`.
#[derive(Clone, Debug)]
pub struct Decoder<D: ImprintDevice> {
    net: Sequential<D>,
}

params!(Decoder { net as _ });

impl<D: ImprintDevice> Decoder<D> {
    pub fn new(
        dev: &D,
        architecture: &Architecture,
        output: ImageShape,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        Ok(Self {
            net: architecture.layers(dev, output, Side::Decoder, rng)?,
        })
    }

    pub fn forward<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        z: Matrix<D, T>,
        pass: &mut Pass,
    ) -> Matrix<D, T> {
        self.net.forward(Act::Flat(z), pass, true).into_flat()
    }
}

#[cfg(test)]
mod tests;
