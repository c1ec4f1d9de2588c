//! Rotation prediction (Gidaris et al. 2018, RotNet): each image of the first view is turned by
//! a multiple of 90° drawn for it, and a linear head on its code must say which. The other
//! methods of the run see the first view turned too.

use super::{weighted, Batch, Method, Pretext, ViewNeeds};
use crate::{PretrainConfig, Result};
use imprint_nn::loss::cross_entropy;
use imprint_nn::{Activation, Encoder, ImprintDevice, Linear, Pass};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Turns a square image can take; an oblong one only 0° and 180°.
const TURNS: usize = 4;

/// `{ kind = "rotation", weight = 1.0 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { weight: 1.0 }
    }
}

impl Method for Settings {
    fn weight(&self) -> f64 {
        self.weight
    }

    fn views(&self) -> ViewNeeds {
        ViewNeeds {
            global: 1,
            turned: true,
            ..ViewNeeds::default()
        }
    }

    fn problem(&self, _cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        None
    }

    fn describe(&self) -> String {
        format!("rotation prediction x{}", self.weight)
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        Ok(Box::new(Net {
            head: Linear::new(dev, encoder.features(), TURNS, rng),
            weight: self.weight,
        }))
    }
}

struct Net<D: ImprintDevice> {
    /// Features to the four turns, `rotation.weight` `[4, features]`.
    head: Linear<D>,
    weight: f64,
}

imprint_nn::params!(Net { head as "rotation" });

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, _pass: &mut Pass) -> Loss<D> {
        let turns = batch
            .views
            .turns
            .as_ref()
            .expect("views are turned for the rotation pretext");
        let logits = self
            .head
            .forward(batch.codes.global(0), Activation::Identity, true);
        weighted(batch.share.weigh(cross_entropy(logits, turns)), self.weight)
    }
}
