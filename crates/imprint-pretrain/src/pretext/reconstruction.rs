//! Reconstruction, denoising and masked autoencoding: a decoder draws the target image from the
//! first view's code; with `loss_on_hidden_only`, only the hidden pixels are scored.

use super::{Codes, Pretext};
use crate::views::Views;
use imprint_data::ImageShape;
use imprint_nn::loss::{reconstruction_loss, weighted_reconstruction_loss, Reconstruction};
use imprint_nn::{Decoder, ImprintDevice, Matrix, Pass};
use imprint_train::Loss;

pub(crate) struct Reconstruct<D: ImprintDevice> {
    pub decoder: Decoder<D>,
    pub loss: Reconstruction,
    pub hidden_only: bool,
    pub weight: f32,
    pub shape: ImageShape,
}

imprint_nn::params!(Reconstruct { decoder });

impl<D: ImprintDevice> Pretext<D> for Reconstruct<D> {
    fn loss(&mut self, codes: &mut Codes<D>, views: &Views, pass: &mut Pass) -> Loss<D> {
        let z = codes.take_first();
        let dev = z.device().clone();
        let shape = (views.target.len() / self.shape.len(), self.shape.len());
        let y: Matrix<D> = dev.tensor_from_vec(views.target.clone(), shape);
        let logits = self.decoder.forward(z, pass);
        let loss = if self.hidden_only {
            let mask: Matrix<D> = dev.tensor_from_vec(views.hidden.clone(), shape);
            weighted_reconstruction_loss(self.loss, logits, y, mask)
        } else {
            reconstruction_loss(self.loss, logits, y)
        };
        // Unweighted as it always was when alone: scaling by 1 would be one more op.
        if self.weight == 1.0 {
            loss
        } else {
            loss * self.weight
        }
    }
}
