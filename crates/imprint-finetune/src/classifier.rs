//! A classifier: an encoder, dropout on its features, and a linear head sized to the classes.

use dfdx::prelude::*;
use imprint_data::ImageShape;
use imprint_nn::infer::over_images;
use imprint_nn::tree::{join, Params, Var};
use imprint_nn::{Activation, Dropout, Encoder, ImprintDevice, Linear, Matrix, Mode, Pass};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct Classifier<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    /// On the features the head sees, in training only.
    pub dropout: Dropout,
    pub head: Linear<D>,
    pub classes: Vec<String>,
    pub shape: ImageShape,
}

/// `encoder.*` as in the pre-training checkpoint, then `head.weight` `[classes, latent]` and
/// `head.bias`.
impl<D: ImprintDevice> Params<D> for Classifier<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        self.encoder.visit(&join(prefix, "encoder"), f);
        self.head.visit(&join(prefix, "head"), f);
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        self.encoder.visit_mut(&join(prefix, "encoder"), f);
        self.head.visit_mut(&join(prefix, "head"), f);
    }
}

impl<D: ImprintDevice> Classifier<D> {
    /// A new head for `classes` on `encoder`, initialised from `seed`; no dropout.
    pub fn new(
        dev: &D,
        encoder: Encoder<D>,
        classes: Vec<String>,
        shape: ImageShape,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let head = Linear::new(dev, encoder.features(), classes.len(), &mut rng);
        Self {
            encoder,
            dropout: Dropout { p: 0.0 },
            head,
            classes,
            shape,
        }
    }

    /// Class logits `[batch, classes]` on a tape. `encoder` is the encoder's mode while it
    /// trains, `None` to keep it frozen off the tape (and in eval mode).
    pub fn train_logits(
        &mut self,
        x: Matrix<D>,
        encoder: Option<Mode>,
        pass: &mut Pass,
    ) -> Matrix<D, OwnedTape<f32, D>> {
        let features = match encoder {
            Some(mode) => self
                .encoder
                .forward(x.leaky_trace(), &mut pass.with_mode(mode)),
            None => self.encoder.forward(x, &mut Pass::eval()).leaky_trace(),
        };
        let features = self.dropout.forward(features, pass);
        self.head
            .forward(features, Activation::Identity, encoder.is_some())
    }

    /// Class logits `[batch, classes]` in eval mode, without a tape.
    pub fn logits(&mut self, x: Matrix<D>) -> Matrix<D> {
        let features = self.encoder.forward(x, &mut Pass::eval());
        self.head.forward(features, Activation::Identity, false)
    }

    /// Predicted class and its softmax probability for each image (`n * shape.len()` floats).
    pub fn predict(&mut self, dev: &D, images: &[f32]) -> Vec<(usize, f32)> {
        let probs = over_images(dev, images, self.shape.len(), |x| {
            self.logits(x).softmax::<dfdx::shapes::Axis<1>>()
        });
        probs
            .chunks_exact(self.classes.len())
            .map(best_class)
            .collect()
    }
}

/// The index and value of the largest score in `row` (the first, on a tie).
pub(crate) fn best_class(row: &[f32]) -> (usize, f32) {
    row.iter().enumerate().fold(
        (0, f32::MIN),
        |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
    )
}
