//! Train and eval modes, handed down through every forward pass.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

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
    share: Option<Share>,
}

/// The rows of a global batch one replica of a data-parallel run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Share {
    first: usize,
    rows: usize,
    of: usize,
}

impl<'r> Pass<'r> {
    pub fn train(rng: &'r mut ChaCha8Rng) -> Self {
        Self {
            mode: Mode::Train,
            rng: Some(rng),
            share: None,
        }
    }

    pub fn eval() -> Pass<'static> {
        Pass {
            mode: Mode::Eval,
            rng: None,
            share: None,
        }
    }

    /// The same pass over `rows` of a global batch of `of` rows (a replica's share): dropout
    /// draws the masks of the whole batch, as one process would, and keeps those rows', so that
    /// the replicas together drop what one process drops.
    pub fn for_rows(self, rows: Range<usize>, of: usize) -> Self {
        assert!(rows.end <= of, "rows {rows:?} of a batch of {of}");
        Self {
            share: Some(Share {
                first: rows.start,
                rows: rows.len(),
                of,
            }),
            ..self
        }
    }

    /// The same pass in another mode, sharing the generator (a frozen encoder in eval mode
    /// under a head that trains).
    pub fn with_mode(&mut self, mode: Mode) -> Pass<'_> {
        Pass {
            mode,
            rng: self.rng.as_deref_mut(),
            share: self.share,
        }
    }

    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Draws `n` Bernoulli(`p`) outcomes (true = drop) for a batch's values, row after row;
    /// in a pass over a share of the rows ([`Pass::for_rows`]), those rows' outcomes of the
    /// whole batch's draw.
    ///
    /// # Panics
    /// In a training pass made without a generator (a caller bug: [`Pass::train`] needs one).
    pub fn drops(&mut self, n: usize, p: f64) -> Vec<bool> {
        let rng = self
            .rng
            .as_deref_mut()
            .expect("a training pass with dropout needs a generator");
        let Some(Share { first, rows, of }) = self.share else {
            return (0..n).map(|_| rng.gen_bool(p)).collect();
        };
        let per_row = n / rows.max(1);
        let all: Vec<bool> = (0..of * per_row).map(|_| rng.gen_bool(p)).collect();
        all[first * per_row..(first + rows) * per_row].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Two replicas' masks, laid end to end, are the mask one process draws for the whole
    /// batch, and each leaves its generator where the whole draw leaves it.
    #[test]
    fn shares_of_a_batch_drop_what_the_whole_batch_drops() {
        let (rows, per_row) = (5, 7);
        let mut one = ChaCha8Rng::seed_from_u64(4);
        let whole = Pass::train(&mut one).drops(rows * per_row, 0.3);
        let mut joined = Vec::new();
        for share in [0..2, 2..5] {
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let len = share.len() * per_row;
            let mut pass = Pass::train(&mut rng).for_rows(share, rows);
            joined.extend(pass.drops(len, 0.3));
            assert_eq!(rng.get_word_pos(), one.get_word_pos());
        }
        assert_eq!(joined, whole);
        assert!(whole.contains(&true) && whole.contains(&false));
    }
}
