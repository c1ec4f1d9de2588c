//! Terminal progress: one bar per pre-training epoch, a line per finished run.

use imprint_pipeline::Observer;
use imprint_pretrain::EpochStats;
use imprint_report::RunRecord;
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::RefCell;

pub struct Bars {
    bar: RefCell<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Self {
            bar: RefCell::new(None),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }

    fn println(&self, line: &str) {
        match &*self.bar.borrow() {
            // A hidden bar (output not a terminal) would swallow the line.
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Observer for Bars {
    fn info(&self, message: &str) {
        self.println(message);
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
        let mut slot = self.bar.borrow_mut();
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        if bar.length() != Some(total as u64) {
            bar.set_length(total as u64);
        }
        bar.set_prefix(format!("seed {seed} epoch {}/{epochs}", epoch + 1));
        bar.set_position(done as u64);
        bar.set_message(format!("loss {loss:.4}"));
    }

    fn pretrain_epoch(&self, seed: u64, s: &EpochStats, epochs: usize) {
        let heldout = s
            .heldout_loss
            .map(|l| format!(", held-out {l:.4}"))
            .unwrap_or_default();
        self.println(&format!(
            "seed {seed} epoch {}/{epochs}: loss {:.4}{heldout}, {:.0} images/s",
            s.epoch + 1,
            s.train_loss,
            s.images_per_second
        ));
        if s.epoch + 1 == epochs {
            self.finish();
        }
    }

    fn run_finished(&self, r: &RunRecord) {
        self.println(&format!(
            "{:>16} k={:<4} seed={:<3} accuracy {:.2}%  ({:.1} s)",
            r.strategy,
            r.labels_per_class,
            r.seed,
            100.0 * r.test_accuracy,
            r.finetune_seconds
        ));
    }
}
