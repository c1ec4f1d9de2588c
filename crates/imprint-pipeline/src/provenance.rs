//! `run.json`: what produced an output folder. The program version, the source revision, the
//! resolved pipeline, the data files with their sha256, seeds, thread count and per-stage
//! timings. Everything here is recorded only; nothing in it steers a run (the start time
//! included), so results stay a function of the pipeline, the data and the seeds.

use crate::sidecar::{read_json, write_json};
use crate::{Pipeline, Prepared, Result};
use imprint_data::SourceFile;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const RUN_FORMAT: &str = "imprint-run/1";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The files each data role was read from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataFiles {
    pub unlabeled: Vec<SourceFile>,
    pub labeled: Vec<SourceFile>,
    pub test: Vec<SourceFile>,
}

impl DataFiles {
    pub fn of(data: &Prepared) -> DataFiles {
        DataFiles {
            unlabeled: data.unlabeled.files.clone(),
            labeled: data.labeled.files.clone(),
            test: data.test.files.clone(),
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
    pub data: DataFiles,
    pub stages: Vec<Stage>,
    pub total_seconds: f64,
}

/// Collects a job's provenance as it goes and writes it as `run.json`.
pub struct RunLog {
    info: RunInfo,
    clock: Instant,
}

impl RunLog {
    /// Starts the record of `command` on the resolved pipeline `p`.
    pub fn start(command: &str, p: &Pipeline, seeds: Vec<u64>) -> RunLog {
        let (git_revision, git_dirty) = git_state();
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
                data: DataFiles::default(),
                stages: Vec::new(),
                total_seconds: 0.0,
            },
            clock: Instant::now(),
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

    /// Writes `out/run.json`; jobs call it as they go so an interrupted run leaves a record.
    pub(crate) fn write(&mut self, out: &Path, data: &Prepared, finished: bool) -> Result<()> {
        self.info.data = DataFiles::of(data);
        self.info.finished = finished;
        self.info.total_seconds = self.clock.elapsed().as_secs_f64();
        write_json(&out.join("run.json"), &self.info)
    }
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

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
