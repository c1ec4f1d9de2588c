//! The pipeline file: which data feeds which stage, the architecture, pre-training and
//! fine-tuning settings, and the comparison grid. Each library crate owns its section's type;
//! this file only nests them. Unknown keys, wrong types and missing fields are rejected with the
//! key and line, as the TOML parser reports them.
//!
//! Every section is optional: one a file leaves out (and every section, with no file at all) is
//! the built-in one of `defaults.toml`, settings for colour photos on a CPU.

use crate::{PipelineError, Result};
use imprint_data::augment::Augment;
use imprint_data::{default_cache_dir, ImageShape, Preprocess, Storage, DEFAULT_MEMORY_BUDGET_MB};
use imprint_finetune::{FinetuneConfig, Strategy};
use imprint_fs::Input;
use imprint_nn::Precision;
use imprint_pretrain::{Noise, PretrainConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The built-in pipeline: what a job runs with no pipeline file, and the sections a file
/// leaves out.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// How an error names the built-in pipeline.
const BUILT_IN: &str = "built-in pipeline";

/// [`DEFAULTS_TOML`] read once. It names every section, so reading it needs no default.
static DEFAULTS: LazyLock<Pipeline> = LazyLock::new(|| {
    toml::from_str(DEFAULTS_TOML)
        .unwrap_or_else(|e| panic!("the built-in defaults.toml does not parse: {e}"))
});

/// The sections of a pipeline file that take the built-in one when left out.
const SECTIONS: [&str; 4] = ["data", "pretrain", "finetune", "compare"];

fn default_data() -> DataConfig {
    DEFAULTS.data.clone()
}
fn default_pretrain() -> PretrainConfig {
    DEFAULTS.pretrain.clone()
}
fn default_finetune() -> FinetuneConfig {
    DEFAULTS.finetune.clone()
}
fn default_compare() -> CompareConfig {
    DEFAULTS.compare.clone()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Short name, used for the default output folder; by default the pipeline file's name,
    /// or the data folder's with no file.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_data")]
    pub data: DataConfig,
    #[serde(default = "default_pretrain")]
    pub pretrain: PretrainConfig,
    #[serde(default = "default_finetune")]
    pub finetune: FinetuneConfig,
    /// `[finetune_by_budget.K]`: `[finetune]` keys whose values replace that section's for the
    /// runs with K labels per class (fewer steps for fewer labels, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub finetune_by_budget: BTreeMap<String, toml::Table>,
    #[serde(default = "default_compare")]
    pub compare: CompareConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Images for pre-training; their labels, if any, are never read. By default the labeled
    /// images (their test part kept out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlabeled: Option<PathBuf>,
    /// Labeled images the few-label subsets are drawn from; a pre-training alone needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labeled: Option<PathBuf>,
    /// Test images; when absent, `test_fraction` of `labeled` is held out (and kept out of
    /// pre-training when `unlabeled` is the same source).
    #[serde(default)]
    pub test: Option<PathBuf>,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Seed of the train/test split, fixed across run seeds so every run meets the same test set.
    #[serde(default)]
    pub split_seed: u64,
    /// At most this many unlabeled images (a seeded random subset); 0 = all.
    #[serde(default)]
    pub max_unlabeled: usize,
    /// Applied to every source, so target images take the encoder's input shape.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// What to do with an image the labeled source holds more than once (by content): refuse
    /// the source, or keep one copy (and drop images listed under two labels).
    #[serde(default)]
    pub duplicates: Duplicates,
    /// Accept test images that also appear (by content) among the labeled or unlabeled ones;
    /// the report then says how many.
    #[serde(default)]
    pub allow_test_overlap: bool,
    /// How far apart (in bits of 64) two images' perceptual fingerprints may be for the pair to
    /// count as copies when their pixels also correlate (a re-encoded or re-saved photo): such
    /// pairs within the labeled images fall under `duplicates`, and test images near a labeled
    /// or unlabeled one under `allow_test_overlap`. `"off"` skips the check.
    #[serde(default)]
    pub near_duplicate_distance: NearDuplicates,
    /// Decoded images beyond this many MiB are not held in memory: an uncompressed idx file is
    /// read from disk image by image, other sources through a cache file of their 8-bit pixels,
    /// and images being decoded at once take about this much at most. Inference (test scores,
    /// the kNN monitor, self-training's teacher) runs as many images at once as a quarter of it
    /// holds the activations of. Changes speed and memory, never results.
    #[serde(default = "default_memory_budget_mb")]
    pub memory_budget_mb: u64,
    /// Where file digests and the image caches of large sources are kept; by default
    /// `$IMPRINT_CACHE_DIR`, else `$XDG_CACHE_HOME/imprint`, else `~/.cache/imprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

impl DataConfig {
    /// The labeled images, or an error saying how to give them.
    pub fn labeled(&self) -> Result<&Path> {
        self.labeled.as_deref().ok_or_else(|| PipelineError::Input {
            path: "data.labeled".into(),
            message: "no labeled images given: pass --labeled (a folder with a sub-folder per \
                      class, or a CSV list of path,label) or set data.labeled in a pipeline file"
                .into(),
        })
    }

    /// The images pre-training reads: `unlabeled`, else the labeled ones; an error saying how
    /// to give them when there are neither.
    pub fn unlabeled(&self) -> Result<&Path> {
        match (&self.unlabeled, &self.labeled) {
            (Some(path), _) | (None, Some(path)) => Ok(path),
            (None, None) => Err(PipelineError::Input {
                path: "data.unlabeled".into(),
                message: "no images given: pass --unlabeled (a folder of images, a CSV list or \
                          an idx file) or set data.unlabeled in a pipeline file"
                    .into(),
            }),
        }
    }

    /// A name for runs of this data: the labeled (else unlabeled) source's file or folder name.
    fn folder_name(&self) -> String {
        self.labeled
            .as_deref()
            .or(self.unlabeled.as_deref())
            .and_then(Path::file_stem)
            .map_or("imprint".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The memory budget and cache folder loading works within.
    pub fn storage(&self) -> Storage {
        Storage {
            cache_dir: self.cache_dir.clone().or_else(default_cache_dir),
            ..Storage::default()
        }
        .with_budget_mb(self.memory_budget_mb)
    }
}

fn default_memory_budget_mb() -> u64 {
    DEFAULT_MEMORY_BUDGET_MB
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duplicates {
    #[default]
    Refuse,
    Collapse,
}

/// `data.near_duplicate_distance`: a number of bits, or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearDuplicates {
    Off,
    Within(u32),
}

impl NearDuplicates {
    /// Measured on CIFAR-10 (docs/leakage.md): every JPEG re-encode and PNG re-save within 4
    /// bits of its original, and the fewest distinct images flagged.
    pub const DEFAULT_DISTANCE: u32 = 4;
    /// Past this the fingerprints of distinct images meet by the thousand and the search slows.
    pub const MAX_DISTANCE: u32 = 16;

    /// The distance checked within, if the check is on.
    pub fn distance(self) -> Option<u32> {
        match self {
            NearDuplicates::Off => None,
            NearDuplicates::Within(d) => Some(d),
        }
    }
}

impl std::str::FromStr for NearDuplicates {
    type Err = String;

    /// `off`, or a number of bits up to [`NearDuplicates::MAX_DISTANCE`] (as given to a flag).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "off" => Ok(NearDuplicates::Off),
            t => match t.parse::<u32>() {
                Ok(d) if d <= Self::MAX_DISTANCE => Ok(NearDuplicates::Within(d)),
                _ => Err(format!(
                    "`{s}`: expected a number of bits from 0 to {} or \"off\"",
                    Self::MAX_DISTANCE
                )),
            },
        }
    }
}

impl std::fmt::Display for NearDuplicates {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            NearDuplicates::Off => write!(f, "off"),
            NearDuplicates::Within(d) => write!(f, "{d}"),
        }
    }
}

impl Default for NearDuplicates {
    fn default() -> Self {
        NearDuplicates::Within(Self::DEFAULT_DISTANCE)
    }
}

impl Serialize for NearDuplicates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            NearDuplicates::Off => s.serialize_str("off"),
            NearDuplicates::Within(d) => s.serialize_u32(*d),
        }
    }
}

impl<'de> Deserialize<'de> for NearDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NearDuplicates;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a number of bits from 0 to {} or \"off\"",
                    NearDuplicates::MAX_DISTANCE
                )
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(d) if d <= NearDuplicates::MAX_DISTANCE => Ok(NearDuplicates::Within(d)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(d) if d <= NearDuplicates::MAX_DISTANCE => Ok(NearDuplicates::Within(d)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                match v {
                    "off" => Ok(NearDuplicates::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn default_test_fraction() -> f64 {
    0.3
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    pub strategies: Vec<Strategy>,
    pub labels_per_class: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Where the encoders of the strategies that start from one come from; each route runs
    /// every such strategy (`scratch` starts fresh, once).
    #[serde(default = "default_routes")]
    pub routes: Vec<Route>,
    /// The network the `imported` routes start from (a `model.safetensors` or an
    /// `encoder.safetensors` with its sidecar, e.g. written by `imprint import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<PathBuf>,
    /// Pre-train once, with the first seed, and fine-tune every seed from that encoder (seeds
    /// then vary the labeled subsets, heads and batches only): for budgets where one
    /// pre-training per seed does not fit.
    #[serde(default)]
    pub pretrain_once: bool,
}

/// Where a compared strategy's encoder starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Route {
    /// Pre-trained here, on the unlabeled images.
    #[serde(rename = "self")]
    SelfSupervised,
    /// The network of `compare.imported`, as it is.
    #[serde(rename = "imported")]
    Imported,
    /// The network of `compare.imported`, pre-trained further here on the unlabeled images.
    #[serde(rename = "imported+self")]
    ImportedThenSelf,
}

impl Route {
    /// How `results.csv` names a strategy run from this route: the plain name for `self`,
    /// prefixed otherwise (`imported:full`).
    pub fn record_name(self, strategy: Strategy) -> String {
        match self {
            Route::SelfSupervised => strategy.name().to_string(),
            Route::Imported => format!("imported:{}", strategy.name()),
            Route::ImportedThenSelf => format!("imported+self:{}", strategy.name()),
        }
    }

    /// Whether the route pre-trains here.
    pub fn pretrains(self) -> bool {
        self != Route::Imported
    }
}

fn default_routes() -> Vec<Route> {
    vec![Route::SelfSupervised]
}

impl Pipeline {
    /// Reads and checks a pipeline file; relative data paths are taken from the working directory.
    pub fn from_file(path: &Path) -> Result<Pipeline> {
        Self::from_file_with_settings(path, &[])
    }

    /// [`Pipeline::from_file`], then `settings` (`section.key=value`, as given to `--set`)
    /// replace or add single keys; the result is checked as a whole file would be, once every
    /// setting is in (so settings that only fit together are accepted in any order).
    pub fn from_file_with_settings(path: &Path, settings: &[String]) -> Result<Pipeline> {
        let pipeline = Self::read_with_settings(path, settings)?;
        pipeline
            .validate()
            .map_err(|m| settings_error(&path.display().to_string(), settings, m))?;
        Ok(pipeline)
    }

    /// [`Pipeline::from_file_with_settings`] with a command line's `overrides` in before the
    /// values are checked, so that a flag may settle what the file alone leaves open
    /// (`--test DIR` with `data.test_fraction = 0`). A problem is blamed on the file and its
    /// settings when they have the same one without the flags, else on the command line.
    pub fn from_file_with_overrides(
        path: &Path,
        settings: &[String],
        overrides: &Overrides,
    ) -> Result<Pipeline> {
        let read = Self::read_with_settings(path, settings)?;
        Self::checked_with(read, &path.display().to_string(), settings, overrides)
    }

    /// The built-in pipeline ([`DEFAULTS_TOML`]) with `settings` and `overrides`, for a job run
    /// without a pipeline file; its name is the data folder's.
    pub fn defaults_with_overrides(settings: &[String], overrides: &Overrides) -> Result<Pipeline> {
        let read = Self::with_settings(DEFAULTS_TOML, BUILT_IN, settings)?;
        Self::checked_with(read, BUILT_IN, settings, overrides)
    }

    /// `read` with `overrides` in, checked; a problem is blamed on `shown` and its settings when
    /// they have it without the flags, else on the command line.
    fn checked_with(
        read: Pipeline,
        shown: &str,
        settings: &[String],
        overrides: &Overrides,
    ) -> Result<Pipeline> {
        let mut pipeline = read.clone();
        overrides.set(&mut pipeline);
        if let Err(m) = pipeline.validate() {
            return Err(if read.validate().err().as_ref() == Some(&m) {
                settings_error(shown, settings, m)
            } else {
                PipelineError::Input {
                    path: "command line".into(),
                    message: m,
                }
            });
        }
        Ok(pipeline)
    }

    /// The file with `settings` in, its keys and types checked, its values not yet; a file
    /// without a name is named after itself.
    fn read_with_settings(path: &Path, settings: &[String]) -> Result<Pipeline> {
        let mut p = Self::with_settings(&read_text(path)?, &path.display().to_string(), settings)?;
        if p.name.is_empty() {
            p.name = path
                .file_stem()
                .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        }
        Ok(p)
    }

    /// The pipeline `text` (read from `shown`) with `settings` in, unchecked.
    fn with_settings(text: &str, shown: &str, settings: &[String]) -> Result<Pipeline> {
        let bad = |message: String| PipelineError::Input {
            path: shown.to_string(),
            message,
        };
        let mut pipeline = Self::parse(text, shown)?;
        let mut table: toml::Table = text.parse().map_err(|e| bad(one_line(&e, text)))?;
        // Keys and types are checked after each setting, so that an error names the setting
        // that caused it.
        for setting in settings {
            let named = |m: String| bad(format!("--set `{setting}`: {m}"));
            set_key(&mut table, setting).map_err(named)?;
            pipeline = toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| named(plain(e.message())))?;
        }
        Ok(pipeline)
    }

    /// Reads a pipeline's keys and types, without checking the values.
    fn parse(text: &str, shown: &str) -> Result<Pipeline> {
        toml::from_str(text).map_err(|e| PipelineError::Input {
            path: shown.to_string(),
            message: one_line(&e, text),
        })
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Pipeline> {
        let pipeline = Self::parse(text, &path.display().to_string())?;
        pipeline
            .validate()
            .map_err(|message| PipelineError::Input {
                path: path.display().to_string(),
                message,
            })?;
        Ok(pipeline)
    }

    /// The fine-tuning settings of the runs with `k` labels per class: `[finetune]` with the
    /// keys of `[finetune_by_budget.k]` replaced.
    pub fn finetune_for(&self, k: usize) -> std::result::Result<FinetuneConfig, String> {
        let Some(changes) = self.finetune_by_budget.get(&k.to_string()) else {
            return Ok(self.finetune.clone());
        };
        let at = |e: &dyn std::fmt::Display| format!("finetune_by_budget.{k}: {e}");
        let mut table = toml::Table::try_from(&self.finetune).map_err(|e| at(&e))?;
        table.extend(changes.clone());
        let config: FinetuneConfig = table.try_into().map_err(|e| at(&e))?;
        config.validate().map_err(|e| at(&e))?;
        step_problem(&format!("finetune_by_budget.{k}"), &config)?;
        Ok(config)
    }

    /// What a job of this pipeline (read from `file`) reads, which its outputs must leave alone:
    /// the file (none for the built-in pipeline), the data sources, the imported network and the
    /// image cache folder.
    pub fn inputs(&self, file: Option<&Path>) -> Vec<Input> {
        let d = &self.data;
        let mut inputs: Vec<Input> = file
            .map(|f| Input::new("the pipeline file", f))
            .into_iter()
            .collect();
        if let Some(unlabeled) = &d.unlabeled {
            inputs.push(Input::new("data.unlabeled", unlabeled));
        }
        if let Some(labeled) = &d.labeled {
            inputs.push(Input::new("data.labeled", labeled));
        }
        if let Some(test) = &d.test {
            inputs.push(Input::new("data.test", test));
        }
        if let Some(imported) = &self.compare.imported {
            inputs.extend(crate::checkpoint_inputs("compare.imported", imported));
        }
        if let Some(cache) = d.storage().cache_dir {
            inputs.push(Input::new("the image cache folder", cache));
        }
        inputs
    }

    /// This pipeline as the runs with `k` labels per class see it ([`Pipeline::finetune_for`]).
    pub fn for_budget(&self, k: usize) -> Result<Pipeline> {
        let mut p = self.clone();
        p.finetune = self.finetune_for(k).map_err(PipelineError::Output)?;
        p.finetune_by_budget.clear();
        Ok(p)
    }

    /// Checks that hold across sections; each section checks its own settings too.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // The output folder keeps the resolved file: every value must fit one.
        if let Some(problem) = too_large_for_toml(self) {
            return Err(problem);
        }
        if let Some(problem) = name_problem(&self.name) {
            return Err(problem);
        }
        self.pretrain.validate().map_err(|e| e.to_string())?;
        self.finetune.validate().map_err(|e| e.to_string())?;
        if self.pretrain.epochs > MAX_STEPS {
            return Err(format!(
                "pretrain.epochs: {} is more than {MAX_STEPS}: every epoch takes at least one \
                 optimizer step, and the optimizer counts its steps in 32 bits",
                self.pretrain.epochs
            ));
        }
        step_problem("finetune", &self.finetune)?;
        if self
            .data
            .cache_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(
                "data.cache_dir: empty (it would be the current folder); leave the key \
                        out for the default: $IMPRINT_CACHE_DIR, else $XDG_CACHE_HOME/imprint, \
                        else ~/.cache/imprint"
                    .into(),
            );
        }
        for k in self.finetune_by_budget.keys() {
            match k.parse::<usize>() {
                Ok(k) if k > 0 => self.finetune_for(k).map(|_| ())?,
                _ => {
                    return Err(format!(
                        "finetune_by_budget.{k}: not a label budget (an integer of at least 1)"
                    ))
                }
            }
        }
        let c = &self.compare;
        if c.strategies.is_empty() {
            return Err("compare.strategies: name at least one strategy".into());
        }
        if c.labels_per_class.is_empty() || c.labels_per_class.contains(&0) {
            return Err("compare.labels_per_class: give one or more budgets of at least 1".into());
        }
        if c.seeds.is_empty() {
            return Err("compare.seeds: give at least one seed".into());
        }
        if let Some(key) = repeated(&c.strategies, "compare.strategies")
            .or_else(|| repeated(&c.labels_per_class, "compare.labels_per_class"))
            .or_else(|| repeated(&c.seeds, "compare.seeds"))
            .or_else(|| repeated(&c.routes, "compare.routes"))
        {
            return Err(key);
        }
        if c.routes.is_empty() {
            return Err(
                "compare.routes: name at least one route (self, imported, imported+self)".into(),
            );
        }
        let imports = c.routes.iter().any(|r| *r != Route::SelfSupervised);
        if imports && c.imported.is_none() {
            return Err(
                "compare.imported: the imported routes need the network to start from".into(),
            );
        }
        if self.data.test.is_none()
            && !(self.data.test_fraction > 0.0 && self.data.test_fraction < 1.0)
        {
            return Err("data.test_fraction: must be in (0, 1) when data.test is not given".into());
        }
        // One value per channel is checked once the data is read; here, the rest.
        let prep = &self.data.preprocess;
        let channels = prep.mean.as_ref().map_or(0, Vec::len);
        if let Some(problem) = prep.normalize_problem(channels) {
            return Err(format!("data.preprocess: {problem}"));
        }
        // A side no image can have is refused before any image is resized to it.
        for (key, side) in [("height", prep.height), ("width", prep.width)] {
            if side.is_some_and(|px| !(1..=crate::bounds::MAX_SIDE).contains(&px)) {
                return Err(format!(
                    "data.preprocess.{key}: {} px: images have 1 to {} pixels a side (the \
                     largest the image decoder reads)",
                    side.unwrap_or(0),
                    crate::bounds::MAX_SIDE
                ));
            }
        }
        if let (Some(height), Some(width)) = (prep.height, prep.width) {
            let shape = ImageShape {
                channels: 1,
                height,
                width,
            };
            if let Some((key, problem)) = self.shape_problem(shape) {
                return Err(format!("{key}: {problem}"));
            }
        }
        Ok(())
    }

    /// A setting in pixels that images of `shape` make meaningless, with its key: a shift or
    /// padded crop as wide as the image leaves nothing of it, a patch larger than the image
    /// hides all of it.
    pub fn shape_problem(&self, shape: ImageShape) -> Option<(String, String)> {
        let side = shape.height.min(shape.width);
        let size = format!("{}x{}", shape.height, shape.width);
        let augment = |section: &str, a: &Augment| {
            let (key, px, what) = if a.shift >= side {
                ("augment_shift", a.shift, "moves the images out of sight")
            } else if a.pad_crop >= side {
                (
                    "augment_pad_crop",
                    a.pad_crop,
                    "leaves crops of padding alone",
                )
            } else {
                return None;
            };
            let message = format!(
                "{px} px {what}: the images are {size}; at most {}",
                side.saturating_sub(1)
            );
            Some((format!("{section}.{key}"), message))
        };
        if let Noise::Patches { patch, .. } = self.pretrain.noise {
            if patch > side {
                let message = format!(
                    "patches of {patch} px are larger than the {size} images; at most {side}"
                );
                return Some(("pretrain.noise.patch".into(), message));
            }
        }
        augment("pretrain", &self.pretrain.augment)
            .or_else(|| augment("finetune", &self.finetune.augment))
            .or_else(|| {
                self.finetune_by_budget.keys().find_map(|k| {
                    let config = self.finetune_for(k.parse().ok()?).ok()?;
                    augment(&format!("finetune_by_budget.{k}"), &config.augment)
                })
            })
    }
}

/// The most optimizer steps a run may take: the optimizer counts them in an `i32` (as dfdx's
/// Adam takes its step), so more would wrap around and break its bias correction.
pub const MAX_STEPS: usize = i32::MAX as usize;

/// Fine-tuning settings (under `section`) that ask for more steps than [`MAX_STEPS`].
fn step_problem(section: &str, f: &FinetuneConfig) -> std::result::Result<(), String> {
    for (key, steps) in [("steps", f.steps), ("self_train_steps", f.self_train_steps)] {
        if steps > MAX_STEPS {
            return Err(format!(
                "{section}.{key}: {steps} is more than {MAX_STEPS}, the most steps the optimizer \
                 counts (in 32 bits)"
            ));
        }
    }
    Ok(())
}

/// Why `name` cannot name the default output folder `runs/<name>`, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    let why = if name.is_empty() {
        "is empty"
    } else if name == "." || name == ".." || name.contains(['/', '\\']) {
        "is a path"
    } else if name.chars().any(char::is_control) {
        "holds control characters"
    } else {
        return None;
    };
    Some(format!(
        "name {:?} {why}: the default output folder is runs/<name>, so give a plain folder name",
        name
    ))
}

/// The first value of `p` beyond TOML's integers (2^63 - 1), named by its key.
fn too_large_for_toml(p: &Pipeline) -> Option<String> {
    fn find(value: &serde_json::Value, key: &str) -> Option<String> {
        match value {
            serde_json::Value::Number(n) => n.as_u64().filter(|&v| v > i64::MAX as u64).map(|v| {
                format!(
                    "{key}: {v} is too large: the pipeline.toml each output folder keeps \
                         holds integers up to {}",
                    i64::MAX
                )
            }),
            serde_json::Value::Array(items) => items.iter().find_map(|v| find(v, key)),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                find(v, &key)
            }),
            _ => None,
        }
    }
    find(&serde_json::to_value(p).ok()?, "")
}

/// A message naming `key` and the first entry `list` holds twice (a run counted twice), if any.
fn repeated<T: PartialEq + std::fmt::Debug>(list: &[T], key: &str) -> Option<String> {
    list.iter().enumerate().find_map(|(i, x)| {
        list[..i]
            .contains(x)
            .then(|| format!("{key}: {x:?} is named twice; each run would be counted twice"))
    })
}

/// A problem of the file, or of the file with `settings`, named so.
fn settings_error(shown: &str, settings: &[String], message: String) -> PipelineError {
    PipelineError::Input {
        path: shown.to_string(),
        message: if settings.is_empty() {
            message
        } else {
            format!("with the --set settings: {message}")
        },
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| PipelineError::Input {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Whether a `--set` value that is no TOML was meant as a number, an array, a table or a quoted
/// string (and is not a bare word to take as a string).
fn meant_as_toml(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number = digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    number || text.starts_with(['[', '{', '"', '\''])
}

/// The TOML parser's words on one line; a number too large for TOML says the limit.
fn plain(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(": ").replace(
        "number too large to fit in target type",
        "number too large: a pipeline file holds integers up to 9223372036854775807",
    )
}

/// TOML errors span several lines with a source excerpt; keep one line: where, which key, what.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let message = plain(e.message());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let mut line_no = text[..start].matches('\n').count() + 1;
    // A key unknown to a section's flattened settings is reported at the section, not at the
    // key: find the key's own line within the section.
    if let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        let section = &text[start..span.end.min(text.len())];
        if let Some(offset) = section.lines().position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        }) {
            line_no += offset;
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    match line.split_once('=') {
        // A value error: name the key the value belongs to.
        Some((key, _)) if !message.contains(key.trim()) => {
            format!("line {line_no}: key `{}`: {message}", key.trim())
        }
        _ => format!("line {line_no}: {message}"),
    }
}

/// Puts `value` at the dotted `key` of `section.key=value`. The value is read as TOML (numbers,
/// booleans, arrays, inline tables, quoted strings); anything else is taken as a bare string,
/// unless it is plainly meant as a number, array or table. A setting replaces one key: a
/// whole section (`finetune={...}`, `finetune_by_budget.25={...}`) would silently drop the
/// keys it does not name, and is refused.
fn set_key(table: &mut toml::Table, setting: &str) -> std::result::Result<(), String> {
    let (key, value) = setting
        .split_once('=')
        .ok_or("expected KEY=VALUE, e.g. finetune.dropout=0.3")?;
    let text = value.trim();
    let value = match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(text.into())),
        Err(e) if meant_as_toml(text) => return Err(plain(e.message())),
        Err(_) => toml::Value::String(text.to_string()),
    };
    let key = key.trim();
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|k| !k.is_empty()).ok_or("empty key")?;
    let section = match parts.as_slice() {
        [] => table.get(last).is_some_and(toml::Value::is_table) || value.is_table(),
        ["finetune_by_budget"] => value.is_table(),
        _ => false,
    };
    if section {
        return Err(format!(
            "`{key}` is a whole section; set its keys one by one (--set {key}.KEY=VALUE), so \
             that the others keep their values"
        ));
    }
    // A section the file leaves out is the built-in one: a setting changes one of its keys,
    // and the others keep their built-in values.
    if let Some(&section) = parts.first().filter(|s| SECTIONS.contains(s)) {
        if !table.contains_key(section) {
            let builtin: toml::Table = DEFAULTS_TOML.parse().map_err(|e| format!("{e}"))?;
            if let Some(value) = builtin.get(section) {
                table.insert(section.to_string(), value.clone());
            }
        }
    }
    let mut at = table;
    for part in parts {
        at = at
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is a value, not a section"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// Refuses a `--set finetune_by_budget.K...` setting for a budget `K` that no run of the
/// command has (`budgets`): its settings would never be used.
pub fn check_budget_settings(settings: &[String], budgets: &[usize]) -> Result<()> {
    for setting in settings {
        let key = setting.split('=').next().unwrap_or_default().trim();
        let Some(k) = key
            .strip_prefix("finetune_by_budget.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
        else {
            continue;
        };
        if !budgets.contains(&k) {
            let runs = if budgets.is_empty() {
                "none: every label is used".to_string()
            } else {
                let list: Vec<String> = budgets.iter().map(usize::to_string).collect();
                list.join(", ")
            };
            return Err(PipelineError::Input {
                path: "command line".into(),
                message: format!(
                    "--set `{setting}`: no run has {k} labels per class (the budgets: {runs}); \
                     its settings would never be used"
                ),
            });
        }
    }
    Ok(())
}

/// Settings a command line may override.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub unlabeled: Option<PathBuf>,
    pub labeled: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// Drop `data.test`, so that a share of the labeled images serves as the test set.
    pub dev: bool,
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
    pub strategies: Option<Vec<Strategy>>,
    pub labels_per_class: Option<Vec<usize>>,
    pub seeds: Option<Vec<u64>>,
    pub max_unlabeled: Option<usize>,
    /// `pretrain.precision` and `finetune.precision` both (the budgets' own included).
    pub precision: Option<Precision>,
}

impl Overrides {
    /// [`Overrides::set`], then the pipeline checked; a problem is named as the command line's.
    pub fn apply(&self, p: &mut Pipeline) -> Result<()> {
        self.set(p);
        p.validate().map_err(|message| PipelineError::Input {
            path: "command line".into(),
            message,
        })
    }

    /// Puts the overrides into `p`, unchecked.
    pub fn set(&self, p: &mut Pipeline) {
        if let Some(v) = &self.unlabeled {
            p.data.unlabeled = Some(v.clone());
        }
        if let Some(v) = &self.labeled {
            p.data.labeled = Some(v.clone());
        }
        if p.name.is_empty() {
            p.name = p.data.folder_name();
        }
        if let Some(v) = &self.test {
            p.data.test = Some(v.clone());
        }
        if self.dev {
            p.data.test = None;
        }
        if let Some(v) = self.epochs {
            p.pretrain.epochs = v;
        }
        if let Some(v) = self.steps {
            p.finetune.steps = v;
            // --steps is every run's count, the budgets' own included.
            for table in p.finetune_by_budget.values_mut() {
                if table.contains_key("steps") {
                    // Beyond TOML's integers, it is refused as `finetune.steps` is.
                    let steps = i64::try_from(v).unwrap_or(i64::MAX);
                    table.insert("steps".into(), toml::Value::Integer(steps));
                }
            }
        }
        if let Some(v) = &self.strategies {
            p.compare.strategies = v.clone();
        }
        if let Some(v) = &self.labels_per_class {
            p.compare.labels_per_class = v.clone();
        }
        if let Some(v) = &self.seeds {
            p.compare.seeds = v.clone();
        }
        if let Some(v) = self.max_unlabeled {
            p.data.max_unlabeled = v;
        }
        if let Some(v) = self.precision {
            p.pretrain.precision = v;
            p.finetune.precision = v;
            for table in p.finetune_by_budget.values_mut() {
                if table.contains_key("precision") {
                    table.insert("precision".into(), toml::Value::String(v.name().into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[data]
unlabeled = "a"
labeled = "a"
[pretrain]
architecture = { kind = "dense", hidden = [8], latent = 4 }
epochs = 1
[compare]
strategies = ["scratch", "probe-then-full"]
labels_per_class = [1]
seeds = [0]
"#;

    #[test]
    fn every_shipped_pipeline_loads_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let p = Pipeline::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                names.push(p.name);
            }
        }
        names.sort();
        assert_eq!(
            names,
            [
                "cifar10",
                "cifar10-binary",
                "digits",
                "mnist",
                "mnist-conv",
                "mnist-imported"
            ]
        );
    }

    #[test]
    fn minimal_file_parses_with_defaults() {
        let p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        assert_eq!(
            p.compare.strategies,
            vec![Strategy::SCRATCH, Strategy::PROBE_THEN_FULL]
        );
        assert_eq!(p.finetune.steps, 300);
        assert_eq!(p.pretrain.batch_size, 128);
    }

    #[test]
    fn the_built_in_pipeline_reads_and_names_every_section() {
        let builtin: toml::Table = DEFAULTS_TOML.parse().unwrap();
        for section in SECTIONS {
            assert!(
                builtin.contains_key(section),
                "defaults.toml lacks [{section}]"
            );
        }
        // Unchecked: the built-in pipeline takes its name from the data it is given.
        let p = Pipeline::with_settings(DEFAULTS_TOML, BUILT_IN, &[]).unwrap();
        assert_eq!(p, *DEFAULTS);
        assert_eq!(
            (p.data.labeled.clone(), p.data.unlabeled.clone()),
            (None, None)
        );
        let e = p.data.labeled().unwrap_err().to_string();
        assert!(e.contains("--labeled"), "{e}");
    }

    /// A file may leave out any section, or be empty: each missing one is the built-in one,
    /// and a setting of one of its keys keeps the others built-in.
    #[test]
    fn sections_left_out_are_the_built_in_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "[data]\nlabeled = \"photos\"\n").unwrap();
        let p = Pipeline::from_file(&path).unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(p.data.labeled.as_deref(), Some(Path::new("photos")));
        assert_eq!(p.data.unlabeled().unwrap(), Path::new("photos"));
        assert_eq!(
            (&p.pretrain, &p.finetune, &p.compare),
            (&DEFAULTS.pretrain, &DEFAULTS.finetune, &DEFAULTS.compare)
        );
        let set = |s: &str| Pipeline::from_file_with_settings(&path, &[s.to_string()]).unwrap();
        let p = set("finetune.steps=7");
        assert_eq!(p.finetune.steps, 7);
        assert_eq!(
            p.finetune,
            FinetuneConfig {
                steps: 7,
                ..DEFAULTS.finetune.clone()
            }
        );
        let p = set("pretrain.epochs=2");
        assert_eq!(p.pretrain.pretexts, DEFAULTS.pretrain.pretexts);
        assert_eq!(p.pretrain.epochs, 2);
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            Pipeline::from_file(&path).unwrap().finetune,
            DEFAULTS.finetune
        );
    }

    #[test]
    fn unknown_key_wrong_type_and_missing_field_name_key_and_line() {
        let unknown = MINIMAL.replace("epochs = 1", "epochs = 1\nepoch = 2");
        let e = Pipeline::from_toml(&unknown, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("`epoch`") && e.contains("line 9"),
            "{e}"
        );

        let wrong = MINIMAL.replace("epochs = 1", "epochs = \"one\"");
        let e = Pipeline::from_toml(&wrong, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 8") && e.contains("key `epochs`"), "{e}");

        let missing = MINIMAL.replace("epochs = 1\n", "");
        let e = Pipeline::from_toml(&missing, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `epochs`"), "{e}");
    }

    #[test]
    fn precision_is_f32_unless_set_and_an_unknown_one_names_the_key_and_line() {
        let p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        assert_eq!(
            (p.pretrain.precision, p.finetune.precision),
            (Precision::F32, Precision::F32)
        );
        let bf16 = MINIMAL.replace("epochs = 1", "epochs = 1\nprecision = \"bf16\"");
        let p = Pipeline::from_toml(&bf16, Path::new("p.toml")).unwrap();
        assert_eq!(p.pretrain.precision, Precision::Bf16);
        let bad = MINIMAL.replace("epochs = 1", "epochs = 1\nprecision = \"fp16\"");
        let e = Pipeline::from_toml(&bad, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("fp16") && e.contains("bf16"),
            "{e}"
        );
        assert!(e.contains("precision") && e.contains("line 9"), "{e}");
        let mut p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        Overrides {
            precision: Some(Precision::Bf16),
            ..Default::default()
        }
        .apply(&mut p)
        .unwrap();
        assert_eq!(
            (p.pretrain.precision, p.finetune.precision),
            (Precision::Bf16, Precision::Bf16)
        );
    }

    #[test]
    fn overrides_replace_and_are_validated() {
        let mut p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        let o = Overrides {
            seeds: Some(vec![4, 5]),
            epochs: Some(3),
            ..Default::default()
        };
        o.apply(&mut p).unwrap();
        assert_eq!(
            (p.compare.seeds.clone(), p.pretrain.epochs),
            (vec![4, 5], 3)
        );
        let bad = Overrides {
            labels_per_class: Some(vec![0]),
            ..Default::default()
        };
        assert!(bad
            .apply(&mut p)
            .unwrap_err()
            .to_string()
            .contains("labels_per_class"));
    }

    fn with_settings(settings: &[&str]) -> Result<Pipeline> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        Pipeline::from_file_with_settings(&path, &settings)
    }

    #[test]
    fn settings_replace_or_add_keys_of_any_type() {
        let p = with_settings(&[
            "finetune.dropout=0.3",
            "finetune.schedule=cosine",
            "compare.seeds=[3, 4]",
            "pretrain.architecture={ kind = \"dense\", hidden = [16, 8], latent = 2 }",
            "pretrain.epochs = 5",
        ])
        .unwrap();
        assert_eq!(p.finetune.dropout, 0.3);
        assert_eq!(p.finetune.optim.schedule, imprint_train::Schedule::Cosine);
        assert_eq!(p.compare.seeds, vec![3, 4]);
        assert_eq!(p.pretrain.architecture.latent(), 2);
        assert_eq!(p.pretrain.epochs, 5);
        assert_eq!(with_settings(&[]).unwrap().finetune.dropout, 0.0);
    }

    #[test]
    fn a_budget_may_replace_fine_tuning_settings() {
        let p = with_settings(&[
            "finetune.steps=1500",
            "finetune.weight_decay=0.04",
            "finetune_by_budget.25.steps=600",
            "finetune_by_budget.25.augment_flip=true",
        ])
        .unwrap();
        let (small, other) = (p.finetune_for(25).unwrap(), p.finetune_for(400).unwrap());
        assert_eq!((small.steps, small.augment.flip), (600, true));
        assert_eq!(
            small.optim.weight_decay, 0.04,
            "the other keys stay [finetune]'s"
        );
        assert_eq!(other, p.finetune);
        assert_eq!(p.for_budget(25).unwrap().finetune, small);

        let mut q = p.clone();
        Overrides {
            steps: Some(7),
            ..Default::default()
        }
        .apply(&mut q)
        .unwrap();
        assert_eq!(
            (q.finetune_for(25).unwrap().steps, q.finetune.steps),
            (7, 7)
        );

        for (setting, expect) in [
            (
                "finetune_by_budget.25.stepz=600",
                "finetune_by_budget.25: unknown field `stepz`",
            ),
            (
                "finetune_by_budget.25.dropout=2.0",
                "finetune_by_budget.25: invalid",
            ),
            (
                "finetune_by_budget.few.steps=6",
                "finetune_by_budget.few: not a label budget",
            ),
        ] {
            let e = with_settings(&[setting]).unwrap_err().to_string();
            assert!(e.contains(expect), "{setting}: {e}");
        }
    }

    /// Settings that only fit together are checked once all are in, in either order.
    #[test]
    fn settings_that_fit_together_are_accepted_in_any_order() {
        let steps = "finetune.self_train_steps=2";
        let batch = "finetune.batch_size=2";
        for order in [[steps, batch], [batch, steps]] {
            let p = with_settings(&order).unwrap();
            assert_eq!((p.finetune.self_train_steps, p.finetune.batch_size), (2, 2));
        }
        let e = with_settings(&[steps, "finetune.batch_size=1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("with the --set settings") && e.contains("self_train_steps"),
            "{e}"
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        for (setting, expect) in [
            ("finetune.dropot=0.3", "`dropot`"),
            ("finetune.dropout", "KEY=VALUE"),
            ("finetune.dropout=1.5", "dropout"),
            ("name.x=1", "`name` is a value"),
            ("pretrain.epochs=many", "epochs"),
        ] {
            let e = with_settings(&[setting]).unwrap_err().to_string();
            assert!(e.contains("p.toml") && e.contains(expect), "{setting}: {e}");
        }
    }

    #[test]
    fn a_name_must_be_a_plain_folder_name() {
        for name in ["", ".", "..", "../x", "/abs", "a/b", "a\\b", "a\nb"] {
            let text = MINIMAL.replace("name = \"t\"", &format!("name = {name:?}"));
            let e = Pipeline::from_toml(&text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("p.toml: name") && e.contains("plain folder name"),
                "{name:?}: {e}"
            );
        }
        for name in ["digits", "cifar10-binary", "run.2", "..."] {
            let text = MINIMAL.replace("name = \"t\"", &format!("name = {name:?}"));
            Pipeline::from_toml(&text, Path::new("p.toml")).unwrap();
        }
    }

    #[test]
    fn a_setting_replaces_one_key_never_a_whole_section() {
        for setting in [
            "finetune={dropout=0.2}",
            "compare={seeds=[1]}",
            "finetune_by_budget.25={steps=3}",
            "data=3",
        ] {
            let e = with_settings(&[setting]).unwrap_err().to_string();
            assert!(e.contains("is a whole section"), "{setting}: {e}");
        }
        let p = with_settings(&["finetune_by_budget.25.steps=3"]).unwrap();
        assert_eq!(p.finetune_for(25).unwrap().steps, 3);
    }

    #[test]
    fn numbers_beyond_a_pipeline_file_or_the_step_counter_are_refused_naming_the_key() {
        for setting in [
            "compare.seeds=[1, 9223372036854775808]",
            "data.memory_budget_mb=18446744073709551615",
        ] {
            let e = with_settings(&[setting]).unwrap_err().to_string();
            assert!(
                e.contains(setting) && e.contains("up to 9223372036854775807"),
                "{e}"
            );
        }
        let mut p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        let seeds = Overrides {
            seeds: Some(vec![1 << 63]),
            ..Default::default()
        };
        let e = seeds.apply(&mut p).unwrap_err().to_string();
        assert!(
            e.contains("compare.seeds: 9223372036854775808 is too large"),
            "{e}"
        );

        let mut p = Pipeline::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        let epochs = Overrides {
            epochs: Some(MAX_STEPS + 1),
            ..Default::default()
        };
        let e = epochs.apply(&mut p).unwrap_err().to_string();
        assert!(
            e.contains("pretrain.epochs: 2147483648") && e.contains("32 bits"),
            "{e}"
        );
        for (setting, key) in [
            ("finetune.steps=100000000000", "finetune.steps"),
            (
                "finetune.self_train_steps=2147483648",
                "finetune.self_train_steps",
            ),
            (
                "finetune_by_budget.1.steps=2147483648",
                "finetune_by_budget.1.steps",
            ),
        ] {
            let e = with_settings(&[setting, "finetune.batch_size=2"])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("32 bits"), "{e}");
        }
        with_settings(&["finetune.steps=2147483647"]).unwrap();
    }

    #[test]
    fn a_command_line_flag_may_settle_what_the_file_leaves_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let settings = vec!["data.test_fraction=0".to_string()];
        let load = |o: &Overrides| Pipeline::from_file_with_overrides(&path, &settings, o);
        let e = load(&Overrides::default()).unwrap_err().to_string();
        assert!(
            e.contains("with the --set settings: data.test_fraction"),
            "{e}"
        );
        let test = Overrides {
            test: Some("held-out".into()),
            ..Default::default()
        };
        assert_eq!(load(&test).unwrap().data.test, Some("held-out".into()));
        let budgets = Overrides {
            labels_per_class: Some(vec![0]),
            ..test
        };
        let e = load(&budgets).unwrap_err().to_string();
        assert!(
            e.starts_with("command line: compare.labels_per_class"),
            "{e}"
        );
    }

    #[test]
    fn settings_of_a_budget_no_run_has_are_refused_naming_the_budgets() {
        let set = |s: &str| vec![s.to_string()];
        check_budget_settings(&set("finetune_by_budget.10.steps=2"), &[1, 10]).unwrap();
        check_budget_settings(&set("finetune.steps=2"), &[]).unwrap();
        let e = check_budget_settings(&set("finetune_by_budget.7.steps=2"), &[1, 10])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no run has 7 labels per class (the budgets: 1, 10)"),
            "{e}"
        );
    }

    #[test]
    fn settings_in_pixels_must_fit_the_images() {
        let p = with_settings(&["finetune.augment_shift=8"]).unwrap();
        let shape = |side| ImageShape {
            channels: 1,
            height: side,
            width: side,
        };
        let (key, message) = p.shape_problem(shape(8)).unwrap();
        assert_eq!(key, "finetune.augment_shift");
        assert!(message.contains("8x8; at most 7"), "{message}");
        assert_eq!(p.shape_problem(shape(9)), None);
        let patches = "pretrain.noise={ kind = \"patches\", patch = 9, fraction = 0.5 }";
        let p = with_settings(&[patches]).unwrap();
        assert_eq!(p.shape_problem(shape(8)).unwrap().0, "pretrain.noise.patch");
        // Known before the data is read when the file gives the size.
        let sized = [
            patches,
            "data.preprocess.height=8",
            "data.preprocess.width=8",
        ];
        let e = with_settings(&sized).unwrap_err().to_string();
        assert!(e.contains("pretrain.noise.patch"), "{e}");
    }

    #[test]
    fn an_empty_cache_folder_and_duplicate_tables_are_refused_in_one_line() {
        let e = with_settings(&["data.cache_dir=\"\""])
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.cache_dir: empty"), "{e}");
        let twice = format!("{MINIMAL}[data]\ntest_fraction = 0.5\n");
        let e = Pipeline::from_toml(&twice, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains('\n') && e.contains("line 13") && e.contains("duplicate key `data`"),
            "{e}"
        );
    }

    /// Files and `--set`s written for the keys before `[pretrain] pretexts` keep their meaning;
    /// beside `pretexts` they are refused, naming how `pretexts` spells them. The resolved
    /// file a run writes uses the new spelling and reads back the same.
    #[test]
    fn old_pretext_keys_are_translated_or_refused_with_the_new_spelling() {
        let old = with_settings(&[
            "pretrain.augment_flip=true",
            "pretrain.contrast_weight=1.0",
            "pretrain.contrast_temperature=0.2",
        ])
        .unwrap();
        let new = with_settings(&[
            "pretrain.augment_flip=true",
            "pretrain.pretexts=[{ kind = \"contrastive\", temperature = 0.2 }, \
             { kind = \"reconstruction\" }]",
        ])
        .unwrap();
        assert_eq!(old, new);
        let resolved = toml::to_string_pretty(&new).unwrap();
        assert!(!resolved.contains("contrast_weight"), "{resolved}");
        let back = Pipeline::from_toml(&resolved, Path::new("pipeline.toml")).unwrap();
        assert_eq!(back, new);

        // `--set`s are read one after another; one that leaves no pretext for a moment is fine
        // when a later one names another.
        let rotation = with_settings(&[
            "pretrain.reconstruction_weight=0.0",
            "pretrain.rotation_weight=1.0",
        ])
        .unwrap();
        let named = with_settings(&["pretrain.pretexts=[{ kind = \"rotation\" }]"]).unwrap();
        assert_eq!(rotation, named);
        let e = with_settings(&["pretrain.reconstruction_weight=0.0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing would be trained"), "{e}");

        let e = with_settings(&[
            "pretrain.pretexts=[{ kind = \"byol\" }]",
            "pretrain.augment_flip=true",
            "pretrain.contrast_temperature=0.3",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--set `pretrain.contrast_temperature=0.3`")
                && e.contains("{ kind = \"contrastive\", temperature = ... }"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// Any text, and any single-byte corruption of a valid file, is an error or a pipeline,
        /// never a panic (`PROPTEST_CASES` raises the count for longer fuzzing runs).
        #[test]
        fn parser_never_panics_on_arbitrary_text(text in ".{0,400}") {
            let _ = Pipeline::from_toml(&text, Path::new("fuzz.toml"));
        }

        #[test]
        fn parser_never_panics_on_corrupted_files(at in 0usize..MINIMAL.len(), byte in proptest::prelude::any::<u8>()) {
            let mut bytes = MINIMAL.as_bytes().to_vec();
            bytes[at] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = Pipeline::from_toml(&text, Path::new("fuzz.toml"));
            }
        }
    }
}
