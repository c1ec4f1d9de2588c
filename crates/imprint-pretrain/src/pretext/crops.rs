//! Multi-crop views (SwAV, Caron et al. 2020; DINO): small crops of each image beside the two
//! full-size views, cheap because they are small (an encoder that pools its maps reads any
//! size), each a random resized crop of a small share of the image.

use imprint_data::ImageShape;
use serde::{Deserialize, Serialize};

/// The small crops a method reads, flattened into its entry of `pretexts`:
/// `local_crops = 6, local_size = 16, local_scale = [0.05, 0.4]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalCrops {
    /// How many per image; 0 for none.
    pub local_crops: usize,
    /// Their side in pixels; by default half the input's height (16 for CIFAR's 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_size: Option<usize>,
    /// The range of the share of the image's area a crop covers (DINO's 0.05-0.4).
    pub local_scale: (f64, f64),
}

impl Default for LocalCrops {
    fn default() -> Self {
        Self {
            local_crops: 0,
            local_size: None,
            local_scale: (0.05, 0.4),
        }
    }
}

impl LocalCrops {
    /// The crops' shape on images of `input`.
    pub fn shape(&self, input: ImageShape) -> ImageShape {
        let side = self.local_size.unwrap_or(input.height / 2);
        super::crop_shape(input, side)
    }

    /// `Some(self)` when there are crops to draw.
    pub(crate) fn some(self) -> Option<Self> {
        (self.local_crops > 0).then_some(self)
    }

    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.local_size == Some(0) {
            return Some(("local_size", "must be at least 1 pixel".into()));
        }
        let (lo, hi) = self.local_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Some((
                "local_scale",
                "must be a range low <= high within (0, 1]".into(),
            ));
        }
        None
    }

    /// ", 6 local crops of 16 px (5-40% of the image)", or nothing without crops.
    pub(crate) fn describe(&self) -> String {
        if self.local_crops == 0 {
            return String::new();
        }
        let size = match self.local_size {
            Some(side) => format!("{side} px"),
            None => "half size".into(),
        };
        let (lo, hi) = self.local_scale;
        format!(
            ", {} local crops of {size} ({}-{}% of the image)",
            self.local_crops,
            lo * 100.0,
            hi * 100.0
        )
    }
}
