//! The comparison: every strategy on the identical labeled subsets, seeds and budget, with and
//! without pre-training, and its resumption.

use crate::config::Route;
use crate::finetune_job::{labeled_subset, load_encoder, run_name, run_one, StartPoint};
use crate::pretrain_job::{pretrain_artifacts, PretrainAt};
use crate::provenance::{data_change, read_run_info, threads_phrase, RunLog};
use crate::sidecar::{read_encoder_sidecar, sidecar_path};
use crate::{create_dir, Observer, Pipeline, PipelineError, Prepared, Result};
use dfdx::prelude::Cpu;
use imprint_data::SourceFile;
use imprint_finetune::Strategy;
use imprint_nn::Encoder;
use imprint_report::{self as report, RunRecord, SummaryRow};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub struct CompareOutcome {
    pub records: Vec<RunRecord>,
    pub summary: Vec<SummaryRow>,
    pub table: String,
}

/// Every strategy on the identical labeled subset for each seed and budget, pre-training once
/// per seed. Writes `results.csv` and `run.json` (after every run), `summary.csv`, `report.md`,
/// `accuracy.png`, the resolved `pipeline.toml`, the labeled items and per-run metrics.
///
/// With `resume`, an interrupted run in `out` is completed: runs already in `results.csv` are
/// kept, and a seed's finished pre-training is loaded instead of repeated. Every random draw
/// follows from the seeds, so the result equals an uninterrupted run's. The same extends a
/// finished comparison by more seeds, budgets or strategies.
pub fn compare(
    p: &Pipeline,
    data: &Prepared,
    out: &Path,
    obs: &dyn Observer,
    log: &mut RunLog,
    resume: bool,
) -> Result<CompareOutcome> {
    // The imported network is checked before anything is written.
    let c = &p.compare;
    let imported = match &c.imported {
        Some(path) if c.routes.iter().any(|r| *r != Route::SelfSupervised) => {
            let start = StartPoint::read(path)?;
            let encoder = start.encoder_for(p, data.shape())?;
            Some((encoder, start.source))
        }
        _ => None,
    };
    create_dir(out)?;
    let done = if resume {
        log.set_resumed();
        resume_state(p, data, out)?
    } else {
        Vec::new()
    };
    let resolved = toml::to_string_pretty(p)
        .map_err(|e| PipelineError::Output(format!("pipeline.toml: {e}")))?;
    imprint_fs::write_atomic(out.join("pipeline.toml"), resolved.as_bytes())?;
    log.write(out, data, false)?;
    let started = Instant::now();
    let mut encoders = Pretrained {
        p,
        data,
        out,
        obs,
        resume,
        imported: imported.as_ref(),
        made: BTreeMap::new(),
    };
    let mut records = Vec::new();
    let kept = |name: &str, k: usize, seed: u64| {
        done.iter()
            .find(|r| r.strategy == name && r.labels_per_class == k && r.seed == seed)
    };
    for &seed in &c.seeds {
        // Each route's encoder first, as a run of the seed will need it (none when every run
        // that would is kept).
        for &route in &c.routes {
            let needed = c.strategies.iter().any(|&s| {
                s.uses_pretrained()
                    && c.labels_per_class
                        .iter()
                        .any(|&k| kept(&route.record_name(s), k, seed).is_none())
            });
            if needed {
                encoders.get(route, seed, log)?;
            }
        }
        for &k in &c.labels_per_class {
            let train = labeled_subset(
                data,
                k,
                seed,
                &out.join(format!("labeled/k{k}-seed{seed}.csv")),
            )?;
            for &strategy in &c.strategies {
                let routes: &[Option<Route>] = if strategy.uses_pretrained() {
                    &c.routes.iter().map(|&r| Some(r)).collect::<Vec<_>>()
                } else {
                    &[None]
                };
                for &route in routes {
                    let name =
                        route.map_or(strategy.name().to_string(), |r| r.record_name(strategy));
                    let folder = run_name(&name, k, seed);
                    let record = match kept(&name, k, seed) {
                        Some(record) => {
                            log.stage(folder, record.finetune_seconds, true);
                            record.clone()
                        }
                        None => {
                            let encoder = route.map(|r| encoders.get(r, seed, log)).transpose()?;
                            let mut outcome = run_one(
                                p,
                                data,
                                &train,
                                encoder.as_ref().map(|(e, _)| e),
                                strategy,
                                k,
                                seed,
                                &out.join("runs").join(&folder),
                                resume,
                            )?;
                            outcome.record.strategy = name;
                            outcome.record.pretrain_seconds =
                                encoder.map_or(0.0, |(_, seconds)| seconds);
                            log.stage(folder, outcome.record.finetune_seconds, false);
                            outcome.record
                        }
                    };
                    obs.run_finished(&record);
                    records.push(record);
                    report::write_results_csv(&out.join("results.csv"), &records)?;
                    log.write(out, data, false)?;
                }
            }
        }
    }
    let report_start = Instant::now();
    let summary = report::summarize(&records, Strategy::SCRATCH.name());
    report::write_summary_csv(&out.join("summary.csv"), &summary)?;
    let context = format!(
        "Pipeline `{}`: {}. Encoder {}, pre-trained on {} unlabeled images for {}; \
         fine-tuned {}; test set of {} images{}; seeds {:?}. Wall time {:.1} s on {}{}.",
        p.name,
        p.description,
        p.pretrain.architecture.describe(data.shape()),
        data.unlabeled.len(),
        p.pretrain.describe(),
        fine_tuning(p)?,
        data.test.len(),
        match p.data.test {
            Some(_) => String::new(),
            None => format!(
                " held out from the labeled images (split seed {})",
                p.data.split_seed
            ),
        },
        c.seeds,
        started.elapsed().as_secs_f64(),
        threads_phrase(rayon::current_num_threads()),
        if resume {
            " (resumed; earlier runs kept)"
        } else {
            ""
        },
    );
    let checks = data.checks.describe();
    let context = if checks.is_empty() {
        context
    } else {
        format!("{context} Content checks: {checks}.")
    };
    let md = report::render_markdown(
        &format!("Pre-training vs scratch: {}", p.name),
        &context,
        &summary,
    );
    imprint_fs::write_atomic(out.join("report.md"), md.as_bytes())?;
    report::plot_accuracy(
        &out.join("accuracy.png"),
        &format!("{}: test accuracy", p.name),
        &summary,
    )?;
    log.stage("report", report_start.elapsed().as_secs_f64(), false);
    log.write(out, data, true)?;
    Ok(CompareOutcome {
        table: report::render_terminal_table(&summary),
        records,
        summary,
    })
}

/// Checks that `out` holds an earlier run of this pipeline (its `[compare]` grid aside), on the
/// same data and thread count, and returns the runs it finished. A folder with no recorded
/// pipeline yet starts afresh.
fn resume_state(p: &Pipeline, data: &Prepared, out: &Path) -> Result<Vec<RunRecord>> {
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

/// `[finetune]` in words, and each budget's own settings after it.
fn fine_tuning(p: &Pipeline) -> Result<String> {
    let mut text = p.finetune.describe();
    for &k in &p.compare.labels_per_class {
        if p.finetune_by_budget.contains_key(&k.to_string()) {
            let own = p.for_budget(k)?.finetune.describe();
            text.push_str(&format!("; with {k} labels per class, {own}"));
        }
    }
    Ok(text)
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

/// The encoders of a comparison's routes, each made when a run first needs it: pre-trained
/// (or reloaded, on `--resume`) once per seed, or once in all with `pretrain_once`.
struct Pretrained<'a> {
    p: &'a Pipeline,
    data: &'a Prepared,
    out: &'a Path,
    obs: &'a dyn Observer,
    resume: bool,
    imported: Option<&'a (Encoder<Cpu>, SourceFile)>,
    /// By route and pre-training seed: the encoder and the seconds its pre-training took.
    made: BTreeMap<(Route, u64), (Encoder<Cpu>, f64)>,
}

impl Pretrained<'_> {
    /// The encoder `route` gives the runs of `seed`, and its pre-training's seconds.
    fn get(&mut self, route: Route, seed: u64, log: &mut RunLog) -> Result<(Encoder<Cpu>, f64)> {
        let imported = || {
            self.imported
                .expect("validation requires compare.imported for the imported routes")
        };
        if route == Route::Imported {
            return Ok((imported().0.clone(), 0.0));
        }
        let c = &self.p.compare;
        let seed = if c.pretrain_once { c.seeds[0] } else { seed };
        if let Some((encoder, seconds)) = self.made.get(&(route, seed)) {
            return Ok((encoder.clone(), *seconds));
        }
        let from = (route == Route::ImportedThenSelf).then(|| {
            let (encoder, source) = imported();
            (encoder, source)
        });
        let folder = match route {
            Route::ImportedThenSelf => format!("pretrain/seed-{seed}-from-imported"),
            _ => format!("pretrain/seed-{seed}"),
        };
        let dir = self.out.join(folder);
        let stage = match route {
            Route::ImportedThenSelf => format!("pretrain from the imported network seed {seed}"),
            _ => format!("pretrain seed {seed}"),
        };
        let reused = self
            .resume
            .then(|| finished_pretraining(self.p, self.data, seed, &dir, from.map(|f| f.1)))
            .flatten();
        let (encoder, seconds) = match reused {
            Some((encoder, seconds)) => {
                self.obs.info(&format!(
                    "seed {seed}: reusing the pre-trained encoder in {}",
                    dir.display()
                ));
                log.stage(stage, seconds, true);
                (encoder, seconds)
            }
            None => {
                let from_what = match route {
                    Route::ImportedThenSelf => " from the imported network",
                    _ => "",
                };
                self.obs
                    .info(&format!("pre-training{from_what}, seed {seed}"));
                let at = PretrainAt {
                    seed,
                    dir: &dir,
                    resume: self.resume,
                    from,
                };
                let (encoder, _, seconds) =
                    pretrain_artifacts(self.p, self.data, &at, self.obs, log)?;
                log.stage(stage, seconds, false);
                (encoder, seconds)
            }
        };
        self.made.insert((route, seed), (encoder.clone(), seconds));
        Ok((encoder, seconds))
    }
}

/// A seed's earlier pre-training in `pre_dir`, when it finished (its sidecar is written last)
/// and fits this pipeline, data and start; `None` means pre-train again.
fn finished_pretraining(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    pre_dir: &Path,
    from: Option<&SourceFile>,
) -> Option<(Encoder<Cpu>, f64)> {
    let weights = pre_dir.join("encoder.safetensors");
    let side = read_encoder_sidecar(&sidecar_path(&weights)).ok()?;
    let fits = side.seed == seed
        && side.epochs == p.pretrain.epochs
        && side.preprocess == p.data.preprocess
        && side.data.matches(&data.unlabeled.source)
        && side.started_from.as_ref() == from;
    if !fits {
        return None;
    }
    let encoder = load_encoder(&weights, p, data.shape()).ok()?;
    Some((encoder, side.seconds.unwrap_or(0.0)))
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
