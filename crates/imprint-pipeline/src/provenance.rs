//! `run.json`: what produced an output folder. The program version, the source revision, the
//! resolved pipeline, each data source's file count, bytes and digest, seeds, thread count, the
//! kernel of the products of each training section and per-stage timings; beside it
//! `data-manifest.csv.gz` lists every file of the sources once.
//! Everything here is recorded only; nothing in it steers a run (the start time included), so
//! results stay a function of the pipeline, the data and the seeds.

use crate::sidecar::{read_json, write_json};
use crate::{Pipeline, Prepared, Result};
use imprint_data::{
    first_change, read_manifest, write_manifests, Manifest, ManifestEntry, SourceRecord,
    MANIFEST_FILE,
};
use imprint_nn::{Choice, Precision};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const RUN_FORMAT: &str = "imprint-run/1";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source each data role was read from (in records of older versions, its files).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSources {
    pub unlabeled: SourceRecord,
    pub labeled: SourceRecord,
    pub test: SourceRecord,
}

impl DataSources {
    /// The sources of `data`; none for the labeled and test roles when no labels were given.
    pub fn of(data: &Prepared) -> DataSources {
        let given = |d: &imprint_data::Dataset| match data.has_labels {
            true => SourceRecord::of(&d.source),
            false => SourceRecord::default(),
        };
        DataSources {
            unlabeled: SourceRecord::of(&data.unlabeled.source),
            labeled: given(&data.labeled),
            test: given(&data.test),
        }
    }
}

/// One timed step of a job; `reused` when `--resume` kept an earlier result instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub seconds: f64,
    #[serde(default)]
    pub reused: bool,
}

/// The kernel that computed a training section's convolution and linear products: what its
/// `precision` asked for and what this CPU ran (f32 where bf16 was asked of a CPU without bf16
/// products).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductsRecord {
    pub precision: Precision,
    /// `f32`, `bf16-avx512` or `bf16-amx`.
    pub kernel: String,
    pub description: String,
}

impl ProductsRecord {
    fn of(choice: Choice) -> Self {
        Self {
            precision: choice.asked,
            kernel: choice.kernel.name().into(),
            description: choice.to_string(),
        }
    }
}

/// The content of `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format: String,
    /// `compare`, `pretrain` or `finetune`.
    pub command: String,
    pub program_version: String,
    /// `git rev-parse HEAD` of the working directory (where pipelines and data are read), when
    /// it is a git checkout.
    pub git_revision: Option<String>,
    /// Whether tracked files differed from that revision.
    pub git_dirty: Option<bool>,
    /// UTC, for the record only.
    pub started_at: String,
    pub threads: usize,
    pub seeds: Vec<u64>,
    pub resumed: bool,
    /// False while the job runs or when it was interrupted.
    pub finished: bool,
    pub pipeline: Pipeline,
    pub data: DataSources,
    /// By section (`pretrain`, `finetune`), the kernel of its products; absent in records of
    /// older versions.
    #[serde(default)]
    pub products: BTreeMap<String, ProductsRecord>,
    pub stages: Vec<Stage>,
    pub total_seconds: f64,
}

/// Collects a job's provenance as it goes and writes it as `run.json`.
pub struct RunLog {
    info: RunInfo,
    clock: Instant,
    /// Whether this job wrote the folder's `data-manifest.csv.gz` yet (once is enough).
    manifest_written: bool,
}

impl RunLog {
    /// Starts the record of `command` on the resolved pipeline `p`.
    pub fn start(command: &str, p: &Pipeline, seeds: Vec<u64>) -> RunLog {
        let (git_revision, git_dirty) = git_state();
        let sections = match command {
            "pretrain" => vec![("pretrain", p.pretrain.precision)],
            "finetune" => vec![("finetune", p.finetune.precision)],
            _ => vec![
                ("pretrain", p.pretrain.precision),
                ("finetune", p.finetune.precision),
            ],
        };
        let products = sections
            .into_iter()
            .map(|(name, asked)| (name.to_string(), ProductsRecord::of(Choice::of(asked))))
            .collect();
        RunLog {
            info: RunInfo {
                format: RUN_FORMAT.into(),
                command: command.into(),
                program_version: VERSION.into(),
                git_revision,
                git_dirty,
                started_at: utc_timestamp(SystemTime::now()),
                threads: rayon::current_num_threads(),
                seeds,
                resumed: false,
                finished: false,
                pipeline: p.clone(),
                data: DataSources::default(),
                products,
                stages: Vec::new(),
                total_seconds: 0.0,
            },
            clock: Instant::now(),
            manifest_written: false,
        }
    }

    /// Runs `f` as the stage `name`, recording its wall time.
    pub fn time<T>(&mut self, name: impl Into<String>, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let value = f();
        self.stage(name, t.elapsed().as_secs_f64(), false);
        value
    }

    pub fn stage(&mut self, name: impl Into<String>, seconds: f64, reused: bool) {
        self.info.stages.push(Stage {
            name: name.into(),
            seconds,
            reused,
        });
    }

    pub(crate) fn set_resumed(&mut self) {
        self.info.resumed = true;
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// One line per kind of products the job computes, sections that share one together:
    /// `pretrain, finetune: bf16 products with f32 sums on AMX tiles (tdpbf16ps)`.
    pub fn products_lines(&self) -> Vec<String> {
        let mut by_kind: Vec<(Vec<&str>, &str)> = Vec::new();
        let sections = ["pretrain", "finetune"].into_iter();
        let records = sections.filter_map(|s| self.info.products.get(s).map(|r| (s, r)));
        for (section, record) in records {
            match by_kind.iter_mut().find(|(_, d)| *d == record.description) {
                Some((sections, _)) => sections.push(section),
                None => by_kind.push((vec![section], &record.description)),
            }
        }
        by_kind
            .into_iter()
            .map(|(sections, description)| format!("{}: {description}", sections.join(", ")))
            .collect()
    }

    /// Writes `out/run.json` (and, the first time, `out/data-manifest.csv.gz`); jobs call it as
    /// they go so an interrupted run leaves a record.
    pub(crate) fn write(&mut self, out: &Path, data: &Prepared, finished: bool) -> Result<()> {
        if !self.manifest_written {
            let sources = [&data.unlabeled, &data.labeled, &data.test].map(|d| &*d.source);
            write_manifests(&out.join(MANIFEST_FILE), &sources)?;
            self.manifest_written = true;
        }
        self.info.data = DataSources::of(data);
        self.info.finished = finished;
        self.info.total_seconds = self.clock.elapsed().as_secs_f64();
        write_json(&out.join("run.json"), &self.info)
    }
}

/// How the source `now` differs from `recorded` (a record written into `folder`), naming the
/// first file that changed; `None` when it is the same. The file list comes from the folder's
/// `data-manifest.csv.gz` (or, in an older record, from the record itself).
pub(crate) fn data_change(
    folder: &Path,
    recorded: &SourceRecord,
    now: &Manifest,
) -> Option<String> {
    if recorded.matches(now) {
        return None;
    }
    let entry = |path: &str, bytes: u64, sha256: &str| ManifestEntry {
        path: path.to_string(),
        bytes,
        sha256: sha256.to_string(),
    };
    let summary = match recorded {
        SourceRecord::Files(files) => {
            let listed = |files: &[imprint_data::SourceFile]| {
                let mut v: Vec<ManifestEntry> = files
                    .iter()
                    .map(|f| entry(&f.path, f.bytes, &f.sha256))
                    .collect();
                v.sort();
                v
            };
            return first_change(&listed(files), &listed(&now.as_files()));
        }
        SourceRecord::Summary(summary) => summary,
    };
    let digests = format!(
        "digest {} recorded, {} now",
        summary.sha256,
        now.summary().sha256
    );
    let manifest = folder.join(MANIFEST_FILE);
    Some(match read_manifest(&manifest, &summary.path) {
        Ok(files) if !files.is_empty() => first_change(&files, now.entries())
            .map_or(digests.clone(), |change| format!("{change}; {digests}")),
        Ok(_) => format!("{digests}; {} does not list it", manifest.display()),
        Err(e) => format!("{digests}; the file that changed cannot be named: {e}"),
    })
}

/// Reads a `run.json` written by [`RunLog`].
pub fn read_run_info(path: &Path) -> Result<RunInfo> {
    read_json(path, RUN_FORMAT, "run record")
}

/// The working directory's git revision and whether tracked files changed; `None` outside a
/// checkout or without git.
pub(crate) fn git_state() -> (Option<String>, Option<bool>) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let revision = git(&["rev-parse", "--verify", "HEAD"])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()));
    let dirty = revision
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.trim().is_empty());
    (revision, dirty)
}

/// "1 thread", "2 threads": how reports and messages name a thread count.
pub fn threads_phrase(threads: usize) -> String {
    format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC), by the civil-from-days algorithm, to avoid a date crate.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thread_counts_read_as_english() {
        assert_eq!(threads_phrase(1), "1 thread");
        assert_eq!(threads_phrase(2), "2 threads");
    }

    fn manifest(files: &[(&str, u64, &str)]) -> Manifest {
        let entries = files
            .iter()
            .map(|&(path, bytes, sha256)| ManifestEntry {
                path: path.into(),
                bytes,
                sha256: sha256.into(),
            })
            .collect();
        Manifest::new(Path::new("d"), Path::new("d"), entries)
    }

    #[test]
    fn a_changed_source_names_its_first_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let then = manifest(&[("a.png", 1, "aa"), ("b.png", 2, "bb"), ("c.png", 3, "cc")]);
        let now = manifest(&[("a.png", 1, "aa"), ("b.png", 2, "b2"), ("c.png", 3, "c2")]);
        let recorded = SourceRecord::of(&then);
        assert_eq!(data_change(dir.path(), &recorded, &then), None);
        // without the recorded list, the digests alone
        let said = data_change(dir.path(), &recorded, &now).unwrap();
        assert!(said.starts_with("digest "), "{said}");
        assert!(
            said.contains("the file that changed cannot be named"),
            "{said}"
        );
        write_manifests(&dir.path().join(MANIFEST_FILE), &[&then]).unwrap();
        let said = data_change(dir.path(), &recorded, &now).unwrap();
        assert!(
            said.starts_with("b.png changed (2 bytes, sha256 bb recorded"),
            "{said}"
        );
        // an older record lists the files itself
        let older = SourceRecord::Files(then.as_files());
        assert_eq!(data_change(dir.path(), &older, &then), None);
        let said = data_change(dir.path(), &older, &now).unwrap();
        assert!(said.starts_with("d/b.png changed"), "{said}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
