//! How the learning rate moves over a run's steps.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Half a cosine from the full rate down to 0 after the warm-up.
    Cosine,
    /// PyTorch's `OneCycleLR` (cosine annealing, `div_factor` 25, `final_div_factor` 1e4): up
    /// from rate / 25 to the rate over the warm-up share of the steps, then down to
    /// rate / 250000, both along half a cosine.
    OneCycle,
}

/// Ratio of the rate at `step` (0-based, of `steps`) to the base rate, `warmup_fraction` of the
/// steps ramping up: linearly from 0 for `Constant` and `Cosine`, along the cycle for `OneCycle`.
pub fn factor(schedule: Schedule, warmup_fraction: f64, step: usize, steps: usize) -> f64 {
    if schedule == Schedule::OneCycle {
        return one_cycle(warmup_fraction, step, steps);
    }
    let warmup = (steps as f64 * warmup_fraction).round() as usize;
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine | Schedule::OneCycle => {
            let span = (steps - warmup).max(1) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * (step - warmup) as f64 / span).cos())
        }
    }
}

/// `OneCycleLR`'s two phases, as PyTorch computes them: the peak at step `pct * steps - 1`.
fn one_cycle(pct: f64, step: usize, steps: usize) -> f64 {
    const INITIAL: f64 = 1.0 / 25.0;
    const FINAL: f64 = INITIAL / 1e4;
    let anneal = |from: f64, to: f64, t: f64| {
        to + (from - to) / 2.0 * ((std::f64::consts::PI * t).cos() + 1.0)
    };
    let peak = (pct * steps as f64 - 1.0).max(0.0);
    let last = (steps as f64 - 1.0).max(1.0);
    let s = step as f64;
    if s <= peak && peak > 0.0 {
        anneal(INITIAL, 1.0, s / peak)
    } else {
        anneal(1.0, FINAL, ((s - peak) / (last - peak).max(1e-12)).min(1.0))
    }
}

impl Schedule {
    pub fn describe(self) -> Option<&'static str> {
        match self {
            Schedule::Constant => None,
            Schedule::Cosine => Some("cosine schedule"),
            Schedule::OneCycle => Some("one-cycle schedule"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        assert_eq!(factor(Schedule::Constant, 0.1, 0, 100), 0.1);
        assert_eq!(factor(Schedule::Constant, 0.1, 9, 100), 1.0);
        assert_eq!(factor(Schedule::Constant, 0.0, 57, 100), 1.0);
        assert_eq!(factor(Schedule::Cosine, 0.0, 0, 100), 1.0);
        assert!((factor(Schedule::Cosine, 0.0, 50, 100) - 0.5).abs() < 1e-12);
        assert!(factor(Schedule::Cosine, 0.0, 99, 100) < 1e-3);
    }

    /// The values PyTorch's scheduler gives: `OneCycleLR(opt, 0.1, total_steps=100,
    /// pct_start=0.15)` starts at 0.004, peaks at 0.1 on step 14 and ends at 4e-7 on step 99.
    #[test]
    fn one_cycle_matches_pytorch_endpoints() {
        let f = |s| factor(Schedule::OneCycle, 0.15, s, 100) * 0.1;
        assert!((f(0) - 0.004).abs() < 1e-12, "{}", f(0));
        assert!((f(14) - 0.1).abs() < 1e-12, "{}", f(14));
        assert!((f(99) - 4e-7).abs() < 1e-15, "{}", f(99));
        assert!(f(7) > 0.004 && f(7) < 0.1 && f(50) < 0.1 && f(50) > f(80));
    }
}
