//! Where an interrupted job continues from. Checkpoints (`checkpoint.safetensors` in its folder):
//! weights, optimizer moments, random-stream positions and history in one file, written
//! atomically, with a fingerprint of what must be unchanged for it to be continued. A
//! pre-training leaves one at every epoch end, a fine-tuning every `finetune.checkpoint_every`
//! steps. They are written and read through [`Artifacts`]: by replica 0 alone, which hands what
//! it read to every replica. And what `--resume` finds already done: a comparison's finished
//! runs ([`finished_runs`]), or a finished pre-training, which is never continued
//! ([`refuse_other_pretraining`]).

use crate::provenance::{data_change, read_run_info};
use crate::sidecar::read_encoder_sidecar;
use crate::{Artifacts, Pipeline, PipelineError, Prepared, Result};
use imprint_finetune::{FinetuneSnapshot, FinetuneState, Strategy};
use imprint_nn::{save_tensors, NamedTensor};
use imprint_pretrain::{Snapshot, TrainingState};
use imprint_report::{self as report, RunRecord};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PRETRAIN_FORMAT: &str = "imprint-pretrain-checkpoint/2";
const FINETUNE_FORMAT: &str = "imprint-finetune-checkpoint/1";

pub fn checkpoint_path(out: &Artifacts) -> PathBuf {
    out.join("checkpoint.safetensors")
}

fn json<T: Serialize>(value: &T, path: &Path) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))
}

fn save<S: Serialize>(
    path: &Path,
    format: &str,
    run: String,
    tensors: &[NamedTensor],
    state: &S,
) -> Result<()> {
    let metadata = BTreeMap::from([
        ("format".to_string(), format.to_string()),
        ("run".to_string(), run),
        ("state".to_string(), json(state, path)?),
    ]);
    save_tensors(path, tensors, &metadata)?;
    Ok(())
}

/// The tensors and state of the checkpoint at `path`, after checking that it is of this kind
/// and of the run `run` describes.
fn load<S: DeserializeOwned>(
    path: &Path,
    format: &str,
    run: String,
    what: &str,
) -> Result<(Vec<NamedTensor>, S)> {
    let fail = |message: &str| {
        PipelineError::Input {
        path: path.display().to_string(),
        message: format!(
            "cannot resume from this {what} checkpoint: {message}; delete it to start the {what} over"
        ),
    }
    };
    let (tensors, metadata) = crate::bounds::weights_and_metadata(path)?;
    if metadata.get("format").map(String::as_str) != Some(format) {
        return Err(fail(&format!("its format is not `{format}`")));
    }
    if metadata.get("run") != Some(&run) {
        return Err(fail(
            "it was made with other settings, preprocessing or data",
        ));
    }
    let state: S = metadata
        .get("state")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| fail("its training state is missing or unreadable"))?;
    Ok((tensors.into_values().collect(), state))
}

/// What must be unchanged for a pre-training checkpoint to be continued: pre-training settings,
/// input preprocessing and the unlabeled data (its manifest's digest).
fn pretrain_run(p: &Pipeline, data: &Prepared, path: &Path) -> Result<String> {
    json(
        &(
            &p.pretrain,
            &p.data.preprocess,
            &data.unlabeled.source.summary().sha256,
        ),
        path,
    )
}

pub fn save_pretrain(out: &Artifacts, p: &Pipeline, data: &Prepared, s: &Snapshot) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        let run = pretrain_run(p, data, &path)?;
        save(&path, PRETRAIN_FORMAT, run, &s.tensors, &s.state)
    })
}

/// The pre-training checkpoint in `out`, if there is one, after checking that it belongs to
/// this pipeline and data.
pub fn load_pretrain(out: &Artifacts, p: &Pipeline, data: &Prepared) -> Result<Option<Snapshot>> {
    let (tensors, state) = out.read_back_with_tensors(|| {
        let path = checkpoint_path(out);
        if !path.exists() {
            return Ok((Vec::new(), None));
        }
        let run = pretrain_run(p, data, &path)?;
        let (tensors, state): (_, TrainingState) =
            load(&path, PRETRAIN_FORMAT, run, "pre-training")?;
        Ok((tensors, Some(state)))
    })?;
    Ok(state.map(|state| Snapshot { tensors, state }))
}

/// What a fine-tuning checkpoint must match: the fine-tuning settings and architecture, the
/// preprocessing, the strategy, budget and seed, and the labeled and unlabeled data.
fn finetune_run(
    p: &Pipeline,
    data: &Prepared,
    (strategy, k): (Strategy, usize),
    path: &Path,
) -> Result<String> {
    json(
        &(
            &p.finetune,
            &p.pretrain.architecture,
            &p.data.preprocess,
            strategy,
            k,
            &data.labeled.source.summary().sha256,
            &data.unlabeled.source.summary().sha256,
        ),
        path,
    )
}

pub fn save_finetune(
    out: &Artifacts,
    p: &Pipeline,
    data: &Prepared,
    run: (Strategy, usize),
    s: &FinetuneSnapshot,
) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        let fingerprint = finetune_run(p, data, run, &path)?;
        save(&path, FINETUNE_FORMAT, fingerprint, &s.tensors, &s.state)
    })
}

/// The fine-tuning checkpoint in `out`, if there is one, after checking that it belongs to
/// this run.
pub fn load_finetune(
    out: &Artifacts,
    p: &Pipeline,
    data: &Prepared,
    run: (Strategy, usize),
) -> Result<Option<FinetuneSnapshot>> {
    let (tensors, state) = out.read_back_with_tensors(|| {
        let path = checkpoint_path(out);
        if !path.exists() {
            return Ok((Vec::new(), None));
        }
        let fingerprint = finetune_run(p, data, run, &path)?;
        let (tensors, state): (_, FinetuneState) =
            load(&path, FINETUNE_FORMAT, fingerprint, "fine-tuning")?;
        Ok((tensors, Some(state)))
    })?;
    Ok(state.map(|state| FinetuneSnapshot { tensors, state }))
}

/// Removes a finished job's checkpoint (absent is fine).
pub fn remove(out: &Artifacts) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PipelineError::Output(format!("{}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    })
}

/// `--resume` continues an interrupted pre-training of this very run, never another one that
/// happens to sit in `out`: a finished encoder there must be of the same settings, seed and
/// data, or the command is refused before anything is written.
pub(crate) fn refuse_other_pretraining(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let sidecar = out.join("encoder.json");
    if !sidecar.exists() {
        return Ok(());
    }
    let side = read_encoder_sidecar(&sidecar)?;
    let differs = [
        (
            "pretrain.architecture",
            side.architecture != p.pretrain.architecture,
        ),
        ("the seed", side.seed != seed),
        ("pretrain.epochs", side.epochs != p.pretrain.epochs),
        ("data.preprocess", side.preprocess != p.data.preprocess),
    ]
    .into_iter()
    .find(|(_, differs)| *differs)
    .map(|(what, _)| what.to_string())
    .or_else(|| {
        data_change(out, &side.data, &data.unlabeled.source)
            .map(|change| format!("unlabeled data ({change})"))
    });
    let message = match differs {
        Some(what) => format!(
            "cannot resume: it holds a finished pre-training whose {what} differs from this \
             run's; choose another --out"
        ),
        None => "cannot resume: the pre-training here has already finished".into(),
    };
    Err(PipelineError::Input {
        path: sidecar.display().to_string(),
        message,
    })
}

/// Checks that `out` holds an earlier run of this pipeline (its `[compare]` grid aside), on the
/// same data and thread count, and returns the runs it finished. A folder with no recorded
/// pipeline yet starts afresh.
pub(crate) fn finished_runs(p: &Pipeline, data: &Prepared, out: &Path) -> Result<Vec<RunRecord>> {
    let recorded_path = out.join("pipeline.toml");
    let refuse = |path: &Path, message: String| PipelineError::Input {
        path: path.display().to_string(),
        message: format!("cannot resume: {message}"),
    };
    if !recorded_path.exists() {
        // An empty folder (but for the marker this job holds), or one holding only
        // pre-trainings made beforehand by `imprint pretrain --out DIR/pretrain/seed-N`: each
        // is reused where its sidecar fits.
        let only_pretrainings = std::fs::read_dir(out).map_or(true, |d| {
            d.flatten().all(|e| {
                let name = e.file_name();
                name == imprint_fs::MARKER
                    || name == imprint_fs::HOLDER
                    || (name == "pretrain" && e.path().is_dir())
            })
        });
        if only_pretrainings {
            return Ok(Vec::new());
        }
        return Err(refuse(
            out,
            "no pipeline.toml here, so this is not an output folder of `imprint run`".into(),
        ));
    }
    let recorded = Pipeline::from_file(&recorded_path)?;
    // Every run follows from its own (strategy, budget, seed), so the grid itself may grow or
    // shrink: the runs it still names are kept, new ones run. The name and description are
    // words for reports, and the memory budget and cache folder change speed: none changes a
    // result.
    let settings = |p: &Pipeline| {
        to_json(p).map(|mut json| {
            if let Some(o) = json.as_object_mut() {
                for key in ["compare", "name", "description"] {
                    o.remove(key);
                }
            }
            if let Some(d) = json.get_mut("data").and_then(|d| d.as_object_mut()) {
                for key in ["memory_budget_mb", "cache_dir"] {
                    d.remove(key);
                }
            }
            json
        })
    };
    if let Some(difference) = first_difference(&settings(&recorded)?, &settings(p)?, "") {
        return Err(refuse(&recorded_path, difference));
    }
    let run_json = out.join("run.json");
    if run_json.exists() {
        let info = read_run_info(&run_json)?;
        let roles = [
            ("unlabeled", &info.data.unlabeled, &data.unlabeled),
            ("labeled", &info.data.labeled, &data.labeled),
            ("test", &info.data.test, &data.test),
        ];
        for (role, recorded, now) in roles {
            if let Some(change) = data_change(out, recorded, &now.source) {
                return Err(refuse(
                    &run_json,
                    format!("the data.{role} files differ from the recorded run: {change}"),
                ));
            }
        }
    }
    let results = out.join("results.csv");
    if results.exists() {
        Ok(report::read_results_csv(&results)?)
    } else {
        Ok(Vec::new())
    }
}

fn to_json(p: &Pipeline) -> Result<serde_json::Value> {
    serde_json::to_value(p).map_err(|e| PipelineError::Output(format!("pipeline: {e}")))
}

/// The first setting (dotted key) whose value differs, described for the user.
fn first_difference(
    recorded: &serde_json::Value,
    now: &serde_json::Value,
    key: &str,
) -> Option<String> {
    use serde_json::Value;
    match (recorded, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                first_difference(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &sub,
                )
            })
        }
        _ if recorded == now => None,
        _ => Some(format!(
            "setting `{key}` is {now} now but {recorded} in the recorded pipeline; \
             resume with the same pipeline and flags, or start a new --out"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_dotted_key() {
        let a = serde_json::json!({"compare": {"seeds": [0, 1]}, "finetune": {"steps": 30}});
        let b = serde_json::json!({"compare": {"seeds": [0, 1]}, "finetune": {"steps": 31}});
        assert_eq!(first_difference(&a, &a, ""), None);
        let d = first_difference(&a, &b, "").unwrap();
        assert!(
            d.starts_with("setting `finetune.steps` is 31 now but 30"),
            "{d}"
        );
    }
}
