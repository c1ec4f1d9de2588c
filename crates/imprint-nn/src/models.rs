//! Autoencoder and classifier architectures chosen at run time. An [`Architecture`] is what a
//! checkpoint's sidecar records and what fine-tuning checks before loading an encoder; each kind
//! is a variant here, the rest of the toolkit sees only [`Encoder`]/[`Decoder`], which take and
//! give flattened images `[batch, channels*height*width]`.

use crate::checkpoint::NamedTensor;
use crate::layers::{load_param, uniform_vector};
use crate::{Activation, ImprintDevice, Matrix, Mlp, NnError, Result, Vector};
use dfdx::prelude::*;
use imprint_data::ImageShape;
use imprint_ops::{conv2d, conv_transpose2d, Conv2dSpec, ConvTranspose2dSpec};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

fn default_kernel() -> usize {
    3
}
fn default_stride() -> usize {
    2
}

impl Architecture {
    pub fn latent(&self) -> usize {
        match self {
            Architecture::Dense { latent, .. } | Architecture::Conv { latent, .. } => *latent,
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
        };
        if widths_ok {
            Ok(())
        } else {
            Err("layer widths, kernel and stride must be at least 1".into())
        }
    }

    /// Checks widths and that the convolutions fit images of `input`'s size.
    pub fn validate(&self, input: ImageShape) -> std::result::Result<(), String> {
        self.check_widths()?;
        if let Architecture::Conv { .. } = self {
            self.conv_stages(input)?;
        }
        Ok(())
    }

    /// For each convolution: its spec and the (channels, height, width) it maps from.
    fn conv_stages(
        &self,
        input: ImageShape,
    ) -> std::result::Result<Vec<(Conv2dSpec, ImageShape)>, String> {
        let Architecture::Conv {
            channels,
            kernel,
            stride,
            ..
        } = self
        else {
            return Ok(vec![]);
        };
        let mut shape = input;
        let mut stages = Vec::new();
        for &c in channels {
            let spec = Conv2dSpec::new(shape.channels, c, *kernel)
                .stride(*stride)
                .padding(kernel / 2);
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
        stages.push((Conv2dSpec::new(shape.channels, shape.channels, 1), shape));
        Ok(stages)
    }

    pub fn describe(&self, input: ImageShape) -> String {
        match self {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![input.len()];
                dims.extend(hidden);
                dims.push(*latent);
                let s: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                format!("dense {}", s.join("-"))
            }
            Architecture::Conv {
                channels,
                kernel,
                stride,
                latent,
            } => {
                let s: Vec<String> = channels.iter().map(|d| d.to_string()).collect();
                format!(
                    "conv {input} -> {} (kernel {kernel}, stride {stride}) -> linear {latent}",
                    s.join("-")
                )
            }
        }
    }
}

type Tensor4<D, T> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// One convolution (or transposed convolution) with its weights stored flat.
#[derive(Clone, Debug)]
struct ConvLayer<D: ImprintDevice> {
    weight: Vector<D>,
    bias: Vector<D>,
    weight_shape: [usize; 4],
}

impl<D: ImprintDevice> ConvLayer<D> {
    /// PyTorch's default init for conv layers: uniform in ±1/sqrt(fan_in).
    fn new(
        dev: &D,
        weight_shape: [usize; 4],
        fan_in: usize,
        out: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let bound = 1.0 / (fan_in as f32).sqrt();
        Self {
            weight: uniform_vector(dev, weight_shape.iter().product(), bound, rng),
            bias: uniform_vector(dev, out, bound, rng),
            weight_shape,
        }
    }

    fn named(&self, prefix: &str, index: usize, out: &mut Vec<NamedTensor>) {
        out.push(NamedTensor {
            name: format!("{prefix}.{index}.weight"),
            shape: self.weight_shape.to_vec(),
            data: self.weight.as_vec(),
        });
        out.push(NamedTensor {
            name: format!("{prefix}.{index}.bias"),
            shape: vec![self.bias.shape().0],
            data: self.bias.as_vec(),
        });
    }

    fn load(
        &mut self,
        prefix: &str,
        index: usize,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        let out = self.bias.shape().0;
        load_param(
            tensors,
            &format!("{prefix}.{index}.weight"),
            &self.weight_shape,
            &mut self.weight,
            source,
        )?;
        load_param(
            tensors,
            &format!("{prefix}.{index}.bias"),
            &[out],
            &mut self.bias,
            source,
        )
    }
}

/// Convolutions then a linear map: tensor names follow a PyTorch `nn.Sequential` of
/// `Conv2d, ReLU, ..., Flatten, Linear` (`encoder.0`, `encoder.2`, ..., `encoder.{2n+1}`).
#[derive(Clone, Debug)]
struct ConvEncoder<D: ImprintDevice> {
    stages: Vec<(Conv2dSpec, ImageShape)>,
    convs: Vec<ConvLayer<D>>,
    fc: Mlp<D>,
}

/// A linear map then transposed convolutions mirroring the encoder: names follow
/// `Linear, ReLU, Unflatten, ConvTranspose2d, ReLU, ...` (`decoder.0`, `decoder.3`, `decoder.5`, ...).
#[derive(Clone, Debug)]
struct ConvDecoder<D: ImprintDevice> {
    start: ImageShape,
    fc: Mlp<D>,
    stages: Vec<(ConvTranspose2dSpec, ImageShape)>,
    convs: Vec<ConvLayer<D>>,
}

#[derive(Clone, Debug)]
enum Net<D: ImprintDevice> {
    Dense(Mlp<D>),
    Conv(Box<ConvEncoder<D>>),
}

#[derive(Clone, Debug)]
enum DecoderNet<D: ImprintDevice> {
    Dense(Mlp<D>),
    Conv(Box<ConvDecoder<D>>),
}

/// Maps flattened images `[batch, pixels]` to features `[batch, latent]`.
#[derive(Clone, Debug)]
pub struct Encoder<D: ImprintDevice> {
    pub architecture: Architecture,
    pub input: ImageShape,
    net: Net<D>,
}

/// Maps features back to pixel logits (pre-sigmoid), `[batch, pixels]`.
#[derive(Clone, Debug)]
pub struct Decoder<D: ImprintDevice> {
    net: DecoderNet<D>,
}

/// The convolution stages of `architecture` on `input`, or an error naming what does not fit.
fn checked_stages(
    architecture: &Architecture,
    input: ImageShape,
) -> Result<Vec<(Conv2dSpec, ImageShape)>> {
    architecture
        .check_widths()
        .and_then(|()| architecture.conv_stages(input))
        .map_err(|m| NnError::Architecture(format!("{}: {m}", architecture.describe(input))))
}

impl<D: ImprintDevice> Encoder<D> {
    /// Errors when a convolutional architecture does not fit `input`.
    pub fn new(
        dev: &D,
        architecture: &Architecture,
        input: ImageShape,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let net = match architecture {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![input.len()];
                dims.extend(hidden);
                dims.push(*latent);
                Net::Dense(Mlp::new(
                    dev,
                    &dims,
                    Activation::Relu,
                    Activation::Identity,
                    rng,
                ))
            }
            Architecture::Conv { latent, .. } => {
                let mut stages = checked_stages(architecture, input)?;
                let (_, last) = stages
                    .pop()
                    .expect("conv_stages ends with the flattened shape");
                let convs = stages
                    .iter()
                    .map(|(s, _)| {
                        let fan_in = s.in_channels * s.kernel.0 * s.kernel.1;
                        ConvLayer::new(dev, s.weight_shape(), fan_in, s.out_channels, rng)
                    })
                    .collect();
                let fc = Mlp::new(
                    dev,
                    &[last.len(), *latent],
                    Activation::Identity,
                    Activation::Identity,
                    rng,
                );
                Net::Conv(Box::new(ConvEncoder { stages, convs, fc }))
            }
        };
        Ok(Self {
            architecture: architecture.clone(),
            input,
            net,
        })
    }

    /// `input_grad = false` when `x` is data.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>, input_grad: bool) -> Matrix<D, T> {
        match &self.net {
            Net::Dense(mlp) => mlp.forward(x, input_grad),
            Net::Conv(net) => {
                let batch = x.shape().0;
                let i = self.input;
                let mut h: Tensor4<D, T> = x.reshape_like(&(batch, i.channels, i.height, i.width));
                for ((spec, _), layer) in net.stages.iter().zip(&net.convs) {
                    h = conv2d(h, &layer.weight, Some(&layer.bias), spec)
                        .expect("conv2d failed on the device")
                        .relu();
                }
                let (b, c, hh, ww) = *h.shape();
                net.fc.forward(h.reshape_like(&(b, c * hh * ww)), true)
            }
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        match &mut self.net {
            Net::Dense(mlp) => mlp.params_mut(),
            Net::Conv(net) => {
                let mut params: Vec<&mut Vector<D>> = net
                    .convs
                    .iter_mut()
                    .flat_map(|l| [&mut l.weight, &mut l.bias])
                    .collect();
                params.extend(net.fc.params_mut());
                params
            }
        }
    }

    /// The first layer's filters as images `[filters, kernel_h, kernel_w]` per input channel,
    /// for pictures of what the encoder learned to see; `None` for dense encoders.
    pub fn first_filters(&self) -> Option<(Vec<f32>, [usize; 4])> {
        match &self.net {
            Net::Dense(_) => None,
            Net::Conv(net) => net
                .convs
                .first()
                .map(|l| (l.weight.as_vec(), l.weight_shape)),
        }
    }

    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        match &self.net {
            Net::Dense(mlp) => mlp.named_tensors(prefix),
            Net::Conv(net) => {
                let mut out = Vec::new();
                for (i, layer) in net.convs.iter().enumerate() {
                    layer.named(prefix, 2 * i, &mut out);
                }
                let fc_index = 2 * net.convs.len() + 1;
                out.extend(rename(net.fc.named_tensors(prefix), prefix, 0, fc_index));
                out
            }
        }
    }

    pub fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        match &mut self.net {
            Net::Dense(mlp) => mlp.load_named(prefix, tensors, source),
            Net::Conv(net) => {
                for (i, layer) in net.convs.iter_mut().enumerate() {
                    layer.load(prefix, 2 * i, tensors, source)?;
                }
                let fc_index = 2 * net.convs.len() + 1;
                let fc: Vec<NamedTensor> = ["weight", "bias"]
                    .iter()
                    .filter_map(|p| tensors.get(&format!("{prefix}.{fc_index}.{p}")).cloned())
                    .collect();
                let fc = rename(fc, prefix, fc_index, 0)
                    .into_iter()
                    .map(|t| (t.name.clone(), t))
                    .collect();
                net.fc.load_named(prefix, &fc, source)
            }
        }
    }
}

/// `{prefix}.{from}.x` -> `{prefix}.{to}.x`: the linear stack sits at index `to` of the sequence.
fn rename(tensors: Vec<NamedTensor>, prefix: &str, from: usize, to: usize) -> Vec<NamedTensor> {
    let old = format!("{prefix}.{from}.");
    tensors
        .into_iter()
        .map(|mut t| {
            if let Some(rest) = t.name.strip_prefix(&old) {
                t.name = format!("{prefix}.{to}.{rest}");
            }
            t
        })
        .collect()
}

impl<D: ImprintDevice> Decoder<D> {
    pub fn new(
        dev: &D,
        architecture: &Architecture,
        output: ImageShape,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let net = match architecture {
            Architecture::Dense { hidden, latent } => {
                let mut dims = vec![*latent];
                dims.extend(hidden.iter().rev());
                dims.push(output.len());
                DecoderNet::Dense(Mlp::new(
                    dev,
                    &dims,
                    Activation::Relu,
                    Activation::Identity,
                    rng,
                ))
            }
            Architecture::Conv { latent, .. } => {
                let mut enc = checked_stages(architecture, output)?;
                let (_, start) = enc
                    .pop()
                    .expect("conv_stages ends with the flattened shape");
                // Each transposed convolution undoes one convolution, back to its exact size.
                let stages: Vec<(ConvTranspose2dSpec, ImageShape)> = enc
                    .iter()
                    .rev()
                    .map(|(s, from)| {
                        let (h, w) = s.output_size(from.height, from.width);
                        let natural =
                            |out: usize, k: usize, st: usize, p: usize| (out - 1) * st + k - 2 * p;
                        let mut spec =
                            ConvTranspose2dSpec::new(s.out_channels, s.in_channels, s.kernel.0)
                                .stride(s.stride.0)
                                .padding(s.padding.0);
                        spec.output_padding = (
                            from.height - natural(h, s.kernel.0, s.stride.0, s.padding.0),
                            from.width - natural(w, s.kernel.1, s.stride.1, s.padding.1),
                        );
                        (spec, *from)
                    })
                    .collect();
                let convs = stages
                    .iter()
                    .map(|(s, _)| {
                        // PyTorch computes ConvTranspose2d's fan-in from weight dim 1 (out/groups).
                        let fan_in = s.out_channels * s.kernel.0 * s.kernel.1;
                        ConvLayer::new(dev, s.weight_shape(), fan_in, s.out_channels, rng)
                    })
                    .collect();
                let fc = Mlp::new(
                    dev,
                    &[*latent, start.len()],
                    Activation::Relu,
                    Activation::Relu,
                    rng,
                );
                DecoderNet::Conv(Box::new(ConvDecoder {
                    start,
                    fc,
                    stages,
                    convs,
                }))
            }
        };
        Ok(Self { net })
    }

    pub fn forward<T: Tape<f32, D>>(&self, z: Matrix<D, T>) -> Matrix<D, T> {
        match &self.net {
            DecoderNet::Dense(mlp) => mlp.forward(z, true),
            DecoderNet::Conv(net) => {
                let batch = z.shape().0;
                let s = net.start;
                let mut h: Tensor4<D, T> = net
                    .fc
                    .forward(z, true)
                    .reshape_like(&(batch, s.channels, s.height, s.width));
                let last = net.convs.len() - 1;
                for (i, ((spec, _), layer)) in net.stages.iter().zip(&net.convs).enumerate() {
                    h = conv_transpose2d(h, &layer.weight, Some(&layer.bias), spec)
                        .expect("conv_transpose2d failed on the device");
                    if i < last {
                        h = h.relu();
                    }
                }
                let (b, c, hh, ww) = *h.shape();
                h.reshape_like(&(b, c * hh * ww))
            }
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        match &mut self.net {
            DecoderNet::Dense(mlp) => mlp.params_mut(),
            DecoderNet::Conv(net) => {
                let mut params = net.fc.params_mut();
                params.extend(
                    net.convs
                        .iter_mut()
                        .flat_map(|l| [&mut l.weight, &mut l.bias]),
                );
                params
            }
        }
    }

    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        match &self.net {
            DecoderNet::Dense(mlp) => mlp.named_tensors(prefix),
            DecoderNet::Conv(net) => {
                let mut out = net.fc.named_tensors(prefix);
                for (i, layer) in net.convs.iter().enumerate() {
                    layer.named(prefix, 3 + 2 * i, &mut out);
                }
                out
            }
        }
    }

    pub fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        match &mut self.net {
            DecoderNet::Dense(mlp) => mlp.load_named(prefix, tensors, source),
            DecoderNet::Conv(net) => {
                net.fc.load_named(prefix, tensors, source)?;
                for (i, layer) in net.convs.iter_mut().enumerate() {
                    layer.load(prefix, 3 + 2 * i, tensors, source)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn conv_arch() -> Architecture {
        Architecture::Conv {
            channels: vec![4, 6],
            kernel: 3,
            stride: 2,
            latent: 5,
        }
    }

    #[test]
    fn conv_autoencoder_restores_the_input_size() {
        let dev = Cpu::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for (c, h, w) in [(1, 28, 28), (3, 9, 7), (1, 8, 8)] {
            let shape = ImageShape {
                channels: c,
                height: h,
                width: w,
            };
            let enc = Encoder::new(&dev, &conv_arch(), shape, &mut rng).unwrap();
            let dec = Decoder::new(&dev, &conv_arch(), shape, &mut rng).unwrap();
            let x: Matrix<Cpu> = dev.tensor_from_vec(vec![0.5; 2 * shape.len()], (2, shape.len()));
            let z = enc.forward(x, false);
            assert_eq!(*z.shape(), (2, 5));
            assert_eq!(*dec.forward(z).shape(), (2, shape.len()), "{shape}");
        }
    }

    #[test]
    fn conv_names_follow_pytorch_sequential_and_load_back() {
        let dev = Cpu::default();
        let shape = ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let enc =
            Encoder::new(&dev, &conv_arch(), shape, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let names: Vec<(String, Vec<usize>)> = enc
            .named_tensors("encoder")
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        assert_eq!(
            names,
            vec![
                ("encoder.0.weight".to_string(), vec![4, 1, 3, 3]),
                ("encoder.0.bias".to_string(), vec![4]),
                ("encoder.2.weight".to_string(), vec![6, 4, 3, 3]),
                ("encoder.2.bias".to_string(), vec![6]),
                ("encoder.5.weight".to_string(), vec![5, 6 * 7 * 7]),
                ("encoder.5.bias".to_string(), vec![5]),
            ]
        );
        let tensors: BTreeMap<_, _> = enc
            .named_tensors("encoder")
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut other =
            Encoder::new(&dev, &conv_arch(), shape, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        assert_ne!(other.named_tensors("encoder"), enc.named_tensors("encoder"));
        other
            .load_named("encoder", &tensors, "x.safetensors")
            .unwrap();
        assert_eq!(other.named_tensors("encoder"), enc.named_tensors("encoder"));
    }

    #[test]
    fn conv_with_no_filters_is_an_error() {
        let arch = Architecture::Conv {
            channels: vec![4, 0],
            kernel: 3,
            stride: 2,
            latent: 2,
        };
        let shape = ImageShape {
            channels: 1,
            height: 4,
            width: 4,
        };
        assert!(arch.validate(shape).is_err());
        assert!(Encoder::<Cpu>::new(
            &Cpu::default(),
            &arch,
            shape,
            &mut ChaCha8Rng::seed_from_u64(0)
        )
        .is_err());
    }
}
