//! Reconstruction, denoising and masked autoencoding: a decoder draws the target image from the
//! first view's code (the view corrupted by `noise`); with `loss_on_hidden_only`, only the
//! hidden pixels are scored.

use super::{weighted, Batch, Method, Pretext, Share, ViewNeeds};
use crate::{Noise, PretrainConfig, Result};
use imprint_data::ImageShape;
use imprint_nn::loss::{reconstruction_loss, weighted_reconstruction_loss, Reconstruction};
use imprint_nn::{Decoder, Encoder, ImprintDevice, Matrix, Pass};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `{ kind = "reconstruction", weight = 1.0, loss = "mse", loss_on_hidden_only = false,
/// augment_as_noise = false }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
    /// `mse` between the sigmoid of the decoder's logits and the image, or `bce` on the logits.
    pub loss: Reconstruction,
    /// With `noise = { kind = "patches", ... }`: score only the hidden pixels, as masked
    /// autoencoders do.
    pub loss_on_hidden_only: bool,
    /// Make the augmentation part of the corruption: the encoder sees the moved image, the
    /// decoder must draw the original, so the code learns to ignore the moves, as a classifier
    /// must. Off: input and target move alike.
    pub augment_as_noise: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            weight: 1.0,
            loss: Reconstruction::Mse,
            loss_on_hidden_only: false,
            augment_as_noise: false,
        }
    }
}

impl Method for Settings {
    fn weight(&self) -> f64 {
        self.weight
    }

    fn views(&self) -> ViewNeeds {
        ViewNeeds {
            global: 1,
            original_target: self.augment_as_noise,
            ..ViewNeeds::default()
        }
    }

    fn problem(&self, cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        if self.loss_on_hidden_only && !matches!(cfg.noise, Noise::Patches { .. }) {
            return Some((
                "loss_on_hidden_only",
                "needs noise = { kind = \"patches\", ... }".into(),
            ));
        }
        if self.augment_as_noise && cfg.augment.is_identity() {
            return Some((
                "augment_as_noise",
                "needs augmentation (augment_shift, augment_rotate, augment_flip or \
                 augment_scale)"
                    .into(),
            ));
        }
        if self.augment_as_noise && self.loss_on_hidden_only {
            return Some((
                "augment_as_noise",
                "cannot go with loss_on_hidden_only: the hidden pixels are those of the moved \
                 image, the target is the original"
                    .into(),
            ));
        }
        None
    }

    fn describe(&self) -> String {
        let loss = match self.loss {
            Reconstruction::Mse => "MSE loss",
            Reconstruction::Bce => "BCE loss",
        };
        let hidden = if self.loss_on_hidden_only {
            " on the hidden pixels"
        } else {
            ""
        };
        let original = if self.augment_as_noise {
            " of the original (the moves as noise)"
        } else {
            ""
        };
        let weight = if self.weight == 1.0 {
            String::new()
        } else {
            format!(" x{}", self.weight)
        };
        format!("{loss}{hidden}{original}{weight}")
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        Ok(Box::new(Net {
            decoder: Decoder::new(dev, &encoder.architecture, encoder.input, rng)?,
            settings: self.clone(),
            shape: encoder.input,
        }))
    }
}

struct Net<D: ImprintDevice> {
    decoder: Decoder<D>,
    settings: Settings,
    shape: ImageShape,
}

imprint_nn::params!(Net { decoder });

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D> {
        let z = batch.codes.global(0);
        let dev = z.device().clone();
        let views = batch.views;
        let shape = (views.target.len() / self.shape.len(), self.shape.len());
        let y: Matrix<D> = dev.tensor_from_vec(views.target.clone(), shape);
        let logits = self.decoder.forward(z, pass);
        let loss = if self.settings.loss_on_hidden_only {
            let mask: Matrix<D> = dev.tensor_from_vec(views.hidden.clone(), shape);
            let loss = weighted_reconstruction_loss(self.settings.loss, logits, y, mask);
            hidden_share(loss, &views.hidden, &batch.share)
        } else {
            batch
                .share
                .weigh(reconstruction_loss(self.settings.loss, logits, y))
        };
        weighted(loss, self.settings.weight)
    }

    fn heldout_loss(&mut self, encoder: &mut Encoder<D>, x: Matrix<D>) -> Option<f32> {
        let code = encoder.forward(x.clone(), &mut Pass::eval());
        let logits = self.decoder.forward(code, &mut Pass::eval());
        Some(reconstruction_loss(self.settings.loss, logits, x).as_vec()[0])
    }

    fn into_decoder(self: Box<Self>) -> Option<Decoder<D>> {
        Some(self.decoder)
    }
}

/// This replica's part of a loss that is a mean over the hidden pixels of its share (`hidden`
/// marks them): the parts of all replicas add up to the mean over the global batch's.
fn hidden_share<D: ImprintDevice>(loss: Loss<D>, hidden: &[f32], share: &Share) -> Loss<D> {
    if share.rows.len() == share.total {
        return loss;
    }
    let own: f32 = hidden.iter().sum();
    let mut all = [own];
    share.replicas.sum(&mut all);
    loss * (own.max(1.0) / all[0].max(1.0))
}
