//! A classifier: an encoder, dropout on its features, and a head sized to the classes: a linear
//! layer, or a bank of labeled features that vote (k-nearest neighbours).

use dfdx::prelude::*;
use imprint_data::{ImageShape, Pixels};
use imprint_nn::infer::over_pixels;
use imprint_nn::knn::{Bank, KnnSettings};
use imprint_nn::tree::{join, Params, Var};
use imprint_nn::{Activation, Dropout, Encoder, ImprintDevice, Linear, Matrix, Mode, Pass};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
        over_pixels(dev, images, |x| self.encoder.forward(x, &mut Pass::eval()))
    }

    /// Class logits `[batch, classes]` of a linear head in eval mode, without a tape.
    pub fn logits(&mut self, x: Matrix<D>) -> Matrix<D> {
        let features = self.encoder.forward(x, &mut Pass::eval());
        self.linear_head()
            .forward(features, Activation::Identity, false)
    }

    /// Predicted class and its probability (softmax, or share of the vote) for each image.
    pub fn predict(&mut self, dev: &D, images: &Pixels) -> Vec<(usize, f32)> {
        if let Head::Knn(bank, settings) = &self.head {
            let (bank, settings) = (bank.clone(), *settings);
            return bank.predict(&self.features(dev, images), settings);
        }
        let probs = over_pixels(dev, images, |x| {
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
