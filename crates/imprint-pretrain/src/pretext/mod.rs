//! Pretexts: what pre-training asks of the encoder's codes, each in a file of its own. A step
//! draws the views every pretext needs, runs the encoder on each, and sums the pretexts'
//! (weighted) losses.

mod contrastive;
mod reconstruction;
mod rotation;

pub(crate) use contrastive::{Contrastive, PROJECTION_WIDTH};
pub(crate) use reconstruction::Reconstruct;
pub(crate) use rotation::{Rotation, TURNS};

use crate::views::Views;
use imprint_nn::{ImprintDevice, Matrix, Params, Pass};
use imprint_train::Loss;

pub(crate) type Code<D> = Matrix<D, dfdx::prelude::OwnedTape<f32, D>>;

/// The encoder's codes of a batch's views; a pretext takes what it consumes.
pub(crate) struct Codes<D: ImprintDevice> {
    pub first: Option<Code<D>>,
    pub second: Option<Code<D>>,
}

impl<D: ImprintDevice> Codes<D> {
    /// The first view's code, for the one pretext that consumes it (the decoder).
    pub fn take_first(&mut self) -> Code<D> {
        self.first
            .take()
            .expect("the first view's code is the reconstruction's")
    }

    /// The second view's code, for the contrastive term.
    pub fn take_second(&mut self) -> Code<D> {
        self.second
            .take()
            .expect("the contrastive term needs a second view")
    }

    /// A copy of the first view's code under the same id, so that every reader's gradient
    /// meets in the encoder.
    pub fn first_copy(&self) -> Code<D> {
        match self.first.as_ref() {
            Some(z) => z.retaped(),
            None => unreachable!("the first view's code is read before the decoder takes it"),
        }
    }
}

pub(crate) trait Pretext<D: ImprintDevice>: Params<D> {
    /// Its weighted share of the step's loss.
    fn loss(&mut self, codes: &mut Codes<D>, views: &Views, pass: &mut Pass) -> Loss<D>;
}
