//! Rotation prediction (Gidaris et al. 2018, RotNet): each image of the first view is turned by
//! a multiple of 90° drawn for it, and a linear head on its code must say which.

use super::{Codes, Pretext};
use crate::views::Views;
use imprint_nn::loss::cross_entropy;
use imprint_nn::{Activation, ImprintDevice, Linear, Pass};
use imprint_train::Loss;

/// Turns a square image can take; an oblong one only 0° and 180°.
pub(crate) const TURNS: usize = 4;

pub(crate) struct Rotation<D: ImprintDevice> {
    /// Features to the four turns, `rotation.weight` `[4, features]`.
    pub head: Linear<D>,
    pub weight: f32,
}

imprint_nn::params!(Rotation { head as "rotation" });

impl<D: ImprintDevice> Pretext<D> for Rotation<D> {
    fn loss(&mut self, codes: &mut Codes<D>, views: &Views, _pass: &mut Pass) -> Loss<D> {
        let turns = views
            .turns
            .as_ref()
            .expect("views are turned for the rotation pretext");
        let code = codes.first_copy();
        let logits = self.head.forward(code, Activation::Identity, true);
        cross_entropy(logits, turns) * self.weight
    }
}
