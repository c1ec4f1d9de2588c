//! Residual nets of bottleneck blocks in torchvision's layout: ResNet-50/101/152 and the wide
//! ResNets (`wide_resnet50_2`, `wide_resnet101_2`): a 7x7 stride-2 stem, a 3x3 max pool, four
//! stages of 1x1-3x3-1x1 blocks (expansion 4, the stride on the 3x3 as torchvision's "v1.5"), a
//! strided 1x1 convolution and batch norm (`downsample`) on the first block of each stage, and a
//! global average pool: 2048 features. Tensor names are torchvision's (`conv1.weight`,
//! `layer3.5.conv2.weight`, `layer2.0.downsample.1.running_var`).
//!
//! The decoder, for the reconstruction pretexts, is the basic ResNets' (see `resnet.rs`).

use super::resnet::{conv_bn, decoder_of_levels, imagenet_stem, stage_levels, IMAGENET_POOL};
use super::{linear_parameters, Activations, Kind, Net};
use crate::layers::{Bottleneck, Layer, Sequential};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use imprint_ops::Conv2dSpec;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A ResNet of bottleneck blocks: `depth` 50, 101 or 152; `width_per_group` 64 (ResNet) or 128
/// (Wide ResNet-50-2 and -101-2), the inner width of a stage's blocks being its planes (64, 128,
/// 256, 512) times `width_per_group / 64`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BottleneckNet {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_width_per_group")]
    pub width_per_group: usize,
}

fn default_depth() -> usize {
    50
}

fn default_width_per_group() -> usize {
    64
}

/// Output channels of a block are its stage's planes times this.
const EXPANSION: usize = 4;
/// Planes of the four stages (the stem has the first's).
const PLANES: [usize; 4] = [64, 128, 256, 512];

impl BottleneckNet {
    /// Blocks per stage.
    fn blocks(&self) -> Result<[usize; 4], String> {
        if self.width_per_group == 0 {
            return Err("width_per_group must be at least 1".into());
        }
        match self.depth {
            50 => Ok([3, 4, 6, 3]),
            101 => Ok([3, 4, 23, 3]),
            152 => Ok([3, 8, 36, 3]),
            d => Err(format!(
                "a ResNet of bottleneck blocks has depth 50, 101 or 152, not {d}"
            )),
        }
    }

    /// Inner width of the blocks of stage `s` (from 0).
    fn inner(&self, s: usize) -> usize {
        PLANES[s] * self.width_per_group / 64
    }

    /// The feature maps' shape after the stem, after its max pool, then after each stage that
    /// halves the size; an error names the first layer too big for the image.
    fn levels(&self, input: ImageShape) -> Result<Vec<ImageShape>, String> {
        stage_levels(
            input,
            imagenet_stem(input.channels, PLANES[0]),
            Some(IMAGENET_POOL),
            PLANES[1..].iter().map(|planes| planes * EXPANSION),
        )
    }

    /// Trainable values of the encoder: convolutions and the batch norms' scales and shifts.
    fn encoder_parameters(&self, channels: usize) -> Option<u128> {
        let blocks = self.blocks().ok()?;
        let conv = |from: usize, to: usize, k: usize| (from * to * k * k) as u128;
        let bn = |c: usize| 2 * c as u128;
        let mut total = conv(channels, PLANES[0], 7) + bn(PLANES[0]);
        let mut from = PLANES[0];
        for (s, &count) in blocks.iter().enumerate() {
            let (inner, out) = (self.inner(s), PLANES[s] * EXPANSION);
            for _ in 0..count {
                total += conv(from, inner, 1) + bn(inner);
                total += conv(inner, inner, 3) + bn(inner);
                total += conv(inner, out, 1) + bn(out);
                // Only the first block of a stage changes the width, and it alone has one.
                if from != out {
                    total += conv(from, out, 1) + bn(out);
                }
                from = out;
            }
        }
        Some(total)
    }
}

impl Kind for BottleneckNet {
    fn latent(&self) -> usize {
        PLANES[3] * EXPANSION
    }

    fn check_widths(&self) -> Result<(), String> {
        self.blocks().map(drop)
    }

    // Global average pooling before the features.
    fn any_size(&self) -> bool {
        true
    }

    fn fits(&self, input: ImageShape) -> Result<(), String> {
        self.levels(input).map(drop)
    }

    fn describe(&self, input: ImageShape) -> String {
        let name = match self.width_per_group {
            64 => format!("ResNet-{}", self.depth),
            128 => format!("Wide ResNet-{}-2", self.depth),
            w => format!("ResNet-{} (width per group {w})", self.depth),
        };
        let widths: Vec<String> = PLANES.iter().map(|p| (p * EXPANSION).to_string()).collect();
        format!(
            "{name} (bottleneck blocks, ImageNet layout) {input} -> {} -> average pool {}",
            widths.join("-"),
            self.latent()
        )
    }

    fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        let last = *self.levels(input).ok()?.last()?;
        let encoder = self.encoder_parameters(input.channels)?;
        // The decoder mirrors the encoder's size, plus a linear map back to the last maps.
        Some(2 * encoder + linear_parameters(self.latent(), last.len()))
    }

    fn widest(&self, input: ImageShape) -> usize {
        let Ok(levels) = self.levels(input) else {
            return 0;
        };
        // The first stage widens the pooled maps to 256 channels at their size; no block's
        // inner maps are wider than its output.
        let pooled = levels[1];
        let first_stage = PLANES[0] * EXPANSION * pooled.height * pooled.width;
        levels
            .iter()
            .map(ImageShape::len)
            .fold(input.len().max(first_stage), usize::max)
    }

    fn widest_row(&self, _input: ImageShape) -> usize {
        self.latent()
    }

    fn activations(&self, input: ImageShape) -> Option<Activations> {
        let blocks = self.blocks().ok()?;
        let levels = self.levels(input).ok()?;
        let mut a = Activations::default();
        // The input and the decoder's output; the stem's convolution, batch norm and ReLU, and
        // the decoder's transposed convolution, batch norm and ReLU back up to each level.
        a.add(input.len() as u128, 2)?;
        for level in &levels {
            a.add(level.len() as u128, 3)?;
        }
        a.add(levels.first()?.len() as u128, 3)?;
        // Each block's first two convolutions with their batch norms and ReLUs (six outputs of
        // the inner width), its third convolution, batch norm, sum and ReLU (four of the outer
        // width), and a stage's downsampling convolution and batch norm, at the stage's size.
        for (s, &count) in blocks.iter().enumerate() {
            let at = levels.get(1 + s)?;
            let plane = (at.height * at.width) as u128;
            let inner = self.inner(s) as u128 * plane;
            let out = (PLANES[s] * EXPANSION) as u128 * plane;
            let count = count as u128;
            a.add(inner, 6 * count)?;
            a.add(out, 4 * count + 2)?;
        }
        Some(a)
    }

    fn encoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        let blocks = self.blocks()?;
        let (conv1, bn1) = conv_bn(dev, imagenet_stem(shape.channels, PLANES[0]), rng);
        let mut layers = vec![
            ("conv1".to_string(), Layer::Conv2d(conv1)),
            ("bn1".to_string(), Layer::BatchNorm2d(bn1)),
            ("relu".to_string(), Layer::Relu),
            ("maxpool".to_string(), Layer::MaxPool2d(IMAGENET_POOL)),
        ];
        let mut from = PLANES[0];
        for (s, &count) in blocks.iter().enumerate() {
            let (inner, out) = (self.inner(s), PLANES[s] * EXPANSION);
            let stage = (0..count)
                .map(|i| {
                    let stride = if s > 0 && i == 0 { 2 } else { 1 };
                    let (conv1, bn1) = conv_bn(dev, Conv2dSpec::new(from, inner, 1), rng);
                    let middle = Conv2dSpec::new(inner, inner, 3).stride(stride).padding(1);
                    let (conv2, bn2) = conv_bn(dev, middle, rng);
                    let (conv3, bn3) = conv_bn(dev, Conv2dSpec::new(inner, out, 1), rng);
                    let downsample = (stride != 1 || from != out).then(|| {
                        let spec = Conv2dSpec::new(from, out, 1).stride(stride);
                        Box::new(conv_bn(dev, spec, rng))
                    });
                    from = out;
                    Layer::Bottleneck(Box::new(Bottleneck {
                        conv1,
                        bn1,
                        conv2,
                        bn2,
                        conv3,
                        bn3,
                        downsample,
                    }))
                })
                .collect();
            layers.push((
                format!("layer{}", s + 1),
                Layer::Sequential(Box::new(Sequential::indexed(stage))),
            ));
        }
        layers.push(("avgpool".to_string(), Layer::GlobalAvgPool));
        Ok(Sequential::named(layers))
    }

    fn decoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        let levels = self.levels(shape)?;
        Ok(decoder_of_levels(dev, &levels, self.latent(), shape, rng))
    }
}
