//! A classifier: an encoder, dropout on its features, and a head sized to the classes: a linear
//! layer, or a bank of labeled features that vote (k-nearest neighbours).

use dfdx::prelude::*;
use imprint_data::{ImageShape, Pixels};
use imprint_nn::knn::{Bank, KnnSettings};
use imprint_nn::tree::{join, Params, Var};
use imprint_nn::{Activation, Dropout, Encoder, ImprintDevice, Linear, Matrix, Mode, Pass};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// What turns features into a class.
#[derive(Clone, Debug)]
pub enum Head<D: ImprintDevice> {
    /// Class scores `features · Wᵀ + b`, `head.weight` `[classes, features]`, `head.bias`.
    Linear(Linear<D>),
    /// The labeled images' features, `head.bank` and `head.labels`, and how they vote.
    Knn(Bank<D>, KnnSettings),
}

#[derive(Clone, Debug)]
pub struct Classifier<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    /// On the features the head sees, in training only.
    pub dropout: Dropout,
    pub head: Head<D>,
    pub classes: Vec<String>,
    pub shape: ImageShape,
}

/// `encoder.*` as in the pre-training checkpoint, then the head's tensors under `head.`.
impl<D: ImprintDevice> Params<D> for Classifier<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        self.encoder.visit(&join(prefix, "encoder"), f);
        match &self.head {
            Head::Linear(l) => l.visit(&join(prefix, "head"), f),
            Head::Knn(bank, _) => bank.visit(&join(prefix, "head"), f),
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        self.encoder.visit_mut(&join(prefix, "encoder"), f);
        match &mut self.head {
            Head::Linear(l) => l.visit_mut(&join(prefix, "head"), f),
            Head::Knn(bank, _) => bank.visit_mut(&join(prefix, "head"), f),
        }
    }
}

impl<D: ImprintDevice> Classifier<D> {
    /// A new linear head for `classes` on `encoder`, initialised from `seed`; no dropout.
    pub fn new(
        dev: &D,
        encoder: Encoder<D>,
        classes: Vec<String>,
        shape: ImageShape,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let head = Linear::new(dev, encoder.features(), classes.len(), &mut rng);
        Self::with_head(encoder, Head::Linear(head), classes, shape)
    }

    pub fn with_head(
        encoder: Encoder<D>,
        head: Head<D>,
        classes: Vec<String>,
        shape: ImageShape,
    ) -> Self {
        Self {
            encoder,
            dropout: Dropout { p: 0.0 },
            head,
            classes,
            shape,
        }
    }

    /// The linear head, which training needs.
    ///
    /// # Panics
    /// On a kNN classifier, which is never trained (a caller bug).
    pub(crate) fn linear_head(&mut self) -> &mut Linear<D> {
        match &mut self.head {
            Head::Linear(l) => l,
            Head::Knn(..) => panic!("a kNN classifier has no head to train"),
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
        self.head_logits(features, pass, encoder.is_some())
    }

    /// The linear head's logits of `features` on a tape (dropout first, in training);
    /// `input_grad` when the features need a gradient (the encoder trains).
    pub(crate) fn head_logits(
        &mut self,
        features: Matrix<D, OwnedTape<f32, D>>,
        pass: &mut Pass,
        input_grad: bool,
    ) -> Matrix<D, OwnedTape<f32, D>> {
        let features = self.dropout.forward(features, pass);
        self.linear_head()
            .forward(features, Activation::Identity, input_grad)
    }

    /// The encoder's features of `images`, in eval mode.
    pub fn features(&mut self, dev: &D, images: &Pixels) -> Vec<f32> {
        self.encoder.infer(dev, images, |f| f)
    }

    /// The linear head's logits `[images, classes]` of `images` in eval mode, as the encoder's
    /// memory budget cuts them: `sink(range, logits)` gets those of images `range`, in order.
    ///
    /// # Panics
    /// On a kNN classifier, which has no logits (a caller bug).
    pub fn logits_each(
        &mut self,
        dev: &D,
        images: &Pixels,
        sink: impl FnMut(Range<usize>, Vec<f32>),
    ) {
        let chunks = self.encoder.inference_chunks();
        let Classifier { encoder, head, .. } = self;
        let Head::Linear(head) = head else {
            panic!("a kNN classifier has no logits");
        };
        let logits = |f| head.forward(f, Activation::Identity, false);
        encoder.infer_each(dev, images, chunks, logits, sink);
    }

    /// Predicted class and its probability (softmax, or share of the vote) for each image.
    pub fn predict(&mut self, dev: &D, images: &Pixels) -> Vec<(usize, f32)> {
        let mut out = Vec::with_capacity(images.len());
        self.predict_each(dev, images, |_, p| out.extend_from_slice(p));
        out
    }

    /// [`Classifier::predict`] a chunk of images at a time, as the encoder's memory budget
    /// cuts them: `sink(first, predictions)` gets the predictions of images `first..`, in
    /// order, and nothing of a chunk is kept after it.
    pub fn predict_each(
        &mut self,
        dev: &D,
        images: &Pixels,
        mut sink: impl FnMut(usize, &[(usize, f32)]),
    ) {
        self.predict_each_with_probabilities(dev, images, |first, best, _| sink(first, best));
    }

    /// [`Classifier::predict_each`] with each image's probability of every class (softmax, or
    /// share of the vote) beside its prediction: `sink(first, predictions, rows)`, a row of
    /// `classes.len()` values per image.
    pub fn predict_each_with_probabilities(
        &mut self,
        dev: &D,
        images: &Pixels,
        mut sink: impl FnMut(usize, &[(usize, f32)], &[f32]),
    ) {
        let chunks = self.encoder.inference_chunks();
        let classes = self.classes.len();
        let Classifier { encoder, head, .. } = self;
        match head {
            Head::Knn(bank, settings) => {
                let settings = *settings;
                encoder.infer_each(
                    dev,
                    images,
                    chunks,
                    |f| f,
                    |r, features| {
                        let best = bank.predict(&features, settings);
                        sink(r.start, &best, &bank.shares(&features, settings))
                    },
                );
            }
            Head::Linear(head) => {
                let probabilities = |f| {
                    head.forward(f, Activation::Identity, false)
                        .softmax::<dfdx::shapes::Axis<1>>()
                };
                encoder.infer_each(dev, images, chunks, probabilities, |r, probs| {
                    let best: Vec<(usize, f32)> =
                        probs.chunks_exact(classes).map(best_class).collect();
                    sink(r.start, &best, &probs)
                });
            }
        }
    }
}

/// A trained linear head of the network fine-tuning starts from: its classes and tensors, whose
/// rows can start a new head for some of those classes.
#[derive(Clone, Debug, PartialEq)]
pub struct OldHead {
    pub classes: Vec<String>,
    /// `[classes, features]`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl OldHead {
    /// A head for `classes` made of this head's rows for them, in their order; `None` unless
    /// every one of them is among this head's classes (by name) and the widths agree.
    pub fn rows_for<D: ImprintDevice>(
        &self,
        dev: &D,
        classes: &[String],
        features: usize,
    ) -> Option<Linear<D>> {
        if self.bias.len() != self.classes.len() || self.weight.len() != self.bias.len() * features
        {
            return None;
        }
        let rows: Vec<usize> = classes
            .iter()
            .map(|c| self.classes.iter().position(|o| o == c))
            .collect::<Option<_>>()?;
        let weight = rows
            .iter()
            .flat_map(|&r| {
                self.weight[r * features..(r + 1) * features]
                    .iter()
                    .copied()
            })
            .collect();
        let bias = rows.iter().map(|&r| self.bias[r]).collect();
        Some(Linear::from_values(dev, weight, bias))
    }
}

/// Where fine-tuning starts: an encoder (pre-trained, imported, or fresh for `scratch`), and the
/// trained head of the network it came from when it had one.
#[derive(Clone, Debug)]
pub struct Init<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    pub head: Option<OldHead>,
}

impl<D: ImprintDevice> From<Encoder<D>> for Init<D> {
    fn from(encoder: Encoder<D>) -> Self {
        Self {
            encoder,
            head: None,
        }
    }
}

/// The index and value of the largest score in `row` (the first, on a tie).
pub(crate) fn best_class(row: &[f32]) -> (usize, f32) {
    row.iter().enumerate().fold(
        (0, f32::MIN),
        |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
    )
}
