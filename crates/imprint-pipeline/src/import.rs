//! The `import` job: a network trained elsewhere (a PyTorch checkpoint, zip or legacy format, or
//! safetensors) read into one of our architectures, written as our checkpoint and sidecar. Where
//! its state dict is, the prefix of its names and its architecture are found (see
//! [`crate::detect`]) unless the user says; how its inputs were normalised is the user's to say.

use crate::bounds::{self, Use};
use crate::detect::{self, architecture_name, named_architecture, Detection};
use crate::provenance::{git_state, VERSION};
use crate::sidecar::{write_json, ENCODER_FORMAT, MODEL_FORMAT};
use crate::{create_dir, EncoderSidecar, ModelSidecar, PipelineError, Result};
use dfdx::prelude::Cpu;
use imprint_data::{ImageShape, Preprocess, SourceFile, SourceRecord};
use imprint_finetune::Classifier;
use imprint_nn::{save_tensors, Architecture, Encoder, NamedTensor, ParamsExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to read a checkpoint as; every field but the normalisation may be left to detection.
#[derive(Clone, Debug, Default)]
pub struct ImportSpec {
    /// One of [`detect::KNOWN`](crate::detect::KNOWN); detected from the tensors when absent,
    /// checked against them when given.
    pub arch: Option<String>,
    /// The images the network takes; the layout's own size (32 or 224 px) when absent.
    pub input: Option<ImageShape>,
    /// The per-channel normalisation the network was trained with.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Says that the network takes raw `[0, 1]` pixels: without it, a missing `mean`/`std` is
    /// an error (a network fed other inputs than it was trained on fails silently).
    pub no_normalize: bool,
    /// Names of the classifier's outputs, in order; `0`, `1`, ... when absent.
    pub classes: Option<Vec<String>>,
    /// The top-level key of the checkpoint holding the state dict; found when absent.
    pub state_dict_key: Option<String>,
    /// The prefix of the network's tensor names (`model.`); found when absent.
    pub strip_prefix: Option<String>,
}

/// What a checkpoint was found to hold, before anything is written.
#[derive(Clone, Debug)]
pub struct Found {
    /// Where the state dict was.
    pub location: imprint_torch::Location,
    /// What was stripped from the names (empty: nothing).
    pub prefix: String,
    /// Tensors outside the prefix, left out (a Lightning module's loss weights, a second net).
    pub ignored: Vec<String>,
    /// Detected from the shapes; `Err` says why not (no ResNet stem, several, an unknown
    /// depth).
    pub detection: std::result::Result<Detection, String>,
    /// Name and shape of every tensor of the state dict, as the file names them.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Every tensor under the prefix, under our names (`encoder.`, `head.`).
    tensors: BTreeMap<String, NamedTensor>,
}

impl Found {
    /// Tensors of the network (under the prefix, without PyTorch's batch counters).
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }
}

/// What an import wrote.
pub struct Imported {
    /// `model.safetensors` for a checkpoint with a classifier, else `encoder.safetensors`.
    pub weights: PathBuf,
    pub architecture: Architecture,
    pub input: ImageShape,
    pub tensors: usize,
    pub classes: Option<Vec<String>>,
    pub found: Found,
    /// What the user should know (an ImageNet-layout net on small images).
    pub warnings: Vec<String>,
}

/// Our name of a tensor of a PyTorch state dict: the classifier (`linear` of the CIFAR nets,
/// `fc` of torchvision's) is our `head`, the rest our `encoder`; `None` for PyTorch's batch
/// counters, which steer nothing here.
fn our_name(torch: &str) -> Option<String> {
    if torch.ends_with("num_batches_tracked") {
        return None;
    }
    for head in ["linear.", "fc."] {
        if let Some(rest) = torch.strip_prefix(head) {
            return Some(format!("head.{rest}"));
        }
    }
    Some(format!("encoder.{torch}"))
}

/// Reads the state dict of `file` (under `key` when given), strips the network's prefix
/// (`prefix`, or the one found) and detects its architecture: what `import` and `inspect` say.
pub fn examine(file: &Path, key: Option<&str>, prefix: Option<&str>) -> Result<Found> {
    let input = |message: String| PipelineError::Input {
        path: file.display().to_string(),
        message,
    };
    bounds::check_file(file)?;
    let read = imprint_torch::read_state_dict(file, key).map_err(|e| match e {
        imprint_torch::Error::Invalid {
            problem: problem @ imprint_torch::Problem::AmbiguousStateDict(_),
            ..
        } => input(format!("{problem} with --state-dict-key")),
        other => PipelineError::Output(other.to_string()),
    })?;
    let counters = |name: &str| name.ends_with("num_batches_tracked");
    let shapes: BTreeMap<String, Vec<usize>> = read
        .tensors
        .iter()
        .filter(|t| !counters(&t.name))
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    // A prefix the user gave must be there; one not found leaves the names whole, and
    // detection says why.
    let (prefix, detection_problem) = match detect::find_prefix(&shapes, prefix) {
        Ok(found) => (found, None),
        Err(why) if prefix.is_some() => return Err(input(why)),
        Err(why) => (String::new(), Some(why)),
    };
    let mut ignored = Vec::new();
    let mut tensors = BTreeMap::new();
    for t in read.tensors {
        let Some(name) = t.name.strip_prefix(&prefix) else {
            if !counters(&t.name) {
                ignored.push(t.name);
            }
            continue;
        };
        if let Some(ours) = our_name(name) {
            check_torch_tensor(&t).map_err(input)?;
            let tensor = NamedTensor {
                name: ours.clone(),
                shape: t.shape,
                data: t.data,
            };
            tensors.insert(ours, tensor);
        }
    }
    let stripped: BTreeMap<String, Vec<usize>> = shapes
        .iter()
        .filter_map(|(n, s)| n.strip_prefix(&prefix).map(|n| (n.to_string(), s.clone())))
        .collect();
    let detection = match detection_problem {
        Some(why) => Err(why),
        None => detect::detect(&stripped),
    };
    Ok(Found {
        location: read.location,
        prefix,
        ignored,
        detection,
        shapes: shapes.into_iter().collect(),
        tensors,
    })
}

/// Per-channel mean and std.
type MeanStd = (Option<Vec<f32>>, Option<Vec<f32>>);

/// The per-channel normalisation `spec` asks for, checked (one value per channel where
/// `channels` is known): required unless `no_normalize`.
fn normalisation(spec: &ImportSpec, channels: Option<usize>) -> Result<MeanStd> {
    let flags = |message: String| PipelineError::Input {
        path: "--mean/--std".into(),
        message,
    };
    match (spec.no_normalize, &spec.mean, &spec.std) {
        (true, None, None) => Ok((None, None)),
        (true, _, _) => Err(flags(
            "--no-normalize says the network takes raw pixels: give it or --mean/--std, not both"
                .into(),
        )),
        (false, None, None) => Err(flags(
            "missing: give the per-channel mean and std the network was trained with (ImageNet's: \
             --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225), or --no-normalize if it takes \
             raw [0, 1] pixels; a network fed inputs other than its own loses its accuracy \
             without a word"
                .into(),
        )),
        (false, mean, std) => {
            let preprocess = Preprocess {
                mean: mean.clone(),
                std: std.clone(),
                ..Default::default()
            };
            // Until the channels are known, whatever count was given.
            let channels = channels.unwrap_or(mean.as_ref().map_or(0, Vec::len));
            match preprocess.normalize_problem(channels) {
                Some(problem) => Err(flags(problem)),
                None => Ok((mean.clone(), std.clone())),
            }
        }
    }
}

/// Reads `file` as `spec` describes and writes it into `out` (which must exist).
pub fn import(file: &Path, spec: &ImportSpec, out: &Path) -> Result<Imported> {
    let input = |message: String| PipelineError::Input {
        path: file.display().to_string(),
        message,
    };
    let named = spec
        .arch
        .as_deref()
        .map(named_architecture)
        .transpose()
        .map_err(|m| PipelineError::Input {
            path: "--arch".into(),
            message: m,
        })?;
    if let Some(classes) = spec.classes.as_deref() {
        bounds::check_classes(classes).map_err(|message| PipelineError::Input {
            path: "--classes".into(),
            message,
        })?;
    }
    // A normalisation given is checked before the file is read (per channel once the channels
    // are known); one missing after, so that a file that cannot be read says so first.
    if spec.mean.is_some() || spec.std.is_some() || spec.no_normalize {
        normalisation(spec, spec.input.map(|s| s.channels))?;
    }
    let found = examine(
        file,
        spec.state_dict_key.as_deref(),
        spec.strip_prefix.as_deref(),
    )?;
    let architecture = match (&named, &found.detection) {
        (Some(named), Ok(d)) if architecture_name(named) != architecture_name(&d.architecture) => {
            return Err(PipelineError::Input {
                path: "--arch".into(),
                message: format!(
                    "{} does not match {}: its tensors are a {} ({})",
                    architecture_name(named),
                    file.display(),
                    architecture_name(&d.architecture),
                    d.architecture.describe(d.default_input())
                ),
            })
        }
        // Detected: shortcuts and widths as the tensors have them.
        (_, Ok(d)) => d.architecture.clone(),
        // Not detected, but named: the tensors are checked against the name below.
        (Some(named), Err(_)) => named.clone(),
        (None, Err(why)) => {
            return Err(input(format!(
                "cannot tell its architecture: {why}; name one with --arch ({})",
                detect::KNOWN
            )))
        }
    };
    let shape = match (spec.input, &found.detection) {
        (Some(shape), _) => shape,
        (None, Ok(d)) => d.default_input(),
        (None, Err(_)) => ImageShape {
            channels: 3,
            height: if detect::imagenet_layout(&architecture) {
                224
            } else {
                32
            },
            width: if detect::imagenet_layout(&architecture) {
                224
            } else {
                32
            },
        },
    };
    if let Ok(d) = &found.detection {
        if d.channels != shape.channels {
            return Err(PipelineError::Input {
                path: "--input".into(),
                message: format!(
                    "{shape} has {} channels, the network's first layer takes {}",
                    shape.channels, d.channels
                ),
            });
        }
    }
    let (mean, std) = normalisation(spec, Some(shape.channels))?;
    let preprocess = Preprocess {
        channels: Some(shape.channels),
        height: Some(shape.height),
        width: Some(shape.width),
        mean,
        std,
        ..Default::default()
    };
    bounds::check_network(&architecture, shape, &preprocess, Use::Inference).map_err(flag_error)?;
    let dev = Cpu::default();
    let encoder = Encoder::new(
        &dev,
        &architecture,
        shape,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .map_err(|e| input(e.to_string()))?
    .normalized(preprocess.normalize());
    let tensors = &found.tensors;
    let head_classes = match tensors.get("head.weight") {
        Some(t) if t.shape.len() == 2 => Some(t.shape[0]),
        Some(t) => {
            // The file's own name of the head (`fc.weight`, `linear.weight`, under its prefix).
            let name = found
                .shapes
                .iter()
                .map(|(n, _)| n)
                .find(|n| {
                    n.strip_prefix(&found.prefix).and_then(our_name).as_deref()
                        == Some("head.weight")
                })
                .map_or("head.weight", |n| n.as_str());
            return Err(input(format!(
                "tensor {} has shape {:?}: a classifier's weight has 2 dimensions, [classes, \
                 features]",
                imprint_nn::checkpoint::quoted(name),
                t.shape
            )));
        }
        None if spec.classes.is_some() => {
            return Err(PipelineError::Input {
                path: "--classes".into(),
                message: format!(
                    "{} holds no classifier (no `linear.weight` or `fc.weight`): it is imported \
                     as an encoder, whose features have no classes to name; leave --classes out",
                    file.display()
                ),
            })
        }
        None => None,
    };
    let classes = head_classes.map(|n| match &spec.classes {
        Some(names) => names.clone(),
        None => (0..n).map(|i| i.to_string()).collect(),
    });
    if let (Some(n), Some(names)) = (head_classes, &classes) {
        if names.len() != n {
            return Err(input(format!(
                "its classifier has {n} outputs, --classes names {}",
                names.len()
            )));
        }
    }
    let expected: Vec<NamedTensor> = match &classes {
        Some(names) => {
            Classifier::new(&dev, encoder.clone(), names.clone(), shape, 0).named_tensors("")
        }
        None => encoder.named_tensors("encoder"),
    };
    check_fit(tensors, &expected, &architecture_name(&architecture)).map_err(input)?;
    let warnings = detect::small_input_warning(&architecture, shape)
        .into_iter()
        .collect();
    let source = source_file(file)?;
    let (git_revision, _) = git_state();
    create_dir(out)?;
    let ordered: Vec<NamedTensor> = expected.iter().map(|t| tensors[&t.name].clone()).collect();
    let weights = match &classes {
        Some(names) => {
            let weights = out.join("model.safetensors");
            save_tensors(&weights, &ordered, &BTreeMap::new())?;
            write_json(
                &weights.with_extension("json"),
                &ModelSidecar {
                    format: MODEL_FORMAT.into(),
                    architecture: architecture.clone(),
                    input: shape,
                    preprocess,
                    classes: names.clone(),
                    strategy: "imported".into(),
                    seed: 0,
                    program_version: VERSION.into(),
                    data: SourceRecord::default(),
                    git_revision,
                    knn: None,
                    started_from: Some(source),
                },
            )?;
            weights
        }
        None => {
            let weights = out.join("encoder.safetensors");
            save_tensors(&weights, &ordered, &BTreeMap::new())?;
            write_json(
                &weights.with_extension("json"),
                &EncoderSidecar {
                    format: ENCODER_FORMAT.into(),
                    architecture: architecture.clone(),
                    input: shape,
                    preprocess,
                    seed: 0,
                    epochs: 0,
                    program_version: VERSION.into(),
                    // the network's own file: it was trained on data unknown here
                    data: SourceRecord::Files(vec![source]),
                    git_revision,
                    seconds: None,
                    started_from: None,
                },
            )?;
            weights
        }
    };
    Ok(Imported {
        weights,
        architecture,
        input: shape,
        tensors: ordered.len(),
        classes,
        found,
        warnings,
    })
}

/// A tensor of the state dict within the bounds every load keeps (`crate::bounds`), stored as
/// floating point: an integer or bool tensor is a counter or a mask, and converting it would
/// make weights of what never was one.
fn check_torch_tensor(t: &imprint_torch::TorchTensor) -> std::result::Result<(), String> {
    use imprint_torch::Dtype;
    if !matches!(t.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) {
        return Err(format!(
            "tensor {} is stored as {:?}: weights are floating point (F32, F64, F16 or BF16)",
            imprint_nn::checkpoint::quoted(&t.name),
            t.dtype
        ));
    }
    bounds::check_tensor(&t.name, &t.shape, &t.data)
}

/// A bound of the network refused, named by the flag that set it.
fn flag_error(message: String) -> PipelineError {
    let flags = [
        ("`input` ", "--input"),
        ("`architecture` ", "--arch"),
        ("`preprocess`: ", "--mean/--std"),
    ];
    let (flag, rest) = flags
        .iter()
        .find_map(|(key, flag)| message.strip_prefix(key).map(|rest| (*flag, rest)))
        .unwrap_or(("--arch", message.as_str()));
    PipelineError::Input {
        path: flag.into(),
        message: rest.to_string(),
    }
}

/// Every tensor the model needs is in the file with its shape, and the file holds no other:
/// otherwise the first missing, unexpected or misshapen tensor, in name order.
fn check_fit(
    file: &BTreeMap<String, NamedTensor>,
    expected: &[NamedTensor],
    arch: &str,
) -> std::result::Result<(), String> {
    let torch = |ours: &str| {
        ours.strip_prefix("encoder.")
            .map(str::to_string)
            .unwrap_or_else(|| ours.replacen("head.", "linear/fc.", 1))
    };
    let mut needed: Vec<&NamedTensor> = expected.iter().collect();
    needed.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(t) = needed.iter().find(|t| !file.contains_key(&t.name)) {
        return Err(format!(
            "missing tensor `{}`: {arch} needs it and the state dict has none",
            torch(&t.name)
        ));
    }
    if let Some(name) = file
        .keys()
        .find(|n| !expected.iter().any(|t| &t.name == *n))
    {
        return Err(format!(
            "unexpected tensor {}: {arch} has no such tensor (a network of another depth or kind?)",
            imprint_nn::checkpoint::quoted(&torch(name))
        ));
    }
    for t in needed {
        let got = &file[&t.name].shape;
        if *got != t.shape {
            return Err(format!(
                "tensor `{}` has shape {got:?}, {arch} needs {:?}",
                torch(&t.name),
                t.shape
            ));
        }
    }
    Ok(())
}

fn source_file(file: &Path) -> Result<SourceFile> {
    let (bytes, sha256) = imprint_fs::size_and_sha256(file)?;
    Ok(SourceFile {
        path: file.display().to_string(),
        bytes,
        sha256,
    })
}
