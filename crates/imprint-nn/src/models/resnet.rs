//! Residual nets of basic blocks (He et al. 2016): the CIFAR layout (3x3 stem, three stages of
//! `(depth - 2) / 6` blocks, option-A shortcuts by default) and torchvision's ImageNet layout of
//! ResNet-18/34 (7x7 stride-2 stem, 3x3 max pool, four stages, option-B shortcuts), both ending
//! in a global average pool: the features are the last stage's width. Tensor names follow
//! PyTorch's for these nets (`conv1.weight`, `bn1.running_mean`, `layer2.0.shortcut.0.weight`
//! or `layer2.0.downsample.0.weight`).
//!
//! The decoder, for the reconstruction pretexts, maps the features back to the last stage's
//! feature maps (linear, ReLU), then doubles the size with a transposed convolution (batch norm,
//! ReLU) wherever the encoder halved it, and ends in a 3x3 convolution to the image's channels.

use super::{linear_parameters, Activations, Kind, Net};
use crate::layers::{
    BasicBlock, BatchNorm2d, Conv2d, ConvTranspose2d, Layer, Linear, Sequential, Shortcut,
};
use crate::ImprintDevice;
use imprint_data::ImageShape;
use imprint_ops::{Conv2dSpec, ConvTranspose2dSpec, Pool2dSpec};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A residual net of basic blocks: `depth = 6n + 2` in the CIFAR layout (stages of 16, 32, 64
/// filters by default), 18 or 34 in the ImageNet layout (64-128-256-512); features are the
/// global average of the last stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNet {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default)]
    pub layout: Layout,
    /// Filters per stage; the layout's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<usize>>,
    /// `a` (the CIFAR nets' default) or `b` (the ImageNet layout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<ShortcutKind>,
}

fn default_depth() -> usize {
    20
}

impl ResNet {
    /// The checked plan.
    fn plan(&self) -> Result<Plan, String> {
        Plan::new(self.depth, self.layout, &self.widths, self.shortcut)
    }
}

impl Kind for ResNet {
    fn latent(&self) -> usize {
        self.plan().map_or(0, |p| p.features())
    }

    fn check_widths(&self) -> Result<(), String> {
        self.plan().map(drop)
    }

    // Global average pooling before the features.
    fn any_size(&self) -> bool {
        true
    }

    fn fits(&self, input: ImageShape) -> Result<(), String> {
        self.plan()?.levels(input).map(drop)
    }

    fn describe(&self, input: ImageShape) -> String {
        match self.plan() {
            Ok(plan) => plan.describe(self.depth, input),
            Err(_) => format!("ResNet-{}", self.depth),
        }
    }

    fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        let plan = self.plan().ok()?;
        let levels = plan.levels(input).ok()?;
        let last = levels.last()?;
        // The encoder's 3x3 convolutions dominate; the decoder adds a linear map back to the
        // last feature maps.
        let encoder = plan.conv_parameters(input.channels);
        Some(encoder + linear_parameters(plan.features(), last.len()) + encoder)
    }

    fn widest(&self, input: ImageShape) -> usize {
        let Ok(levels) = self.plan().and_then(|p| p.levels(input)) else {
            return 0;
        };
        levels
            .iter()
            .map(ImageShape::len)
            .fold(input.len(), usize::max)
    }

    fn widest_row(&self, _input: ImageShape) -> usize {
        self.latent()
    }

    fn activations(&self, input: ImageShape) -> Option<Activations> {
        let plan = self.plan().ok()?;
        let levels = plan.levels(input).ok()?;
        let mut a = Activations::default();
        // The input and the decoder's output.
        a.add(input.len() as u128, 2)?;
        // The stem's convolution, batch norm and ReLU, and the decoder's transposed
        // convolution, batch norm and ReLU back up to each level.
        for level in &levels {
            a.add(level.len() as u128, 3)?;
        }
        a.add(levels.first()?.len() as u128, 3)?;
        // Each block's two convolutions, two batch norms, sum and ReLU (seven outputs), and a
        // projection shortcut's convolution and batch norm, at the size of its stage.
        let first_stage = levels.len().checked_sub(plan.blocks.len())?;
        for (stage, &blocks) in plan.blocks.iter().enumerate() {
            let len = levels.get(first_stage + stage)?.len() as u128;
            a.add(len, 7u128.checked_mul(blocks as u128)?)?;
            if plan.shortcut == ShortcutKind::B {
                a.add(len, 2)?;
            }
        }
        Some(a)
    }

    fn encoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        Ok(encoder(dev, &self.plan()?, shape, rng))
    }

    fn decoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D> {
        decoder(dev, &self.plan()?, shape, rng)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// He et al. 2016 §4.2: for 32x32 images.
    #[default]
    Cifar,
    /// torchvision's resnet18/34: for photos of 64-224 px.
    Imagenet,
}

/// How a block that changes size or width passes its input on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutKind {
    /// Strided identity with zero-padded channels (no parameters).
    A,
    /// Strided 1x1 convolution and batch norm.
    B,
}

/// A checked ResNet: blocks per stage, widths, shortcut.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    layout: Layout,
    blocks: Vec<usize>,
    widths: Vec<usize>,
    shortcut: ShortcutKind,
}

impl Plan {
    pub fn new(
        depth: usize,
        layout: Layout,
        widths: &Option<Vec<usize>>,
        shortcut: Option<ShortcutKind>,
    ) -> Result<Self, String> {
        let (blocks, default_widths, default_shortcut) = match layout {
            Layout::Cifar => {
                if depth < 8 || !(depth - 2).is_multiple_of(6) {
                    return Err(format!(
                        "a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, ...), not {depth}"
                    ));
                }
                (vec![(depth - 2) / 6; 3], vec![16, 32, 64], ShortcutKind::A)
            }
            Layout::Imagenet => {
                let blocks = match depth {
                    18 => vec![2, 2, 2, 2],
                    34 => vec![3, 4, 6, 3],
                    _ => {
                        return Err(format!(
                        "an ImageNet-layout ResNet of basic blocks has depth 18 or 34, not {depth}"
                    ))
                    }
                };
                (blocks, vec![64, 128, 256, 512], ShortcutKind::B)
            }
        };
        let widths = widths.clone().unwrap_or(default_widths);
        if widths.len() != blocks.len() || widths.contains(&0) {
            return Err(format!(
                "widths must be {} positive numbers, one per stage",
                blocks.len()
            ));
        }
        let shortcut = shortcut.unwrap_or(default_shortcut);
        if shortcut == ShortcutKind::A && widths.windows(2).any(|w| w[1] < w[0]) {
            return Err("shortcut \"a\" pads channels, so widths must not shrink".into());
        }
        Ok(Self {
            layout,
            blocks,
            widths,
            shortcut,
        })
    }

    /// Weights of the encoder's convolutions (batch norms and shortcuts are a small part).
    pub fn conv_parameters(&self, channels: usize) -> u128 {
        let k = self.stem(channels).weight_len() as u128;
        let mut total = k;
        let mut from = self.widths[0] as u128;
        for (&width, &count) in self.widths.iter().zip(&self.blocks) {
            let w = width as u128;
            total += 9 * from * w + 9 * w * w * (2 * count as u128 - 1);
            from = w;
        }
        total
    }

    pub fn features(&self) -> usize {
        *self.widths.last().expect("a plan has stages")
    }

    fn stem(&self, channels: usize) -> Conv2dSpec {
        match self.layout {
            Layout::Cifar => Conv2dSpec::new(channels, self.widths[0], 3).padding(1),
            Layout::Imagenet => imagenet_stem(channels, self.widths[0]),
        }
    }

    fn max_pool(&self) -> Option<Pool2dSpec> {
        (self.layout == Layout::Imagenet).then_some(IMAGENET_POOL)
    }

    /// The feature maps' shape at each resolution the encoder works at: after the stem (and,
    /// in the ImageNet layout, after its max pool), then after each stage that halves the size.
    /// An error names the first layer too big for the image.
    pub fn levels(&self, input: ImageShape) -> Result<Vec<ImageShape>, String> {
        stage_levels(
            input,
            self.stem(input.channels),
            self.max_pool(),
            self.widths[1..].iter().copied(),
        )
    }

    pub fn describe(&self, depth: usize, input: ImageShape) -> String {
        let widths: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        let layout = match self.layout {
            Layout::Cifar => "CIFAR",
            Layout::Imagenet => "ImageNet",
        };
        let shortcut = match self.shortcut {
            ShortcutKind::A => "A",
            ShortcutKind::B => "B",
        };
        format!(
            "ResNet-{depth} ({layout} layout) {input} -> {} (shortcut {shortcut}) -> average pool {}",
            widths.join("-"),
            self.features()
        )
    }
}

/// The feature maps' shape after `stem`, after `pool` if there is one, then after each later
/// stage, which halves the size with a 3x3 stride-2 convolution and gives the next of
/// `stage_channels`; an error names the first layer too big for the image.
pub(super) fn stage_levels(
    input: ImageShape,
    stem: Conv2dSpec,
    pool: Option<Pool2dSpec>,
    stage_channels: impl IntoIterator<Item = usize>,
) -> Result<Vec<ImageShape>, String> {
    let too_small = |what: &str, s: ImageShape| {
        format!(
            "the {what} does not fit {}x{} feature maps",
            s.height, s.width
        )
    };
    let (height, width) = stem
        .output_size_checked(input.height, input.width)
        .map_err(|_| too_small("stem", input))?;
    let mut at = ImageShape {
        channels: stem.out_channels,
        height,
        width,
    };
    let mut levels = vec![at];
    if let Some(pool) = pool {
        let (height, width) = pool
            .output_size_checked(at.height, at.width)
            .map_err(|_| too_small("max pool", at))?;
        at = ImageShape {
            height,
            width,
            ..at
        };
        levels.push(at);
    }
    for (stage, channels) in stage_channels.into_iter().enumerate() {
        let spec = Conv2dSpec::new(at.channels, channels, 3)
            .stride(2)
            .padding(1);
        let (height, width) = spec
            .output_size_checked(at.height, at.width)
            .map_err(|_| too_small(&format!("stage {}", stage + 2), at))?;
        at = ImageShape {
            channels,
            height,
            width,
        };
        levels.push(at);
    }
    Ok(levels)
}

/// The ImageNet layout's stem: a 7x7 convolution of stride 2 (then [`IMAGENET_POOL`]).
pub(super) fn imagenet_stem(channels: usize, width: usize) -> Conv2dSpec {
    Conv2dSpec::new(channels, width, 7).stride(2).padding(3)
}

/// The ImageNet layout's max pool after the stem: 3x3, stride 2.
pub(super) const IMAGENET_POOL: Pool2dSpec = Pool2dSpec {
    kernel: (3, 3),
    stride: (2, 2),
    padding: (1, 1),
};

pub(super) fn conv_bn<D: ImprintDevice>(
    dev: &D,
    spec: Conv2dSpec,
    rng: &mut impl Rng,
) -> (Conv2d<D>, BatchNorm2d<D>) {
    let bn = BatchNorm2d::new(dev, spec.out_channels);
    (Conv2d::he_without_bias(dev, spec, rng), bn)
}

fn block<D: ImprintDevice>(
    dev: &D,
    plan: &Plan,
    (from, to): (usize, usize),
    stride: usize,
    rng: &mut impl Rng,
) -> BasicBlock<D> {
    let (conv1, bn1) = conv_bn(
        dev,
        Conv2dSpec::new(from, to, 3).stride(stride).padding(1),
        rng,
    );
    let (conv2, bn2) = conv_bn(dev, Conv2dSpec::new(to, to, 3).padding(1), rng);
    let shortcut = if stride == 1 && from == to {
        Shortcut::Identity
    } else {
        match plan.shortcut {
            ShortcutKind::A => {
                let before = (to - from) / 2;
                Shortcut::Pad {
                    stride,
                    channels: (before, to - from - before),
                }
            }
            ShortcutKind::B => {
                let projection = conv_bn(dev, Conv2dSpec::new(from, to, 1).stride(stride), rng);
                Shortcut::Project(Box::new(projection))
            }
        }
    };
    let shortcut_name = match plan.layout {
        Layout::Cifar => "shortcut",
        Layout::Imagenet => "downsample",
    };
    BasicBlock {
        conv1,
        bn1,
        conv2,
        bn2,
        shortcut,
        shortcut_name,
    }
}

fn encoder<D: ImprintDevice>(
    dev: &D,
    plan: &Plan,
    input: ImageShape,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let (conv1, bn1) = conv_bn(dev, plan.stem(input.channels), rng);
    let mut layers = vec![
        ("conv1".to_string(), Layer::Conv2d(conv1)),
        ("bn1".to_string(), Layer::BatchNorm2d(bn1)),
        ("relu".to_string(), Layer::Relu),
    ];
    if let Some(pool) = plan.max_pool() {
        layers.push(("maxpool".to_string(), Layer::MaxPool2d(pool)));
    }
    let mut from = plan.widths[0];
    for (stage, (&width, &count)) in plan.widths.iter().zip(&plan.blocks).enumerate() {
        let blocks = (0..count)
            .map(|i| {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let b = block(dev, plan, (from, width), stride, rng);
                from = width;
                Layer::Block(Box::new(b))
            })
            .collect();
        layers.push((
            format!("layer{}", stage + 1),
            Layer::Sequential(Box::new(Sequential::indexed(blocks))),
        ));
    }
    layers.push(("avgpool".to_string(), Layer::GlobalAvgPool));
    Sequential::named(layers)
}

/// A transposed convolution (3x3, stride 2), batch norm and ReLU from `from` up to exactly `to`.
fn up<D: ImprintDevice>(
    dev: &D,
    from: ImageShape,
    to: ImageShape,
    rng: &mut impl Rng,
) -> [Layer<D>; 3] {
    // Stride 2 takes n rows to 2n - 1; the output padding adds the one more `to` may have.
    let mut spec = ConvTranspose2dSpec::new(from.channels, to.channels, 3)
        .stride(2)
        .padding(1);
    spec.output_padding = (
        (to.height + 1).saturating_sub(2 * from.height).min(1),
        (to.width + 1).saturating_sub(2 * from.width).min(1),
    );
    [
        Layer::ConvTranspose2d(ConvTranspose2d::new(dev, spec, rng)),
        Layer::BatchNorm2d(BatchNorm2d::new(dev, to.channels)),
        Layer::Relu,
    ]
}

fn decoder<D: ImprintDevice>(
    dev: &D,
    plan: &Plan,
    output: ImageShape,
    rng: &mut impl Rng,
) -> Result<Sequential<D>, String> {
    Ok(decoder_of_levels(
        dev,
        &plan.levels(output)?,
        plan.features(),
        output,
        rng,
    ))
}

/// The decoder of a residual net whose encoder works at `levels` (see [`Plan::levels`]) and
/// gives `features` values: shared with the bottleneck nets.
pub(super) fn decoder_of_levels<D: ImprintDevice>(
    dev: &D,
    levels: &[ImageShape],
    features: usize,
    output: ImageShape,
    rng: &mut impl Rng,
) -> Sequential<D> {
    let last = *levels.last().expect("a plan has levels");
    let mut layers = vec![
        Layer::Linear(Linear::new(dev, features, last.len(), rng)),
        Layer::Relu,
        Layer::Unflatten(last),
    ];
    for pair in levels.windows(2).rev() {
        layers.extend(up(dev, pair[1], pair[0], rng));
    }
    let first = levels[0];
    if (first.height, first.width) != (output.height, output.width) {
        let to = ImageShape {
            channels: first.channels,
            ..output
        };
        layers.extend(up(dev, first, to, rng));
    }
    let head = Conv2dSpec::new(first.channels, output.channels, 3).padding(1);
    layers.push(Layer::Conv2d(Conv2d::new(dev, head, rng)));
    Sequential::indexed(layers)
}
