//! Layers, each declaring its tensors once (see [`crate::tree`]), and [`Sequential`], which
//! composes them under names as PyTorch's `nn.Sequential` does (`0`, `1`, ... or given names).

mod batch_norm;
mod bottleneck;
mod conv;
mod dropout;
mod linear;
mod residual;

pub use batch_norm::BatchNorm2d;
pub use bottleneck::Bottleneck;
pub use conv::{Conv2d, ConvTranspose2d};
pub use dropout::Dropout;
pub use linear::Linear;
pub use residual::{BasicBlock, Shortcut};

use crate::tree::{join, Kind, Params, ParamsExt, Var};
use crate::{Activation, ImprintDevice, Matrix, Pass};
use dfdx::prelude::*;
use imprint_data::ImageShape;
use imprint_ops::{max_pool2d, Pool2dSpec};
use rand::distributions::{Distribution, Uniform};
use rand::Rng;

pub type Tensor4<D, T = NoneTape> = imprint_ops::Tensor4<D, T>;

/// `shape`'s values uniform in ±`bound`: PyTorch's default init for linear and conv layers.
pub(crate) fn uniform<D: ImprintDevice>(
    dev: &D,
    shape: &[usize],
    bound: f32,
    rng: &mut impl Rng,
) -> Var<D> {
    let dist = Uniform::new_inclusive(-bound, bound);
    let len = shape.iter().product();
    Var::new(
        dev,
        (0..len).map(|_| dist.sample(rng)).collect(),
        shape,
        Kind::Param,
    )
}

/// `shape`'s values from N(0, 2 / `fan`), by Box-Muller on the `rand` crate's uniforms.
pub(crate) fn kaiming_normal<D: ImprintDevice>(
    dev: &D,
    shape: &[usize],
    fan: usize,
    rng: &mut impl Rng,
) -> Var<D> {
    let std = (2.0 / fan as f64).sqrt();
    let len = shape.iter().product();
    let values = (0..len)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Var::new(dev, values, shape, Kind::Param)
}

/// What flows between layers: a batch of flat rows `[batch, features]` or of feature maps
/// `[batch, channels, height, width]`.
pub enum Act<D: ImprintDevice, T> {
    Flat(Matrix<D, T>),
    Maps(Tensor4<D, T>),
}

impl<D: ImprintDevice, T: Tape<f32, D>> Act<D, T> {
    pub fn into_flat(self) -> Matrix<D, T> {
        match self {
            Act::Flat(x) => x,
            Act::Maps(x) => {
                let (b, c, h, w) = *x.shape();
                x.reshape_like(&(b, c * h * w))
            }
        }
    }

    pub fn into_maps(self, shape: ImageShape) -> Tensor4<D, T> {
        match self {
            Act::Maps(x) => x,
            Act::Flat(x) => {
                let b = x.shape().0;
                x.reshape_like(&(b, shape.channels, shape.height, shape.width))
            }
        }
    }

    /// Feature maps, for layers that take nothing else.
    ///
    /// # Panics
    /// On flat rows: a model built wrongly (flat rows need an `Unflatten` first).
    fn maps(self, layer: &str) -> Tensor4<D, T> {
        match self {
            Act::Maps(x) => x,
            Act::Flat(_) => panic!("{layer} takes feature maps, not flat rows"),
        }
    }
}

/// A layer of a [`Sequential`].
#[derive(Clone, Debug)]
pub enum Layer<D: ImprintDevice> {
    Linear(Linear<D>),
    Conv2d(Conv2d<D>),
    ConvTranspose2d(ConvTranspose2d<D>),
    BatchNorm2d(BatchNorm2d<D>),
    Relu,
    Dropout(Dropout),
    /// Feature maps to flat rows, channel by channel (PyTorch's `nn.Flatten`).
    Flatten,
    /// Flat rows to feature maps of this shape (PyTorch's `nn.Unflatten`).
    Unflatten(ImageShape),
    MaxPool2d(Pool2dSpec),
    /// The mean of each channel over the image: feature maps to flat rows of one value per
    /// channel (`nn.AdaptiveAvgPool2d(1)` then `flatten`).
    GlobalAvgPool,
    Block(Box<BasicBlock<D>>),
    Bottleneck(Box<Bottleneck<D>>),
    /// Layers under a name of their own (a ResNet's `layer1`, ...).
    Sequential(Box<Sequential<D>>),
}

/// `$body` on the layer's parameters when it has any (`$l` bound to the inner layer).
macro_rules! with_params {
    ($layer:expr, $l:ident => $body:expr) => {
        match $layer {
            Layer::Linear($l) => $body,
            Layer::Conv2d($l) => $body,
            Layer::ConvTranspose2d($l) => $body,
            Layer::BatchNorm2d($l) => $body,
            Layer::Block($l) => $body,
            Layer::Bottleneck($l) => $body,
            Layer::Sequential($l) => $body,
            Layer::Relu
            | Layer::Dropout(_)
            | Layer::Flatten
            | Layer::Unflatten(_)
            | Layer::MaxPool2d(_)
            | Layer::GlobalAvgPool => {}
        }
    };
}

impl<D: ImprintDevice> Params<D> for Layer<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        with_params!(self, l => l.visit(prefix, f))
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        with_params!(self, l => l.visit_mut(prefix, f))
    }
}

impl<D: ImprintDevice> Layer<D> {
    /// Whether the layer is, or holds, a linear layer.
    fn holds_linear(&self) -> bool {
        match self {
            Layer::Linear(_) => true,
            Layer::Sequential(s) => s.layers().any(Layer::holds_linear),
            _ => false,
        }
    }

    /// Whether the layer reads feature maps (so flat input must be unflattened first).
    pub fn takes_maps(&self) -> bool {
        match self {
            Layer::Conv2d(_)
            | Layer::ConvTranspose2d(_)
            | Layer::BatchNorm2d(_)
            | Layer::MaxPool2d(_)
            | Layer::GlobalAvgPool
            | Layer::Block(_)
            | Layer::Bottleneck(_) => true,
            Layer::Sequential(s) => s.layers().next().is_some_and(Layer::takes_maps),
            _ => false,
        }
    }

    /// `activation` is applied inside a linear layer's product or a batch norm's op (a ReLU
    /// fused into it).
    fn forward<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Act<D, T>,
        pass: &mut Pass,
        input_grad: bool,
        activation: Activation,
    ) -> Act<D, T> {
        match self {
            Layer::Linear(l) => Act::Flat(l.forward(x.into_flat(), activation, input_grad)),
            Layer::Conv2d(l) => Act::Maps(l.forward(x.maps("Conv2d"), input_grad)),
            Layer::ConvTranspose2d(l) => Act::Maps(l.forward(x.maps("ConvTranspose2d"))),
            Layer::BatchNorm2d(l) if activation == Activation::Relu => {
                Act::Maps(l.forward_relu(x.maps("BatchNorm2d"), pass.mode))
            }
            Layer::BatchNorm2d(l) => Act::Maps(l.forward(x.maps("BatchNorm2d"), pass.mode)),
            Layer::Relu => match x {
                Act::Flat(x) => Act::Flat(x.relu()),
                Act::Maps(x) => Act::Maps(x.relu()),
            },
            Layer::Dropout(d) => match x {
                Act::Flat(x) => Act::Flat(d.forward(x, pass)),
                Act::Maps(x) => Act::Maps(d.forward(x, pass)),
            },
            Layer::Flatten => Act::Flat(x.into_flat()),
            Layer::Unflatten(shape) => Act::Maps(x.into_maps(*shape)),
            Layer::MaxPool2d(spec) => Act::Maps(
                max_pool2d(x.maps("MaxPool2d"), spec.kernel, spec.stride, spec.padding)
                    .expect("max_pool2d failed on the device"),
            ),
            Layer::GlobalAvgPool => {
                let x = x.maps("GlobalAvgPool");
                let (b, c, h, w) = *x.shape();
                Act::Flat(
                    x.reshape_like(&(b, c, h * w))
                        .mean::<(usize, usize), Axis<2>>(),
                )
            }
            Layer::Block(block) => Act::Maps(block.forward(x.maps("BasicBlock"), pass)),
            Layer::Bottleneck(block) => Act::Maps(block.forward(x.maps("Bottleneck"), pass)),
            Layer::Sequential(s) => s.forward(x, pass, input_grad),
        }
    }
}

/// Layers applied in turn, each under its name; a linear layer or a batch norm followed by a
/// ReLU runs as one fused op.
#[derive(Clone, Debug)]
pub struct Sequential<D: ImprintDevice> {
    layers: Vec<(String, Layer<D>)>,
}

impl<D: ImprintDevice> Params<D> for Sequential<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        for (name, layer) in &self.layers {
            layer.visit(&join(prefix, name), f)
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        for (name, layer) in &mut self.layers {
            layer.visit_mut(&join(prefix, name), f)
        }
    }
}

impl<D: ImprintDevice> Sequential<D> {
    /// Layers named by position, as in `nn.Sequential(a, b, ...)`.
    pub fn indexed(layers: Vec<Layer<D>>) -> Self {
        Self {
            layers: layers
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l))
                .collect(),
        }
    }

    pub fn layers(&self) -> impl Iterator<Item = &Layer<D>> {
        self.layers.iter().map(|(_, l)| l)
    }

    /// The layers with their names, in order (for walking a model, as an exporter does).
    pub fn named_layers(&self) -> impl Iterator<Item = (&str, &Layer<D>)> {
        self.layers.iter().map(|(n, l)| (n.as_str(), l))
    }

    /// The names (under `prefix`) of the layers that hold tensors, in forward order, a named
    /// stage counting by its own layers (a ResNet's blocks): the depths layer-wise learning-rate
    /// decay steps through.
    pub fn units(&self, prefix: &str) -> Vec<String> {
        let mut units = Vec::new();
        for (name, layer) in &self.layers {
            let at = join(prefix, name);
            match layer {
                Layer::Sequential(inner) => units.extend(inner.units(&at)),
                _ if !layer.vars("").is_empty() => units.push(at),
                _ => {}
            }
        }
        units
    }

    /// Layers under the given names, as in `nn.Sequential(OrderedDict(...))`.
    pub fn named(layers: Vec<(String, Layer<D>)>) -> Self {
        Self { layers }
    }

    /// `input_grad = false` when `x` is data, which needs no gradient.
    pub fn forward<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        x: Act<D, T>,
        pass: &mut Pass,
        input_grad: bool,
    ) -> Act<D, T> {
        let all = 0..self.layers.len();
        self.forward_layers(x, pass, input_grad, all)
    }

    /// The layers `range` of this sequence (by position) applied in turn.
    pub fn forward_layers<T: Tape<f32, D> + Merge<T>>(
        &mut self,
        mut x: Act<D, T>,
        pass: &mut Pass,
        mut input_grad: bool,
        range: std::ops::Range<usize>,
    ) -> Act<D, T> {
        let mut i = range.start;
        while i < range.end {
            let fuse = matches!(self.layers[i].1, Layer::Linear(_) | Layer::BatchNorm2d(_))
                && i + 1 < range.end
                && matches!(self.layers.get(i + 1), Some((_, Layer::Relu)));
            let activation = if fuse {
                Activation::Relu
            } else {
                Activation::Identity
            };
            x = self.layers[i].1.forward(x, pass, input_grad, activation);
            input_grad = true;
            i += if fuse { 2 } else { 1 };
        }
        x
    }

    /// How many leading layers come before the first linear layer: those take each image on
    /// its own in eval mode (convolutions, batch norm, pooling, ...), whatever else is in the
    /// batch, where a linear layer's product sums in an order that depends on its row count.
    pub fn image_layers(&self) -> usize {
        self.layers
            .iter()
            .take_while(|(_, l)| !l.holds_linear())
            .count()
    }

    /// The number of top-level layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}
