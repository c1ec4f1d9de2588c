//! Encoder and decoder architectures chosen at run time. An [`Architecture`] is what a
//! checkpoint's sidecar records and what fine-tuning checks before loading an encoder. Each kind
//! lives in a file of its own that builds its layers; the rest of the toolkit sees only
//! [`Encoder`] and [`Decoder`], which take and give flattened images `[batch, c*h*w]`.

mod bottleneck;
mod conv;
mod dense;
mod resnet;

pub use bottleneck::BottleneckNet;
pub use conv::ConvNet;
pub use dense::{mlp, DenseNet};
pub use resnet::{Layout, ResNet, ShortcutKind};

use crate::infer::{Chunks, Stages};
use crate::layers::{Act, Layer, Sequential};
use crate::params;
use crate::{ImprintDevice, Matrix, NnError, Pass, Result};
use dfdx::prelude::*;
use imprint_data::{ImageShape, Normalize, Pixels};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The kinds of net, each in a file of its own (`dense.rs`, `conv.rs`, `resnet.rs`,
/// `bottleneck.rs`) that implements [`Kind`]; a new kind is a new file, a variant here and a
/// line in [`each_kind`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    Dense(DenseNet),
    Conv(ConvNet),
    Resnet(ResNet),
    /// ResNet-50/101/152 and the wide ResNets (`bottleneck.rs`).
    Bottleneck(BottleneckNet),
}

/// `$body` with `$k` bound to the kind inside `$arch`, whichever it is.
macro_rules! each_kind {
    ($arch:expr, $k:ident => $body:expr) => {
        match $arch {
            Architecture::Dense($k) => $body,
            Architecture::Conv($k) => $body,
            Architecture::Resnet($k) => $body,
            Architecture::Bottleneck($k) => $body,
        }
    };
}

/// What a kind of net tells the rest of the toolkit.
trait Kind {
    /// Width of the features the encoder gives.
    fn latent(&self) -> usize;
    /// Checks that every width, kernel and stride is at least 1 (and, for a ResNet, that its
    /// depth, widths and shortcut go together).
    fn check_widths(&self) -> std::result::Result<(), String>;
    /// Checks that the layers fit images of `input`'s size; widths are checked first.
    fn fits(&self, input: ImageShape) -> std::result::Result<(), String>;
    /// Whether the encoder takes images of any size that [`fits`](Kind::fits), not only the
    /// one it was built for (its features pooled over the image, not flattened).
    fn any_size(&self) -> bool;
    fn describe(&self, input: ImageShape) -> String;
    /// Trainable values of the encoder and its decoder on images of `input`; `None` when the
    /// layers do not fit the images or the count overflows.
    fn parameter_count(&self, input: ImageShape) -> Option<u128>;
    /// Values per image of the encoder's largest activation (its input, a hidden layer or a
    /// feature map); 0 when the layers do not fit the images.
    fn widest(&self, input: ImageShape) -> usize;
    /// Values per image of the widest row a linear layer of the encoder reads or gives (the
    /// features, when it has none).
    fn widest_row(&self, input: ImageShape) -> usize;
    /// Values the layers of the encoder and its decoder produce for one image of `input`;
    /// `None` when the layers do not fit the images or the count overflows.
    fn activations(&self, input: ImageShape) -> Option<Activations>;
    /// The encoder's layers, images of `shape` to features (the architecture validated).
    fn encoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D>;
    /// The decoder's layers, features back to images of `shape`.
    fn decoder<D: ImprintDevice>(&self, dev: &D, shape: ImageShape, rng: &mut impl Rng) -> Net<D>;
}

/// A net's layers, or why they cannot be built.
type Net<D> = std::result::Result<Sequential<D>, String>;

/// The values a net's layers produce for one image: counted from the layer sizes, without
/// building anything, to bound the memory a forward and backward pass will ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activations {
    /// Every layer's output, the input's included: what a training step keeps for its backward
    /// pass.
    pub total: u128,
    /// The largest single layer output (or the input): what inference holds at once, besides
    /// the layer it feeds.
    pub largest: u128,
}

impl Activations {
    /// Adds `count` layer outputs of `len` values each.
    fn add(&mut self, len: u128, count: u128) -> Option<()> {
        self.total = self.total.checked_add(len.checked_mul(count)?)?;
        self.largest = self.largest.max(len);
        Some(())
    }
}

/// Trainable values of a linear layer from `i` to `o` features.
fn linear_parameters(i: usize, o: usize) -> u128 {
    (i as u128 + 1) * o as u128
}

/// The error of a width, kernel or stride of 0.
const ZERO_WIDTH: &str = "layer widths, kernel and stride must be at least 1";

impl Architecture {
    /// Width of the features the encoder gives.
    pub fn latent(&self) -> usize {
        each_kind!(self, k => k.latent())
    }

    /// Checks that every width, kernel and stride is at least 1.
    pub fn check_widths(&self) -> std::result::Result<(), String> {
        each_kind!(self, k => k.check_widths())
    }

    /// Checks widths and that the layers fit images of `input`'s size.
    pub fn validate(&self, input: ImageShape) -> std::result::Result<(), String> {
        self.check_widths()?;
        each_kind!(self, k => k.fits(input))
    }

    pub fn describe(&self, input: ImageShape) -> String {
        each_kind!(self, k => k.describe(input))
    }

    /// Whether the encoder takes images of other sizes than its input's (see
    /// [`Encoder::forward_at`]).
    pub fn any_size(&self) -> bool {
        each_kind!(self, k => k.any_size())
    }

    /// Trainable values of the encoder and its decoder on images of `input`, counted without
    /// building them (so a mistyped width is caught before memory is asked for); `None` when
    /// the layers do not fit the images or the count overflows.
    pub fn parameter_count(&self, input: ImageShape) -> Option<u128> {
        each_kind!(self, k => k.parameter_count(input))
    }

    /// Values per image of the encoder's largest activation on images of `input` (its input, a
    /// hidden layer or a feature map), which sets how many images inference runs at once; 0
    /// when the layers do not fit the images.
    pub fn widest(&self, input: ImageShape) -> usize {
        each_kind!(self, k => k.widest(input))
    }

    /// Values per image of the widest row a linear layer of the encoder reads or gives on
    /// images of `input` (the features, when it has none).
    pub fn widest_row(&self, input: ImageShape) -> usize {
        each_kind!(self, k => k.widest_row(input))
    }

    /// Values the encoder's and decoder's layers produce for one image of `input`, counted
    /// without building them; `None` when the layers do not fit the images or the count
    /// overflows.
    pub fn activations(&self, input: ImageShape) -> Option<Activations> {
        each_kind!(self, k => k.activations(input))
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
        let built = match side {
            Side::Encoder => each_kind!(self, k => k.encoder(dev, shape, rng)),
            Side::Decoder => each_kind!(self, k => k.decoder(dev, shape, rng)),
        };
        built.map_err(NnError::Architecture)
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
    /// Bytes of memory inference works within (`data.memory_budget_mb`): a share of it bounds
    /// the activations of the images run at once (see [`crate::infer`]).
    pub memory_budget: u64,
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
            memory_budget: imprint_data::DEFAULT_MEMORY_BUDGET_MB << 20,
        })
    }

    /// The same encoder reading images through `normalize`.
    pub fn normalized(self, normalize: Option<Normalize>) -> Self {
        Self { normalize, ..self }
    }

    /// The same encoder running inference within `bytes` of memory.
    pub fn within_memory(self, bytes: u64) -> Self {
        Self {
            memory_budget: bytes,
            ..self
        }
    }

    /// How inference cuts images within the memory budget (see [`Chunks::within`]).
    pub fn inference_chunks(&self) -> Chunks {
        self.chunks_within(self.memory_budget)
    }

    /// How inference cuts images within `budget` bytes of memory.
    pub fn chunks_within(&self, budget: u64) -> Chunks {
        let a = &self.architecture;
        Chunks::within(
            budget,
            self.input.len(),
            a.widest(self.input),
            a.widest_row(self.input),
        )
    }

    /// The features of `pixels` in eval mode, without a tape, as `chunks` cut them: the layers
    /// that take each image on its own run on [`Chunks::images`] at a time, the linear ones,
    /// then `then` (a head, or nothing), on [`Chunks::rows`]; `sink(range, values)` gets what
    /// `then` gives for images `range`, in order.
    pub fn infer_each(
        &mut self,
        dev: &D,
        pixels: &Pixels,
        chunks: Chunks,
        then: impl FnMut(Matrix<D>) -> Matrix<D>,
        sink: impl FnMut(Range<usize>, Vec<f32>),
    ) {
        let split = self.net.image_layers();
        let mut stages = EncoderStages {
            encoder: self,
            split,
            then,
        };
        crate::infer::each_pixels_chunk(dev, pixels, chunks, &mut stages, sink)
    }

    /// [`Encoder::infer_each`] within the encoder's memory budget, the values gathered in
    /// order.
    pub fn infer(
        &mut self,
        dev: &D,
        pixels: &Pixels,
        then: impl FnMut(Matrix<D>) -> Matrix<D>,
    ) -> Vec<f32> {
        let mut out = Vec::new();
        let chunks = self.inference_chunks();
        self.infer_each(dev, pixels, chunks, then, |_, v| out.extend(v));
        out
    }

    /// Width of the features.
    pub fn features(&self) -> usize {
        self.architecture.latent()
    }

    /// The layers, images (normalised, then as feature maps where the first layer takes them)
    /// to features: for walking the model, as an exporter does.
    pub fn net(&self) -> &Sequential<D> {
        &self.net
    }

    /// Whether the first layer takes feature maps (else the flattened image).
    pub fn takes_maps(&self) -> bool {
        self.net.layers().next().is_some_and(Layer::takes_maps)
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
        self.forward_at(x, self.input, pass)
    }

    /// Features of images `x` of `shape` (same channels as the input), for an architecture that
    /// takes [any size](Architecture::any_size): the small crops of multi-crop views.
    pub fn forward_at<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Matrix<D, T>,
        shape: ImageShape,
        pass: &mut Pass,
    ) -> Matrix<D, T> {
        let x = match &self.normalize {
            Some(n) => normalize(x, n, shape),
            None => x,
        };
        let x = if self.takes_maps() {
            Act::Maps(Act::Flat(x).into_maps(shape))
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

/// An encoder in eval mode cut before its first linear layer, then `then`.
struct EncoderStages<'a, D: ImprintDevice, H> {
    encoder: &'a mut Encoder<D>,
    split: usize,
    then: H,
}

impl<D: ImprintDevice, H: FnMut(Matrix<D>) -> Matrix<D>> Stages<D> for EncoderStages<'_, D, H> {
    fn images(&mut self, x: Matrix<D>) -> Matrix<D> {
        let e = &mut *self.encoder;
        let x = match &e.normalize {
            Some(n) => normalize(x, n, e.input),
            None => x,
        };
        let x = match self.split > 0 && e.net.layers().next().is_some_and(Layer::takes_maps) {
            true => Act::Maps(Act::Flat(x).into_maps(e.input)),
            false => Act::Flat(x),
        };
        e.net
            .forward_layers(x, &mut Pass::eval(), false, 0..self.split)
            .into_flat()
    }

    fn rows(&mut self, x: Matrix<D>) -> Matrix<D> {
        let net = &mut self.encoder.net;
        let all = self.split..net.len();
        (self.then)(
            net.forward_layers(Act::Flat(x), &mut Pass::eval(), false, all)
                .into_flat(),
        )
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
