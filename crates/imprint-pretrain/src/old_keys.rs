//! The keys that named the pretexts before `[pretrain] pretexts` did: `reconstruction_weight`,
//! `loss`, `loss_on_hidden_only`, `augment_as_noise`, `contrast_weight`,
//! `contrast_temperature` and `rotation_weight`. Files that use them, and the `pipeline.toml`
//! that older runs left in their output folders, keep working: the keys are translated into
//! the list they mean, ordered so that the run draws, sums and differentiates exactly as it
//! did. A section that writes both spellings is refused, naming the new one.

use crate::pretext::{contrastive, reconstruction, rotation, PretextConfig};
use imprint_nn::loss::Reconstruction;
use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct OldKeys {
    reconstruction_weight: Option<f64>,
    loss: Option<Reconstruction>,
    loss_on_hidden_only: Option<bool>,
    augment_as_noise: Option<bool>,
    contrast_weight: Option<f64>,
    contrast_temperature: Option<f64>,
    rotation_weight: Option<f64>,
}

impl OldKeys {
    /// The keys given, with how `pretexts` spells each.
    fn given(&self) -> Vec<(&'static str, &'static str)> {
        let keys = [
            (
                self.reconstruction_weight.is_some(),
                "reconstruction_weight",
                "{ kind = \"reconstruction\", weight = ... }",
            ),
            (
                self.loss.is_some(),
                "loss",
                "{ kind = \"reconstruction\", loss = ... }",
            ),
            (
                self.loss_on_hidden_only.is_some(),
                "loss_on_hidden_only",
                "{ kind = \"reconstruction\", loss_on_hidden_only = ... }",
            ),
            (
                self.augment_as_noise.is_some(),
                "augment_as_noise",
                "{ kind = \"reconstruction\", augment_as_noise = ... }",
            ),
            (
                self.contrast_weight.is_some(),
                "contrast_weight",
                "{ kind = \"contrastive\", weight = ... }",
            ),
            (
                self.contrast_temperature.is_some(),
                "contrast_temperature",
                "{ kind = \"contrastive\", temperature = ... }",
            ),
            (
                self.rotation_weight.is_some(),
                "rotation_weight",
                "{ kind = \"rotation\", weight = ... }",
            ),
        ];
        keys.into_iter()
            .filter(|(given, _, _)| *given)
            .map(|(_, key, spelling)| (key, spelling))
            .collect()
    }

    /// The pretexts of a section that wrote `pretexts` as `written` and these keys.
    pub fn pretexts(
        self,
        written: Option<Vec<PretextConfig>>,
    ) -> Result<Vec<PretextConfig>, String> {
        let given = self.given();
        match (written, given.first()) {
            (Some(list), None) => Ok(list),
            (Some(_), Some((key, spelling))) => Err(format!(
                "`{key}` is the spelling from before `pretexts`, which this section also \
                 sets: write it in `pretexts` as {spelling}"
            )),
            (None, _) => self.translate(),
        }
    }

    /// The list the keys meant, in the order the losses were taken: the contrastive term and
    /// rotation prediction where their weights are above 0, then reconstruction (weight 1
    /// unless set to 0), which consumed the first view's code last. The heads are drawn in the
    /// registry's order, which is the order they were drawn in. All weights 0 give an empty
    /// list.
    fn translate(self) -> Result<Vec<PretextConfig>, String> {
        let weight = |value: Option<f64>, default: f64, key: &str| {
            let w = value.unwrap_or(default);
            if w >= 0.0 && w.is_finite() {
                Ok(w)
            } else {
                Err(format!("`{key}` must be a non-negative number"))
            }
        };
        let mut list = Vec::new();
        let contrast = weight(self.contrast_weight, 0.0, "contrast_weight")?;
        if contrast > 0.0 {
            let temperature = self
                .contrast_temperature
                .unwrap_or(contrastive::Settings::default().temperature);
            list.push(PretextConfig::Contrastive(contrastive::Settings::new(
                contrast,
                temperature,
            )));
        }
        let rotation = weight(self.rotation_weight, 0.0, "rotation_weight")?;
        if rotation > 0.0 {
            list.push(PretextConfig::Rotation(rotation::Settings {
                weight: rotation,
            }));
        }
        let reconstruction = weight(self.reconstruction_weight, 1.0, "reconstruction_weight")?;
        if reconstruction > 0.0 {
            list.push(PretextConfig::Reconstruction(reconstruction::Settings {
                weight: reconstruction,
                loss: self.loss.unwrap_or(Reconstruction::Mse),
                loss_on_hidden_only: self.loss_on_hidden_only.unwrap_or(false),
                augment_as_noise: self.augment_as_noise.unwrap_or(false),
            }));
        }
        // All weights 0 gives an empty list, which the settings' check refuses; not here, so
        // that `--set`s passing through it on their way (`contrast_weight=0.0
        // rotation_weight=1.0` on a file with `reconstruction_weight = 0.0`) still read.
        Ok(list)
    }
}
