//! The contrastive term (NT-Xent, SimCLR's loss): a projection head maps the codes of two views
//! of each image, and each view must pick its twin out of all views of the batch.

use super::{Codes, Pretext};
use crate::views::Views;
use imprint_nn::loss::contrastive_loss;
use imprint_nn::{ImprintDevice, Pass, Sequential};
use imprint_train::Loss;

/// Width of the projection head the contrastive term sees (thrown away after pre-training).
pub(crate) const PROJECTION_WIDTH: usize = 64;

pub(crate) struct Contrastive<D: ImprintDevice> {
    pub projection: Sequential<D>,
    pub temperature: f32,
    pub weight: f32,
}

imprint_nn::params!(Contrastive { projection });

impl<D: ImprintDevice> Pretext<D> for Contrastive<D> {
    fn loss(&mut self, codes: &mut Codes<D>, _views: &Views, pass: &mut Pass) -> Loss<D> {
        use imprint_nn::layers::Act;
        let second = codes.take_second();
        let first = codes.first_copy();
        let a = self
            .projection
            .forward(Act::Flat(first), pass, true)
            .into_flat();
        let b = self
            .projection
            .forward(Act::Flat(second), pass, true)
            .into_flat();
        contrastive_loss(a, b, self.temperature) * self.weight
    }
}
