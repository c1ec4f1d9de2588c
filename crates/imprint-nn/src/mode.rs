//! Train and eval modes, handed down through every forward pass.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How layers with a training behaviour act: batch norm on batch statistics (updating its
/// running ones) and dropout dropping, or both fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// One forward pass: its mode, and in training the generator dropout draws its masks from. The
/// generator is the caller's, never the device's: a run's masks then follow from its own seed,
/// not from whatever ran before it on the same device.
pub struct Pass<'r> {
    pub mode: Mode,
    rng: Option<&'r mut ChaCha8Rng>,
}

impl<'r> Pass<'r> {
    pub fn train(rng: &'r mut ChaCha8Rng) -> Self {
        Self {
            mode: Mode::Train,
            rng: Some(rng),
        }
    }

    pub fn eval() -> Pass<'static> {
        Pass {
            mode: Mode::Eval,
            rng: None,
        }
    }

    /// The same pass in another mode, sharing the generator (a frozen encoder in eval mode
    /// under a head that trains).
    pub fn with_mode(&mut self, mode: Mode) -> Pass<'_> {
        Pass {
            mode,
            rng: self.rng.as_deref_mut(),
        }
    }

    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Draws `n` Bernoulli(`p`) outcomes (true = drop).
    ///
    /// # Panics
    /// In a training pass made without a generator (a caller bug: [`Pass::train`] needs one).
    pub fn drops(&mut self, n: usize, p: f64) -> Vec<bool> {
        let rng = self
            .rng
            .as_deref_mut()
            .expect("a training pass with dropout needs a generator");
        (0..n).map(|_| rng.gen_bool(p)).collect()
    }
}
