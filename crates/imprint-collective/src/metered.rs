//! What the replicas said to each other: a [`Collective`] that counts the calls, bytes and
//! seconds of another, to tell what communication costs a run.

use crate::Collective;
use std::cell::Cell;
use std::time::Instant;

/// The communication of a run so far, as one replica saw it: calls, bytes it contributed (its
/// buffer's size; what crosses the network depends on the algorithm), and the seconds it spent
/// in them, waiting for slower replicas included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Traffic {
    fn add(&mut self, bytes: usize, since: Instant) {
        self.calls += 1;
        self.bytes += bytes as u64;
        self.seconds += since.elapsed().as_secs_f64();
    }
}

/// `inner`, counting its sums (f32 and f64 together), gathers and broadcasts.
pub struct Metered<C> {
    inner: C,
    sums: Cell<Traffic>,
    gathers: Cell<Traffic>,
    broadcasts: Cell<Traffic>,
}

impl<C: Collective> Metered<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            sums: Cell::default(),
            gathers: Cell::default(),
            broadcasts: Cell::default(),
        }
    }

    /// The collective it counts.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Sums, gathers and broadcasts so far.
    pub fn traffic(&self) -> [Traffic; 3] {
        [self.sums.get(), self.gathers.get(), self.broadcasts.get()]
    }

    fn count<R>(&self, cell: &Cell<Traffic>, bytes: usize, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let out = f();
        let mut t = cell.get();
        t.add(bytes, start);
        cell.set(t);
        out
    }
}

impl<C: Collective> Collective for Metered<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn sum(&self, values: &mut [f32]) {
        self.count(&self.sums, std::mem::size_of_val(values), || {
            self.inner.sum(values)
        })
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.count(&self.sums, std::mem::size_of_val(values), || {
            self.inner.sum_f64(values)
        })
    }

    fn gather(&self, values: &[f32]) -> Vec<f32> {
        self.count(&self.gathers, std::mem::size_of_val(values), || {
            self.inner.gather(values)
        })
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        self.count(&self.broadcasts, len, || self.inner.broadcast(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Single;

    #[test]
    fn counts_calls_and_bytes_by_kind() {
        let m = Metered::new(Single);
        m.sum(&mut [0.0f32; 4]);
        m.sum_f64(&mut [0.0f64; 2]);
        m.gather(&[0.0; 3]);
        let [sums, gathers, broadcasts] = m.traffic();
        assert_eq!((sums.calls, sums.bytes), (2, 32));
        assert_eq!((gathers.calls, gathers.bytes), (1, 12));
        assert_eq!(broadcasts, Traffic::default());
    }
}
