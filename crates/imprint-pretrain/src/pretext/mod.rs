//! Pretexts: what pre-training asks of the encoder. Each method is a file of its own holding
//! its settings (an entry of `[pretrain] pretexts`), the views it reads, its heads, its loss and
//! what it does after each optimizer step (a momentum teacher's update). A step draws the views
//! every pretext needs, runs the encoder once on each, and sums the pretexts' weighted losses in
//! the order of the list. A new method is a file here and a line in the `registry!` below.

mod crops;
mod heads;
mod teacher;

pub use crops::LocalCrops;
pub(crate) use heads::{mlp_bn, project};
pub(crate) use teacher::{ema, frozen};

use crate::views::Views;
use crate::{PretrainConfig, Result};
use imprint_collective::Replicas;
use imprint_data::ImageShape;
use imprint_nn::{Decoder, Encoder, ImprintDevice, Matrix, Params, Pass};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Declares the methods: each `Variant(module)` is `kind = "module"` in a pipeline file (the
/// variant's name in snake case), with the settings `module::Settings`, which implement
/// [`Method`]. The order here is the order a run draws the methods' heads in.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($module:ident),)*) => {
        $(pub mod $module;)*

        /// One entry of `[pretrain] pretexts`, chosen by its `kind`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum PretextConfig {
            $($(#[$doc])* $variant($module::Settings),)*
        }

        impl PretextConfig {
            /// Every kind, in the registry's order.
            const KINDS: &[&'static str] = &[$(stringify!($module),)*];

            /// The name a pipeline file gives it (`kind`), which names its keys in errors:
            /// `pretexts.contrastive.temperature`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($module),)*
                }
            }

            /// The method's checks, views and description.
            pub(crate) fn method(&self) -> &dyn Method {
                match self {
                    $(Self::$variant(s) => s,)*
                }
            }

            /// The method's nets beside `encoder`, drawn from `rng`.
            pub(crate) fn build<D: ImprintDevice>(
                &self,
                dev: &D,
                encoder: &Encoder<D>,
                rng: &mut ChaCha8Rng,
            ) -> Result<Box<dyn Pretext<D>>> {
                match self {
                    $(Self::$variant(s) => s.build(dev, encoder, rng),)*
                }
            }
        }
    };
}

registry! {
    /// An autoencoder's decoder draws the image back from the first view's code (plain,
    /// denoising or masked, as `noise` corrupts the input).
    Reconstruction(reconstruction),
    /// SimCLR's NT-Xent between two views (and any small crops) of each image.
    Contrastive(contrastive),
    /// RotNet: a head tells the quarter turn of the first view.
    Rotation(rotation),
    /// BYOL: a predictor matches a momentum teacher's projection of the other view.
    Byol(byol),
    /// DINO: a student matches a momentum teacher's centred, sharpened distribution.
    Dino(dino),
    /// VICReg: two views' expanded codes agree, spread and decorrelate.
    Vicreg(vicreg),
}

impl PretextConfig {
    /// Its place in the registry: a run draws the heads in this order whatever the order of
    /// the list (which orders the losses), so that reordering the list changes only how the
    /// losses add up.
    pub(crate) fn rank(&self) -> usize {
        Self::KINDS
            .iter()
            .position(|k| *k == self.kind())
            .expect("every kind is in the registry")
    }
}

/// What the loop needs to know of a method before building it.
pub(crate) trait Method {
    /// Its factor in the sum of the losses.
    fn weight(&self) -> f64;
    /// The views it reads.
    fn views(&self) -> ViewNeeds;
    /// A setting of its entry that is out of range or does not fit the rest of `cfg`: the
    /// key (within the entry; empty for the entry as a whole) and why.
    fn problem(&self, cfg: &PretrainConfig) -> Option<(&'static str, String)>;
    /// Its phrase in a report's description of the run.
    fn describe(&self) -> String;
    /// Its nets, drawn from `rng`; a teacher starts as a copy of `encoder`.
    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>>
    where
        Self: Sized;
}

/// A method's nets during a run: its heads (parameters the optimizer trains) and any teacher
/// (buffers it never sees).
pub(crate) trait Pretext<D: ImprintDevice>: Params<D> {
    /// Its weighted share of the step's loss (in a data-parallel run, this replica's part of
    /// it, see [`Share`]).
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D>;

    /// After each optimizer step, with the student's new weights: a teacher's move.
    fn after_step(&mut self, _student: &Encoder<D>, _at: Progress) {}

    /// The loss of uncorrupted images `x` without a tape, for the held-out curve; `None` for a
    /// method that has no such loss.
    fn heldout_loss(&mut self, _encoder: &mut Encoder<D>, _x: Matrix<D>) -> Option<f32> {
        None
    }

    /// The decoder, kept after pre-training, of a method that has one.
    fn into_decoder(self: Box<Self>) -> Option<Decoder<D>> {
        None
    }
}

/// A step's batch as the pretexts see it.
pub(crate) struct Batch<'a, D: ImprintDevice> {
    pub views: &'a Views,
    pub codes: &'a Codes<D>,
    pub at: Progress,
    /// The rows of the global batch the views and codes are of.
    pub share: Share,
}

/// The rows of the global batch this replica computes, and the replicas.
pub(crate) struct Share {
    pub rows: Range<usize>,
    pub total: usize,
    pub replicas: Replicas,
}

impl Share {
    /// This replica's part of a loss that is a mean over the rows of its share: the parts of
    /// all replicas add up to the mean over the global batch.
    pub fn weigh<D: ImprintDevice>(&self, loss: Loss<D>) -> Loss<D> {
        match self.rows.len() == self.total {
            true => loss,
            false => loss * (self.rows.len() as f32 / self.total as f32),
        }
    }
}

/// Where a step is in the run, for the schedules of momentum and temperature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// 0-based.
    pub step: usize,
    pub steps: usize,
}

impl Progress {
    /// `from` at the first step, `to` at the last, along a half cosine between them: the
    /// momentum schedule of BYOL (section 3.2) and DINO, as lightly's `cosine_schedule`.
    pub fn cosine(self, from: f64, to: f64) -> f64 {
        if self.steps <= 1 {
            return to;
        }
        let t = (self.step as f64 / (self.steps - 1) as f64).min(1.0);
        to - (to - from) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0
    }

    /// `from` rising linearly to `to` over the first `fraction` of the steps, then `to`: DINO's
    /// teacher-temperature warm-up.
    pub fn warm_up(self, from: f64, to: f64, fraction: f64) -> f64 {
        let warm = (fraction * self.steps as f64).round() as usize;
        if self.step >= warm {
            to
        } else {
            from + (to - from) * self.step as f64 / warm as f64
        }
    }
}

/// The views a method reads; a step draws what all the methods of the run need.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ViewNeeds {
    /// Full-size views of each image, each moved and corrupted afresh.
    pub global: usize,
    /// The first view's images turned by a multiple of 90° each (the other methods then see
    /// them turned too).
    pub turned: bool,
    /// The reconstruction target is the original image, not the moved one.
    pub original_target: bool,
    /// Small crops beside the full-size views (`local_crops > 0`).
    pub local: Option<LocalCrops>,
}

pub(crate) type Code<D> = Matrix<D, dfdx::prelude::OwnedTape<f32, D>>;

/// The encoder's codes of a batch's views. Methods read copies under the same ids, so that
/// every reader's gradient meets in the encoder; the codes' own tapes (the encoder's part) join
/// the step's loss once every method has read them.
pub(crate) struct Codes<D: ImprintDevice> {
    /// Of the full-size views, the first first.
    pub global: Vec<Code<D>>,
    /// Of the small crops.
    pub local: Vec<Code<D>>,
}

impl<D: ImprintDevice> Codes<D> {
    /// Full-size view `i`'s code.
    pub fn global(&self, i: usize) -> Code<D> {
        self.global[i].retaped()
    }

    /// Every view's code: the full-size ones, then the small crops'.
    pub fn all(&self) -> Vec<Code<D>> {
        self.global
            .iter()
            .chain(&self.local)
            .map(|c| c.retaped())
            .collect()
    }
}

/// Every replica's rows of `x` (its share of the batch) one after another in rank order: the
/// global batch's. Only this replica's rows are on the tape; the others' are constants here,
/// each on its own replica's tape.
pub(crate) fn gather_rows<D: ImprintDevice>(x: Code<D>, share_of: &Share) -> Code<D> {
    use dfdx::prelude::*;
    let (rows, cols) = *x.shape();
    let replicas = &share_of.replicas;
    let all = replicas.gather(&x.as_vec());
    let total = all.len() / cols;
    let mine = imprint_collective::share(total, replicas.rank(), replicas.size());
    assert_eq!(mine.len(), rows, "replicas that disagree on the shares");
    let dev = x.device().clone();
    let constant = |range: Range<usize>| {
        let m: Matrix<D> = dev.tensor_from_vec(
            all[range.start * cols..range.end * cols].to_vec(),
            (range.len(), cols),
        );
        m.retaped::<OwnedTape<f32, D>>()
    };
    let mut y = x;
    if mine.start > 0 {
        y = (constant(0..mine.start), y).concat_along(Axis::<0>);
    }
    if mine.end < total {
        y = (y, constant(mine.end..total)).concat_along(Axis::<0>);
    }
    y
}

/// A loss every replica computes whole on gathered rows ([`gather_rows`]), as this replica's
/// part: the value of one `N`th (so that the replicas' parts add up to it, as the loop sums
/// them), the gradient of the whole, which reaches the encoder only through this replica's own
/// rows and so is counted once when the loop sums the gradients.
pub(crate) fn replicated<D: ImprintDevice>(loss: Loss<D>, share_of: &Share) -> Loss<D> {
    let n = share_of.replicas.size() as f32;
    let value = loss.as_vec()[0];
    loss - value * (1.0 - 1.0 / n)
}

/// `loss * weight`, or `loss` itself for a weight of 1 (one op fewer).
pub(crate) fn weighted<D: ImprintDevice>(loss: Loss<D>, weight: f64) -> Loss<D> {
    if weight == 1.0 {
        loss
    } else {
        loss * weight as f32
    }
}

/// The image shape of square crops of `side` pixels of images of `input`.
pub(crate) fn crop_shape(input: ImageShape, side: usize) -> ImageShape {
    ImageShape {
        channels: input.channels,
        height: side,
        width: side,
    }
}

#[cfg(test)]
mod tests;
