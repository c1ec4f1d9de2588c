//! Progress: on a terminal, a bar per job with its rate and time left; elsewhere (a log file, a
//! pipe), a plain line every few seconds saying the same. Lines for finished epochs and runs.

use imprint_pipeline::Observer;
use imprint_pretrain::EpochStats;
use imprint_report::RunRecord;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(15);

/// The job a bar or a plain line follows.
struct Job {
    /// What it is, e.g. `pre-training seed 0` or `run 3 of 24 (probe, k=25, seed 0)`.
    name: String,
    started: Instant,
    /// Units done when it began (a resumed job starts part-way).
    first: u64,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

/// The runs of a comparison: which is on, and how long the ones run here took.
#[derive(Default)]
struct Grid {
    index: usize,
    count: usize,
    name: String,
    started: Option<Instant>,
    seconds: Vec<f64>,
}

pub struct Bars {
    terminal: bool,
    job: RefCell<Option<Job>>,
    grid: RefCell<Grid>,
}

impl Bars {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            job: RefCell::new(None),
            grid: RefCell::new(Grid::default()),
        }
    }

    /// Ends the current job's bar.
    pub fn finish(&self) {
        if let Some(bar) = self.job.borrow_mut().take().and_then(|j| j.bar) {
            bar.finish_and_clear();
        }
    }

    fn println(&self, line: &str) {
        match self.job.borrow().as_ref().and_then(|j| j.bar.as_ref()) {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Moves the job `name` (begun anew when another was on) to `done` of `total` units
    /// (`unit`, and `units` for the rate), with `detail` (the loss, say).
    fn advance(
        &self,
        name: &str,
        (unit, units): (&str, &str),
        done: u64,
        total: u64,
        detail: &str,
    ) {
        let mut slot = self.job.borrow_mut();
        if slot.as_ref().is_none_or(|j| j.name != name) {
            if let Some(bar) = slot.take().and_then(|j| j.bar) {
                bar.finish_and_clear();
            }
            let bar = self.terminal.then(|| new_bar(units));
            *slot = Some(Job {
                name: name.to_string(),
                started: Instant::now(),
                first: done.saturating_sub(1),
                last_line: Instant::now(),
                bar,
            });
        }
        let job = slot.as_mut().expect("a job was just set");
        if let Some(bar) = &job.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_prefix(name.to_string());
            bar.set_message(match detail {
                "" => String::new(),
                d => format!(", {d}"),
            });
            return;
        }
        if job.last_line.elapsed() >= LOG_EVERY || done == total {
            job.last_line = Instant::now();
            let elapsed = job.started.elapsed().as_secs_f64();
            let finished = done.saturating_sub(job.first) as f64;
            let rate = finished / elapsed.max(1e-9);
            let left = match rate > 0.0 {
                true => format!(", about {} left", duration((total - done) as f64 / rate)),
                false => String::new(),
            };
            let detail = match detail {
                "" => String::new(),
                d => format!(", {d}"),
            };
            eprintln!(
                "{name}: {unit} {done}/{total}{detail}, {} {units}/s{left}",
                rate_text(rate)
            );
        }
    }
}

/// A bar: prefix, bar, position, the job's message, its rate in `units` and the time left.
fn new_bar(units: &str) -> ProgressBar {
    let units = units.to_string();
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}{msg}, {rate}, {eta} left")
            .expect("valid template")
            .with_key(
                "rate",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{} {units}/s", rate_text(s.per_sec()));
                },
            )
            .progress_chars("=> ");
    ProgressBar::new(1).with_style(style)
}

/// A rate with the digits that mean something: `7102`, `71.0`, `0.71`.
pub fn rate_text(per_second: f64) -> String {
    match per_second {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 1.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}

/// Seconds as `42 s`, `3 min 5 s` or `2 h 10 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

impl Bars {
    /// Runs `f`, a job of unknown length, under a spinner with the time it has taken, on a
    /// terminal (elsewhere the command's own lines say what it did).
    pub fn while_running<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        if !self.terminal {
            return f();
        }
        let spinner = ProgressBar::new_spinner().with_message(what.to_string());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        spinner.enable_steady_tick(Duration::from_millis(200));
        let value = f();
        spinner.finish_and_clear();
        value
    }
}

impl Observer for Bars {
    fn info(&self, message: &str) {
        self.println(message);
    }

    fn progress(&self, job: &str, done: usize, total: usize) {
        self.advance(job, ("image", "images"), done as u64, total as u64, "");
    }

    fn pretrain_batch(
        &self,
        seed: u64,
        epoch: usize,
        epochs: usize,
        done: usize,
        total: usize,
        loss: f64,
    ) {
        let all = (epochs * total) as u64;
        let at = (epoch * total + done) as u64;
        self.advance(
            &format!("pre-training seed {seed}"),
            ("batch", "batches"),
            at,
            all,
            &format!("epoch {}/{epochs}, loss {loss:.4}", epoch + 1),
        );
    }

    fn pretrain_epoch(&self, seed: u64, s: &EpochStats, epochs: usize) {
        let heldout = s
            .heldout_loss
            .map(|l| format!(", held-out {l:.4}"))
            .unwrap_or_default();
        let knn = s
            .knn_accuracy
            .map(|a| format!(", kNN monitor {:.1}%", 100.0 * a))
            .unwrap_or_default();
        self.println(&format!(
            "seed {seed} epoch {}/{epochs}: loss {:.4}{heldout}{knn}, {} images/s",
            s.epoch + 1,
            s.train_loss,
            rate_text(s.images_per_second)
        ));
        if s.epoch + 1 == epochs {
            self.finish();
        }
    }

    fn finetune_step(&self, done: usize, total: usize, loss: f32) {
        let name = {
            let grid = self.grid.borrow();
            match grid.count {
                0 => "fine-tuning".to_string(),
                n => format!("run {} of {n} ({})", grid.index, grid.name),
            }
        };
        self.advance(
            &name,
            ("step", "steps"),
            done as u64,
            total as u64,
            &format!("loss {loss:.4}"),
        );
        if done == total {
            self.finish();
        }
    }

    fn run_started(&self, index: usize, count: usize, name: &str) {
        let mut grid = self.grid.borrow_mut();
        grid.index = index;
        grid.count = count;
        grid.name = name.to_string();
        grid.started = Some(Instant::now());
    }

    fn run_finished(&self, r: &RunRecord) {
        self.finish();
        let left = {
            let mut grid = self.grid.borrow_mut();
            let took = grid.started.take().map(|t| t.elapsed().as_secs_f64());
            // A run kept from an earlier invocation takes no time and says nothing of the rest.
            if let Some(seconds) = took.filter(|s| *s > 0.5) {
                grid.seconds.push(seconds);
            }
            let rest = grid.count.saturating_sub(grid.index);
            match (rest, grid.seconds.is_empty()) {
                (0, _) | (_, true) => String::new(),
                (rest, false) => {
                    let mean = grid.seconds.iter().sum::<f64>() / grid.seconds.len() as f64;
                    let runs = if rest == 1 { "run" } else { "runs" };
                    format!(
                        "; {rest} {runs} left, about {} of fine-tuning",
                        duration(mean * rest as f64)
                    )
                }
            }
        };
        let (index, count) = {
            let grid = self.grid.borrow();
            (grid.index, grid.count)
        };
        self.println(&format!(
            "run {index} of {count}: {:>16} k={:<4} seed={:<3} accuracy {:.2}%  ({:.1} s){left}",
            r.strategy,
            r.labels_per_class,
            r.seed,
            100.0 * r.test_accuracy,
            r.finetune_seconds
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_read_plainly() {
        assert_eq!(rate_text(7101.6432), "7102");
        assert_eq!(rate_text(71.04), "71.0");
        assert_eq!(rate_text(0.714), "0.71");
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(185.0), "3 min 5 s");
        assert_eq!(duration(7800.0), "2 h 10 min");
    }
}
