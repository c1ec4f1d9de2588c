//! The contrastive term (NT-Xent, SimCLR's loss): a projection head maps the codes of two views
//! of each image, and each view must pick its twin out of all views of the batch.
//!
//! With small crops (`local_crops > 0`), each crop is a further positive of each full-size view
//! and never of another crop, as SwAV and DINO pair them: the loss is the mean of the NT-Xent of
//! the two full-size views and that of every (full-size view, crop) pair, each over its own two
//! batches of views, so a crop's negatives are the other images' views of that pair.
//!
//! In a data-parallel run the batch is the global one: every replica gathers the projections
//! of every share ([`gather_rows`]), so that each view meets the whole global batch as
//! negatives, and takes the whole loss on them, the same bits on every replica; its own rows
//! carry that loss's gradient back into its share of the encoder ([`replicated`]).

use super::{
    gather_rows, mlp_bn, replicated, weighted, Batch, LocalCrops, Method, Pretext, ViewNeeds,
};
use crate::{PretrainConfig, Result};
use dfdx::prelude::*;
use imprint_nn::layers::Act;
use imprint_nn::loss::contrastive_loss;
use imprint_nn::models::mlp;
use imprint_nn::{Encoder, ImprintDevice, Pass, Sequential};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `{ kind = "contrastive", weight = 1.0, temperature = 0.5, dim = 64 }`, with optional
/// small crops ([`LocalCrops`]). The projection head the loss reads (thrown away after
/// pre-training) is `features -> hidden -> dim` with a ReLU between; `batch_norm = true` puts
/// batch norm before the ReLU, as SimCLR's and lightly's heads do (`hidden = 512, dim = 128,
/// batch_norm = true` is the `SimCLRProjectionHead(512, 512, 128)` of lightly's examples, on a
/// 512-wide ResNet-18).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
    /// Of the cosine similarities.
    pub temperature: f64,
    /// Width of the head's hidden layer; by default the encoder's features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// Width of the projections the loss compares.
    pub dim: usize,
    /// Batch norm after the head's hidden layer.
    pub batch_norm: bool,
    #[serde(flatten)]
    pub crops: LocalCrops,
}

impl Settings {
    /// Weight `weight` at `temperature`, the default head, without crops.
    pub fn new(weight: f64, temperature: f64) -> Self {
        Self {
            weight,
            temperature,
            hidden: None,
            dim: 64,
            batch_norm: false,
            crops: LocalCrops::default(),
        }
    }
}

// With ten classes a tenth of a batch's negatives are the same digit; 0.1 pushes those apart as
// hard as the rest, and left MNIST's frozen codes 1.6-1.8 points worse than 0.5 at k = 10, on the
// test set and on a dev split (pipelines/mnist-conv.md).
impl Default for Settings {
    fn default() -> Self {
        Self::new(1.0, 0.5)
    }
}

impl Method for Settings {
    fn weight(&self) -> f64 {
        self.weight
    }

    fn views(&self) -> ViewNeeds {
        ViewNeeds {
            global: 2,
            local: self.crops.some(),
            ..ViewNeeds::default()
        }
    }

    fn problem(&self, _cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Some(("temperature", "must be a positive number".into()));
        }
        if self.hidden == Some(0) {
            return Some(("hidden", "must be at least 1".into()));
        }
        if self.dim == 0 {
            return Some(("dim", "must be at least 1".into()));
        }
        self.crops.problem()
    }

    fn describe(&self) -> String {
        let default = Self::new(self.weight, self.temperature);
        let head = if (self.hidden, self.dim, self.batch_norm)
            == (default.hidden, default.dim, default.batch_norm)
        {
            String::new()
        } else {
            let hidden = self.hidden.map_or("the features".into(), |h| h.to_string());
            let norm = if self.batch_norm { " with batch norm" } else { "" };
            format!(", projections of {} through {hidden} hidden{norm}", self.dim)
        };
        format!(
            "contrastive x{} at temperature {}{head}{}",
            self.weight,
            self.temperature,
            self.crops.describe()
        )
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        let latent = encoder.features();
        let widths = [latent, self.hidden.unwrap_or(latent), self.dim];
        let projection = match self.batch_norm {
            true => mlp_bn(dev, &widths, rng),
            false => mlp(dev, &widths, rng),
        };
        Ok(Box::new(Net {
            projection,
            temperature: self.temperature as f32,
            weight: self.weight,
        }))
    }
}

struct Net<D: ImprintDevice> {
    projection: Sequential<D>,
    temperature: f32,
    weight: f64,
}

imprint_nn::params!(Net { projection });

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D> {
        let mut project = |code| {
            self.projection
                .forward(Act::Flat(code), pass, true)
                .into_flat()
        };
        let mut projected: Vec<_> = batch.codes.all().into_iter().map(&mut project).collect();
        let shared = batch.share.replicas.size() > 1;
        if shared {
            projected = projected
                .into_iter()
                .map(|p| gather_rows(p, &batch.share))
                .collect();
        }
        let whole = |loss| match shared {
            true => replicated(loss, &batch.share),
            false => loss,
        };
        let mut views = projected.into_iter();
        let (Some(a), Some(b)) = (views.next(), views.next()) else {
            unreachable!("the contrastive term draws two full-size views")
        };
        let crops: Vec<_> = views.collect();
        if crops.is_empty() {
            return weighted(whole(contrastive_loss(a, b, self.temperature)), self.weight);
        }
        // Every projection takes part in several pairs: each pair reads copies under the same
        // ids, and the projections' own tapes join the sum at the end.
        let mut pairs = vec![(&a, &b)];
        for crop in &crops {
            pairs.push((&a, crop));
            pairs.push((&b, crop));
        }
        let count = pairs.len() as f32;
        let mut total: Option<Loss<D>> = None;
        for (x, y) in pairs {
            let term = contrastive_loss(x.retaped(), y.retaped(), self.temperature);
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
        let (sum, mut tape) = total.expect("at least one pair").split_tape();
        for p in [a, b].into_iter().chain(crops) {
            tape = tape.merge(p.split_tape().1);
        }
        weighted(whole(sum.put_tape(tape) / count), self.weight)
    }
}
