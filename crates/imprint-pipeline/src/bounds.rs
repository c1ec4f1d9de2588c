//! One set of bounds for everything a job loads from a checkpoint, its sidecar or a pipeline's
//! architecture, checked before any memory is asked for: what `import`, `inspect`, `embed`,
//! `predict`, `evaluate`, `finetune --init`, the imported route of a comparison and `--resume`
//! read all goes through here (docs/loading.md lists the bounds and their reasons).
//!
//! - the network: its widths and layers fit the declared input; the input has 1 or 3 channels
//!   and at most [`MAX_SIDE`] pixels a side; the normalisation has a positive, finite std; and
//!   its parameters and layer outputs fit the memory the system has, for the use at hand;
//! - the weights: regular files only (a pipe would hang the read), no larger than memory;
//!   floating-point tensors of at most [`MAX_RANK`] dimensions, none of size 0; finite values;
//!   batch-norm running variances of at least 0;
//! - a classifier's classes: at least one, each named, no name twice.

use crate::{ModelSidecar, Pipeline, PipelineError, Result, Sidecar};
use imprint_data::{ImageShape, Preprocess};
use imprint_nn::checkpoint::quoted;
use imprint_nn::{load_tensors, Architecture, NamedTensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Sides of an input image beyond this are refused: no image the decoder reads is larger.
pub const MAX_SIDE: usize = imprint_data::MAX_IMAGE_SIDE as usize;
/// No layer here holds a tensor of more dimensions (a convolution's weight has four).
pub const MAX_RANK: usize = 4;
/// A sidecar is a page of JSON; an older one listing its data files one by one stays far below.
pub const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// What a network is loaded for, which sets the memory it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Inference, whose chunks shrink to the memory budget down to one image: the weights, one
    /// input, and the largest layer output twice (a layer's input and output).
    Inference,
    /// Training on batches of `batch` images: the weights with their gradients and two optimizer
    /// moments, and every layer output of the batch with its gradient.
    Training { batch: usize },
}

/// Memory the system can give (Linux's `MemAvailable`), or 16 GB where that cannot be read.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(16 << 30, |kb| kb * 1024)
}

/// `bytes` in GB, rounded up, for messages.
fn gb(bytes: u128) -> u128 {
    bytes.div_ceil(1 << 30)
}

/// Bytes `architecture` needs on images of `input` when used as `usage`; `None` when the
/// layers cannot be counted (too large, or not fitting the input: checked before).
fn memory_needed(architecture: &Architecture, input: ImageShape, usage: Use) -> Option<u128> {
    let params = architecture.parameter_count(input)?;
    let a = architecture.activations(input)?;
    let floats = match usage {
        // Inference shrinks its chunks to the memory budget, down to one image at a time.
        Use::Inference => params
            .checked_add(input.len() as u128)?
            .checked_add(a.largest.checked_mul(2)?)?,
        Use::Training { batch } => params
            .checked_mul(4)?
            .checked_add(a.total.checked_mul(2)?.checked_mul(batch as u128)?)?,
    };
    floats.checked_mul(4)
}

/// Checks that `architecture` can be built for images of `input` normalised by `preprocess`,
/// and that using it as `usage` fits in memory. The error names the first problem, with the
/// key it comes from (`input`, `architecture`, `preprocess`), for the caller to prefix with
/// the file or setting.
pub fn check_network(
    architecture: &Architecture,
    input: ImageShape,
    preprocess: &Preprocess,
    usage: Use,
) -> std::result::Result<(), String> {
    check_input(input)?;
    let describe = architecture.describe(input);
    architecture
        .validate(input)
        .map_err(|m| format!("`architecture` {describe}: {m}"))?;
    if let Some(problem) = preprocess.normalize_problem(input.channels) {
        let problem = problem.strip_prefix("preprocess ").unwrap_or(&problem);
        return Err(format!("`preprocess`: {problem}"));
    }
    let available = available_memory();
    let params = architecture.parameter_count(input);
    let values = architecture.activations(input).map(|a| a.total);
    let (Some(params), Some(values), Some(needed)) =
        (params, values, memory_needed(architecture, input, usage))
    else {
        return Err(format!("`architecture` {describe}: too large to count"));
    };
    if needed > available as u128 {
        let what = match usage {
            Use::Inference => "running it on one image at a time".to_string(),
            Use::Training { batch } => format!("training it on batches of {batch}"),
        };
        return Err(format!(
            "`architecture` {describe} has {params} parameters and its layers give {values} \
             values per image: {what} takes about {} GB, and {} GB of memory is available",
            gb(needed),
            gb(available as u128)
        ));
    }
    Ok(())
}

/// An image shape a network may take: 1 or 3 channels, 1 to [`MAX_SIDE`] pixels a side.
pub fn check_input(input: ImageShape) -> std::result::Result<(), String> {
    let sides = 1..=MAX_SIDE;
    if !matches!(input.channels, 1 | 3)
        || !sides.contains(&input.height)
        || !sides.contains(&input.width)
    {
        return Err(format!(
            "`input` {input}: images have 1 or 3 channels and 1 to {MAX_SIDE} pixels a side \
             (the largest the image decoder reads)"
        ));
    }
    Ok(())
}

/// A classifier's class names: at least one, none empty, none twice.
pub fn check_classes(classes: &[String]) -> std::result::Result<(), String> {
    if classes.is_empty() {
        return Err("no class names".into());
    }
    if let Some(i) = classes.iter().position(|c| c.trim().is_empty()) {
        return Err(format!(
            "name {} of {} is empty; give one name per output",
            i + 1,
            classes.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format!(
            "{} is named twice: its outputs could not be told apart",
            quoted(twice)
        ));
    }
    Ok(())
}

/// The values of one tensor, named `name` in the file: at most [`MAX_RANK`] dimensions, none
/// of size 0, every value finite, a batch norm's running variance never below 0.
pub fn check_tensor(name: &str, shape: &[usize], data: &[f32]) -> std::result::Result<(), String> {
    let name = quoted(name);
    if shape.len() > MAX_RANK {
        return Err(format!(
            "tensor {name} has {} dimensions {shape:?}; no layer here holds more than {MAX_RANK}",
            shape.len()
        ));
    }
    if shape.contains(&0) {
        return Err(format!(
            "tensor {name} has shape {shape:?}: a dimension of size 0 holds no weights"
        ));
    }
    if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
        return Err(format!(
            "tensor {name} holds {bad}: the weights are broken (a diverged run?)"
        ));
    }
    if name.ends_with("running_var`") {
        if let Some(v) = data.iter().find(|v| **v < 0.0) {
            return Err(format!(
                "tensor {name} holds the variance {v}: a batch norm's running variance is \
                 never below 0"
            ));
        }
    }
    Ok(())
}

/// Refuses a file to be read whole that is not a regular file, or is larger than the memory
/// the system has; returns its size.
pub fn check_file(path: &Path) -> Result<u64> {
    let len = imprint_fs::regular_file_size(path)?;
    let available = available_memory();
    if len > available {
        return Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!(
                "holds {len} bytes: reading it takes about {} GB, and {} GB of memory is \
                 available",
                gb(len.into()),
                gb(available.into())
            ),
        });
    }
    Ok(len)
}

/// The tensors of a safetensors file and its metadata, within the bounds.
pub fn weights_and_metadata(
    path: &Path,
) -> Result<(BTreeMap<String, NamedTensor>, BTreeMap<String, String>)> {
    check_file(path)?;
    let (tensors, metadata) = load_tensors(path)?;
    for t in tensors.values() {
        check_tensor(&t.name, &t.shape, &t.data).map_err(|message| PipelineError::Input {
            path: path.display().to_string(),
            message,
        })?;
    }
    Ok((tensors, metadata))
}

/// The tensors of a safetensors file, within the bounds.
pub fn weights(path: &Path) -> Result<BTreeMap<String, NamedTensor>> {
    Ok(weights_and_metadata(path)?.0)
}

/// Checks what a sidecar at `path` declares, for inference (training checks its pipeline
/// again, with its batch size, once the data is loaded).
pub fn check_sidecar(path: &Path, sidecar: &Sidecar) -> Result<()> {
    let problem = match sidecar {
        Sidecar::Encoder(s) => {
            check_network(&s.architecture, s.input, &s.preprocess, Use::Inference)
        }
        Sidecar::Model(s) => check_network(&s.architecture, s.input, &s.preprocess, Use::Inference)
            .and_then(|()| check_classifier(s)),
    };
    problem.map_err(|message| PipelineError::Input {
        path: path.display().to_string(),
        message,
    })
}

fn check_classifier(s: &ModelSidecar) -> std::result::Result<(), String> {
    check_classes(&s.classes).map_err(|m| format!("`classes`: {m}"))?;
    if let Some(vote) = s.knn {
        if vote.k == 0 || !(vote.temperature > 0.0 && vote.temperature.is_finite()) {
            return Err(format!(
                "`knn`: k {} and temperature {}: a vote needs k of at least 1 and a positive \
                 temperature",
                vote.k, vote.temperature
            ));
        }
    }
    Ok(())
}

/// Refuses a pipeline whose training would not fit in memory: the weights, gradients and two
/// optimizer moments of the encoder and decoder, and every layer output of a batch with its
/// gradient, at the larger of the pre-training and fine-tuning batches (a whole-set fine-tuning
/// batch counted as the largest label budget of every class, or the pool when smaller).
pub fn check_pipeline(p: &Pipeline, shape: ImageShape, classes: usize, pool: usize) -> Result<()> {
    let finetune_batch = match p.finetune.batch_size {
        0 => {
            let k = p
                .compare
                .labels_per_class
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
            k.saturating_mul(classes).min(pool)
        }
        b => b,
    };
    let batch = p.pretrain.batch_size.max(finetune_batch);
    check_network(
        &p.pretrain.architecture,
        shape,
        &Preprocess::default(),
        Use::Training { batch },
    )
    .map_err(|message| {
        // Named by the setting that decides it: the image size, or the architecture.
        let (path, rest) = match message.strip_prefix("`input` ") {
            Some(rest) => ("data.preprocess", rest.to_string()),
            None => (
                "pretrain.architecture",
                message
                    .strip_prefix("`architecture` ")
                    .unwrap_or(&message)
                    .to_string(),
            ),
        };
        PipelineError::Input {
            path: path.into(),
            message: rest,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_nn::{DenseNet, ResNet};

    fn shape(channels: usize, height: usize, width: usize) -> ImageShape {
        ImageShape {
            channels,
            height,
            width,
        }
    }

    fn resnet(depth: usize) -> Architecture {
        Architecture::Resnet(ResNet {
            depth,
            layout: Default::default(),
            widths: None,
            shortcut: None,
        })
    }

    fn check(
        arch: &Architecture,
        input: ImageShape,
        usage: Use,
    ) -> std::result::Result<(), String> {
        check_network(arch, input, &Preprocess::default(), usage)
    }

    /// Every shipped pipeline passes at the shape its data has, with room to spare: the bounds
    /// refuse what cannot run, never what does.
    #[test]
    fn shipped_pipelines_fit_in_a_few_gigabytes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let shapes = [
            ("digits.toml", shape(1, 8, 8)),
            ("mnist.toml", shape(1, 28, 28)),
            ("mnist-conv.toml", shape(1, 28, 28)),
            ("mnist-imported.toml", shape(3, 32, 32)),
            ("cifar10.toml", shape(3, 32, 32)),
            ("cifar10-binary.toml", shape(3, 32, 32)),
        ];
        for (file, input) in shapes {
            let p = Pipeline::from_file_with_settings(&root.join(file), &[]).unwrap();
            let batch = p.pretrain.batch_size.max(p.finetune.batch_size).max(1000);
            let usage = Use::Training { batch };
            let needed = memory_needed(&p.pretrain.architecture, input, usage).unwrap();
            assert!(needed < 6 << 30, "{file}: {} GB", gb(needed));
        }
    }

    #[test]
    fn a_tall_input_or_a_deep_net_is_refused_for_its_layers_not_its_weights() {
        let tall = shape(3, 16_000, 16);
        let err = check(&resnet(20), tall, Use::Training { batch: 512 }).unwrap_err();
        assert!(err.starts_with("`architecture` ResNet-20"), "{err}");
        assert!(
            err.contains("training it on batches of 512 takes about"),
            "{err}"
        );
        // The weights alone, with their gradients and moments, take about 1 GB.
        assert!(resnet(20).parameter_count(tall).unwrap() < 70_000_000);
        let started = std::time::Instant::now();
        let err = check(&resnet(6_000_002), shape(3, 32, 32), Use::Inference).unwrap_err();
        assert!(err.contains("running it on one image at a time"), "{err}");
        assert!(started.elapsed().as_secs() < 1);
    }

    #[test]
    fn inputs_classes_and_normalisation_are_bounded() {
        let dense = Architecture::Dense(DenseNet {
            hidden: vec![4],
            latent: 2,
        });
        for bad in [shape(2, 8, 8), shape(3, 0, 8), shape(1, 8, MAX_SIDE + 1)] {
            let err = check(&dense, bad, Use::Inference).unwrap_err();
            assert!(
                err.starts_with(&format!("`input` {bad}: images have 1 or 3")),
                "{err}"
            );
        }
        let zero_std = Preprocess {
            mean: Some(vec![0.5]),
            std: Some(vec![0.0]),
            ..Default::default()
        };
        let err = check_network(&dense, shape(1, 8, 8), &zero_std, Use::Inference).unwrap_err();
        assert_eq!(err, "`preprocess`: std must be positive and mean finite");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_classes(&names(&["cat", "dog"])).is_ok());
        assert_eq!(check_classes(&[]).unwrap_err(), "no class names");
        assert_eq!(
            check_classes(&names(&["a", " "])).unwrap_err(),
            "name 2 of 2 is empty; give one name per output"
        );
        assert_eq!(
            check_classes(&names(&["a", "b", "a"])).unwrap_err(),
            "`a` is named twice: its outputs could not be told apart"
        );
    }

    #[test]
    fn tensors_are_bounded_by_rank_size_and_values() {
        assert!(check_tensor("encoder.0.weight", &[2, 3], &[0.0; 6]).is_ok());
        assert!(check_tensor("scalar", &[], &[1.0]).is_ok());
        let err = check_tensor("x", &[1, 1, 1, 1, 1], &[0.0]).unwrap_err();
        assert_eq!(
            err,
            "tensor `x` has 5 dimensions [1, 1, 1, 1, 1]; no layer here holds more than 4"
        );
        let err = check_tensor("head.weight", &[0, 64], &[]).unwrap_err();
        assert_eq!(
            err,
            "tensor `head.weight` has shape [0, 64]: a dimension of size 0 holds no weights"
        );
        let err = check_tensor("a\u{1b}[31m", &[2], &[1.0, f32::INFINITY]).unwrap_err();
        assert_eq!(
            err,
            "tensor `a\\u{1b}[31m` holds inf: the weights are broken (a diverged run?)"
        );
        let err = check_tensor("encoder.bn1.running_var", &[2], &[1.0, -0.5]).unwrap_err();
        assert!(err.contains("holds the variance -0.5"), "{err}");
        assert!(check_tensor("encoder.bn1.running_mean", &[2], &[1.0, -0.5]).is_ok());
    }
}
