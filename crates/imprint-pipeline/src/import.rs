//! The `import` job: a network trained elsewhere (a PyTorch checkpoint, zip or legacy format, or
//! safetensors) read into one of our architectures, written as our checkpoint and sidecar.

use crate::provenance::{git_state, VERSION};
use crate::sidecar::{write_json, ENCODER_FORMAT, MODEL_FORMAT};
use crate::{create_dir, EncoderSidecar, ModelSidecar, PipelineError, Result};
use dfdx::prelude::Cpu;
use imprint_data::{ImageShape, Preprocess, SourceFile, SourceRecord};
use imprint_finetune::Classifier;
use imprint_nn::models::Layout;
use imprint_nn::{save_tensors, Architecture, Encoder, NamedTensor, ParamsExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to read a checkpoint as.
#[derive(Clone, Debug)]
pub struct ImportSpec {
    /// `resnet20`, `resnet32`, `resnet44`, `resnet56`, `resnet110` (CIFAR layout), `resnet18`,
    /// `resnet34` (ImageNet layout).
    pub arch: String,
    pub input: ImageShape,
    /// The per-channel normalisation the network was trained with.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Names of the classifier's outputs, in order; `0`, `1`, ... when absent.
    pub classes: Option<Vec<String>>,
}

/// What an import wrote.
pub struct Imported {
    /// `model.safetensors` for a checkpoint with a classifier, else `encoder.safetensors`.
    pub weights: PathBuf,
    pub architecture: Architecture,
    pub tensors: usize,
    pub classes: Option<Vec<String>>,
}

/// The architecture a name stands for.
pub fn named_architecture(name: &str) -> std::result::Result<Architecture, String> {
    let known =
        "resnet20, resnet32, resnet44, resnet56, resnet110 (CIFAR), resnet18, resnet34 (ImageNet)";
    let depth: usize = name
        .strip_prefix("resnet")
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("unknown architecture `{name}`; known: {known}"))?;
    let layout = match depth {
        18 | 34 => Layout::Imagenet,
        20 | 32 | 44 | 56 | 110 => Layout::Cifar,
        _ => return Err(format!("unknown architecture `{name}`; known: {known}")),
    };
    Ok(Architecture::Resnet(imprint_nn::ResNet {
        depth,
        layout,
        widths: None,
        shortcut: None,
    }))
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

/// Why the names given to `--classes` cannot name a classifier's outputs, if they cannot: each
/// must be a name, and each output its own.
fn classes_problem(classes: &[String]) -> Option<String> {
    if let Some(i) = classes.iter().position(|c| c.trim().is_empty()) {
        return Some(format!(
            "name {} of {} is empty; give one name per output, comma-separated",
            i + 1,
            classes.len()
        ));
    }
    classes.iter().enumerate().find_map(|(i, c)| {
        classes[..i]
            .contains(c)
            .then(|| format!("`{c}` is named twice; each output needs a name of its own"))
    })
}

/// Reads `file` as `spec` describes and writes it into `out` (which must exist).
pub fn import(file: &Path, spec: &ImportSpec, out: &Path) -> Result<Imported> {
    let input = |message: String| PipelineError::Input {
        path: file.display().to_string(),
        message,
    };
    let architecture = named_architecture(&spec.arch).map_err(|m| PipelineError::Input {
        path: "--arch".into(),
        message: m,
    })?;
    let preprocess = Preprocess {
        channels: Some(spec.input.channels),
        height: Some(spec.input.height),
        width: Some(spec.input.width),
        mean: spec.mean.clone(),
        std: spec.std.clone(),
        ..Default::default()
    };
    if let Some(problem) = preprocess.normalize_problem(spec.input.channels) {
        return Err(PipelineError::Input {
            path: "--mean/--std".into(),
            message: problem,
        });
    }
    if let Some(problem) = spec.classes.as_deref().and_then(classes_problem) {
        return Err(PipelineError::Input {
            path: "--classes".into(),
            message: problem,
        });
    }
    let tensors: BTreeMap<String, NamedTensor> = imprint_torch::read_checkpoint(file)
        .map_err(|e| PipelineError::Output(e.to_string()))?
        .into_iter()
        .filter_map(|t| {
            our_name(&t.name).map(|name| {
                let tensor = NamedTensor {
                    name: name.clone(),
                    shape: t.shape,
                    data: t.data,
                };
                (name, tensor)
            })
        })
        .collect();
    let dev = Cpu::default();
    let encoder = Encoder::new(
        &dev,
        &architecture,
        spec.input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .map_err(|e| input(e.to_string()))?
    .normalized(preprocess.normalize());
    let head_classes = tensors.get("head.weight").map(|t| t.shape[0]);
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
            Classifier::new(&dev, encoder.clone(), names.clone(), spec.input, 0).named_tensors("")
        }
        None => encoder.named_tensors("encoder"),
    };
    check_fit(&tensors, &expected, &spec.arch).map_err(input)?;
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
                    input: spec.input,
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
                    input: spec.input,
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
        tensors: ordered.len(),
        classes,
    })
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
            "unexpected tensor `{}`: {arch} has no such tensor (a network of another depth or kind?)",
            torch(name)
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
