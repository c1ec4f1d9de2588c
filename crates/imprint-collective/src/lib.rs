//! What data-parallel training asks of the processes it runs on: each replica holds the whole
//! model and trains on its share of every global batch; their gradients are summed, their
//! batch-norm statistics may be, and contrastive codes are gathered so that every image of the
//! global batch meets every other. [`Collective`] is that handful of operations. [`Single`] is
//! one process alone (every operation the identity); [`local_group`] is several replicas in
//! threads of one process, for tests; the MPI implementation lives in `imprint-mpi`, behind a
//! cargo feature, so that nothing here needs MPI.
//!
//! Every sum is taken in an order fixed by the number of replicas alone, never by which
//! message arrived first, and every replica ends with the same bits: replicas that start equal
//! stay equal, and a run repeats itself exactly.

mod local;
mod metered;

pub use local::{local_group, Local};
pub use metered::{Metered, Traffic};

use std::ops::Range;
use std::rc::Rc;

/// The operations data-parallel training needs between its replicas. Every replica calls the
/// same operations in the same order (a collective call each replica does not make waits
/// forever, or until the launcher ends the job).
pub trait Collective {
    /// This replica's place, from 0; replica 0 writes the outputs.
    fn rank(&self) -> usize;

    /// How many replicas run.
    fn size(&self) -> usize;

    /// Replaces `values` on every replica by their element-wise sum over the replicas (every
    /// replica passes the same length), the same bits on every replica.
    fn sum(&self, values: &mut [f32]);

    /// [`Collective::sum`] in f64, for statistics summed before they are divided.
    fn sum_f64(&self, values: &mut [f64]);

    /// Every replica's `values` one after another in rank order; the lengths may differ.
    fn gather(&self, values: &[f32]) -> Vec<f32>;

    /// Replaces `bytes` on every replica by replica 0's.
    fn broadcast(&self, bytes: &mut Vec<u8>);
}

/// A handle to the replicas of a run, shared by the loop and by ops that outlive a call (a
/// backward pass recorded on the tape sums its statistics when the tape runs).
pub type Replicas = Rc<dyn Collective>;

/// One process alone: rank 0 of 1, every operation the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum(&self, _values: &mut [f32]) {}

    fn sum_f64(&self, _values: &mut [f64]) {}

    fn gather(&self, values: &[f32]) -> Vec<f32> {
        values.to_vec()
    }

    fn broadcast(&self, _bytes: &mut Vec<u8>) {}
}

/// [`Single`] as a handle.
pub fn single() -> Replicas {
    Rc::new(Single)
}

/// Replica `rank`'s share of `total` items (a global batch's rows) among `size` replicas: a
/// contiguous range, the first `total % size` replicas taking one item more, so that the
/// shares laid end to end in rank order are the items in their order.
pub fn share(total: usize, rank: usize, size: usize) -> Range<usize> {
    assert!(rank < size, "replica {rank} of {size}");
    let (base, extra) = (total / size, total % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// `x` in little-endian bytes, for replicas that exchange bytes.
fn to_bytes<const N: usize, T: Copy>(x: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    x.iter().flat_map(|&v| f(v)).collect()
}

/// The values of little-endian `bytes`.
fn from_bytes<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order_and_differ_by_at_most_one() {
        for total in [0, 1, 5, 8, 13, 256] {
            for size in 1..=6 {
                let shares: Vec<Range<usize>> = (0..size).map(|r| share(total, r, size)).collect();
                let laid: Vec<usize> = shares.iter().flat_map(|s| s.clone()).collect();
                assert_eq!(laid, (0..total).collect::<Vec<_>>(), "{total} over {size}");
                let lens: Vec<usize> = shares.iter().map(|s| s.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "{lens:?}");
            }
        }
        assert_eq!(share(10, 0, 3), 0..4);
        assert_eq!(share(10, 2, 3), 7..10);
    }

    #[test]
    fn one_process_alone_changes_nothing() {
        let one = single();
        let mut v = [1.5f32, -2.0];
        one.sum(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(one.gather(&v), v.to_vec());
        let mut bytes = vec![7u8, 8];
        one.broadcast(&mut bytes);
        assert_eq!(bytes, [7, 8]);
        assert_eq!((one.rank(), one.size()), (0, 1));
    }
}
