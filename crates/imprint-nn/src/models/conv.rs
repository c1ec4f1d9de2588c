//! Convolutional nets: convolutions (ReLU) with `channels[i]` filters each, then a linear map to
//! the latent code; the decoder mirrors them with transposed convolutions. Named as PyTorch's
//! `nn.Sequential(Conv2d, ReLU, ..., Flatten, Linear)` (`encoder.0`, `encoder.2`, ...,
//! `encoder.{2n+1}`) and `nn.Sequential(Linear, ReLU, Unflatten, ConvTranspose2d, ReLU, ...)`
//! (`decoder.0`, `decoder.3`, `decoder.5`, ...).

use crate::layers::{Conv2d, ConvTranspose2d, Layer, Linear, Sequential};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use imprint_ops::{Conv2dSpec, ConvTranspose2dSpec};
use rand::Rng;

/// Each convolution's spec and the (channels, height, width) it maps from, then the shape the
/// last one maps to; an error names the first convolution that does not fit.
pub(super) fn stages(
    channels: &[usize],
    kernel: usize,
    stride: usize,
    input: ImageShape,
) -> Result<(Vec<(Conv2dSpec, ImageShape)>, ImageShape), String> {
    let mut shape = input;
    let mut stages = Vec::new();
    for &c in channels {
        let spec = Conv2dSpec::new(shape.channels, c, kernel)
            .stride(stride)
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
    Ok((stages, shape))
}

pub(super) fn encoder<D: ImprintDevice>(
    dev: &D,
    stages: &[(Conv2dSpec, ImageShape)],
    last: ImageShape,
    latent: usize,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let mut layers = Vec::new();
    for (spec, _) in stages {
        layers.push(Layer::Conv2d(Conv2d::new(dev, *spec, rng)));
        layers.push(Layer::Relu);
    }
    layers.push(Layer::Flatten);
    layers.push(Layer::Linear(Linear::new(dev, last.len(), latent, rng)));
    Sequential::indexed(layers)
}

pub(super) fn decoder<D: ImprintDevice>(
    dev: &D,
    stages: &[(Conv2dSpec, ImageShape)],
    start: ImageShape,
    latent: usize,
    rng: &mut impl Rng,
) -> Sequential<D> {
    // Each transposed convolution undoes one convolution, back to its exact size. They draw
    // their init before the linear layer, as they always have (a checkpoint's seed keeps its
    // meaning).
    let convs: Vec<ConvTranspose2d<D>> = stages
        .iter()
        .rev()
        .map(|(s, from)| {
            let (h, w) = s.output_size(from.height, from.width);
            let natural = |out: usize, k: usize, st: usize, p: usize| (out - 1) * st + k - 2 * p;
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
        Layer::Linear(Linear::new(dev, latent, start.len(), rng)),
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
    Sequential::indexed(layers)
}

pub(super) fn describe(
    input: ImageShape,
    channels: &[usize],
    kernel: usize,
    stride: usize,
    latent: usize,
) -> String {
    let s: Vec<String> = channels.iter().map(|d| d.to_string()).collect();
    format!(
        "conv {input} -> {} (kernel {kernel}, stride {stride}) -> linear {latent}",
        s.join("-")
    )
}
