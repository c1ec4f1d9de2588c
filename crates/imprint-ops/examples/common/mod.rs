//! Pieces the timing examples share.

use std::time::Instant;

/// A stopwatch on the wall clock, or on this process's CPU time: on a machine shared with
/// other work, a single-threaded run's CPU time leaves out the time others held the cores.
#[derive(Clone, Copy)]
pub enum Clock {
    Wall,
    Cpu,
}

impl Clock {
    /// Process CPU time when the command line says `--cpu-time`, else the wall clock.
    pub fn from_args(args: &[String]) -> Self {
        match args.iter().any(|a| a == "--cpu-time") {
            true => Clock::Cpu,
            false => Clock::Wall,
        }
    }

    pub fn now(self) -> f64 {
        match self {
            Clock::Wall => {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_secs_f64()
            }
            Clock::Cpu => {
                let mut t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime writes one timespec, which `t` is.
                unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
                t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
            }
        }
    }
}

/// The middle value of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
