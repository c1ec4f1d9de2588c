//! Replicas as threads of one process: each thread holds a [`Local`], and every operation is
//! an exchange of byte buffers through shared slots. Sums add the slots in rank order on every
//! replica, so all get the same bits, as MPI replicas do. For tests of data-parallel training
//! without MPI; a replica that stops (its thread panicked) ends the others' waits with a panic,
//! never a hang.

use crate::{from_bytes, to_bytes, Collective};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The slots every replica writes into and reads from, and the barrier's count.
struct State {
    slots: Vec<Vec<u8>>,
    /// Replicas arrived at the current barrier.
    arrived: usize,
    /// Barriers passed so far: a waiter leaves when it moves on.
    generation: u64,
    /// A replica dropped its handle: nobody will arrive at the next barrier.
    left: Option<usize>,
}

struct Shared {
    state: Mutex<State>,
    turn: Condvar,
}

/// One replica of a group made by [`local_group`]; send it to the thread that runs it.
pub struct Local {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// `size` replicas that talk through memory, rank 0 first.
pub fn local_group(size: usize) -> Vec<Local> {
    assert!(size > 0, "a group of no replicas");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slots: vec![Vec::new(); size],
            arrived: 0,
            generation: 0,
            left: None,
        }),
        turn: Condvar::new(),
    });
    (0..size)
        .map(|rank| Local {
            rank,
            size,
            shared: Arc::clone(&shared),
        })
        .collect()
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every replica has come this far.
    fn barrier<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.size {
            state.arrived = 0;
            state.generation += 1;
            self.shared.turn.notify_all();
            return state;
        }
        while state.generation == generation {
            if let Some(rank) = state.left {
                panic!("replica {rank} of the local group stopped");
            }
            state = self
                .shared
                .turn
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state
    }

    /// Every replica's `mine`, in rank order.
    fn exchange(&self, mine: Vec<u8>) -> Vec<Vec<u8>> {
        let mut state = self.lock();
        state.slots[self.rank] = mine;
        let state = self.barrier(state);
        let all = state.slots.clone();
        // Nobody writes the slots again before everybody has read them.
        drop(self.barrier(state));
        all
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.left.get_or_insert(self.rank);
        self.shared.turn.notify_all();
    }
}

/// The element-wise sum of `parts` (equal lengths), added in rank order.
fn sum_in_rank_order<T: Copy + std::ops::AddAssign>(parts: Vec<Vec<T>>, out: &mut [T]) {
    let mut parts = parts.into_iter();
    out.copy_from_slice(&parts.next().expect("at least one replica"));
    for part in parts {
        assert_eq!(
            part.len(),
            out.len(),
            "replicas summed buffers of other lengths"
        );
        out.iter_mut().zip(part).for_each(|(o, v)| *o += v);
    }
}

impl Collective for Local {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum(&self, values: &mut [f32]) {
        let all = self.exchange(to_bytes(values, f32::to_le_bytes));
        let parts = all
            .iter()
            .map(|b| from_bytes(b, f32::from_le_bytes))
            .collect();
        sum_in_rank_order(parts, values);
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let all = self.exchange(to_bytes(values, f64::to_le_bytes));
        let parts = all
            .iter()
            .map(|b| from_bytes(b, f64::from_le_bytes))
            .collect();
        sum_in_rank_order(parts, values);
    }

    fn gather(&self, values: &[f32]) -> Vec<f32> {
        let all = self.exchange(to_bytes(values, f32::to_le_bytes));
        all.iter()
            .flat_map(|b| from_bytes(b, f32::from_le_bytes))
            .collect()
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let mine = if self.rank == 0 {
            std::mem::take(bytes)
        } else {
            Vec::new()
        };
        let mut all = self.exchange(mine);
        *bytes = std::mem::take(&mut all[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on each replica of a group of `size` in its own thread; the results in rank
    /// order.
    fn on_each<R: Send>(size: usize, f: impl Fn(Local) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let handles: Vec<_> = local_group(size)
                .into_iter()
                .map(|member| s.spawn(|| f(member)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_gathers_and_broadcasts_agree_on_every_replica() {
        let results = on_each(3, |me| {
            let r = me.rank() as f32;
            let mut v = vec![r, 10.0 * r];
            me.sum(&mut v);
            let mut w = vec![0.5 * r as f64];
            me.sum_f64(&mut w);
            let gathered = me.gather(&vec![r; me.rank() + 1]);
            let mut bytes = vec![me.rank() as u8; 2 - me.rank().min(2)];
            me.broadcast(&mut bytes);
            (v, w, gathered, bytes)
        });
        for (v, w, gathered, bytes) in results {
            assert_eq!(v, [3.0, 30.0]);
            assert_eq!(w, [1.5]);
            assert_eq!(gathered, [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
            assert_eq!(bytes, [0, 0]);
        }
    }

    /// The sum is taken in rank order on every replica: 1e8 + 1 - 1e8 is 0 in f32 in this
    /// order (1 is lost against 1e8), and every replica says so.
    #[test]
    fn sums_add_in_rank_order() {
        let results = on_each(3, |me| {
            let mut v = [[1e8f32], [1.0], [-1e8]][me.rank()];
            me.sum(&mut v);
            v[0]
        });
        assert_eq!(results, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_replica_that_stops_ends_the_others_wait() {
        let results = on_each(2, |me| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if me.rank() == 1 {
                    drop(me);
                    return;
                }
                let mut v = [1.0f32];
                me.sum(&mut v);
            }))
            .is_err()
        });
        assert_eq!(results, [true, false]);
    }
}
