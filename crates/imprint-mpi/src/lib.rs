//! The replicas of a data-parallel run as the processes of an MPI job (`mpirun -np N`, `srun`):
//! [`Mpi`] implements [`Collective`] on the world communicator of the system's MPI (Open MPI,
//! MPICH) through the `mpi` crate. Rank and size come from MPI itself, so whatever launched the
//! job (mpirun, Slurm, PBS) decides them.
//!
//! Sums are ours, on MPI's point-to-point messages, rather than `MPI_Allreduce`, whose order of
//! additions the standard leaves to the library (and some libraries to the message that arrives
//! first). Small buffers (batch-norm statistics) are gathered on rank 0, added in rank order and
//! broadcast: two collective calls, whatever the rank count. Large ones (gradients) go round a
//! ring, as MPI libraries and Horovod do for bandwidth: a reduce-scatter in which segment `k`
//! starts on rank `k` and collects the others in ring order, then an all-gather that copies each
//! finished segment to every rank; each rank sends and receives `2 (N - 1) / N` times the buffer.
//! Either way every element is added up once, in an order fixed by the rank count alone, and
//! copied to the others: every rank ends with the same bits, on every run.
//!
//! Everything here is behind the crate's `mpi` feature (imprint-cli's `mpi` turns it on), so
//! that the workspace builds on machines without an MPI library.
#![cfg(feature = "mpi")]

use imprint_collective::{share, Collective};
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::point_to_point::send_receive_into;
use mpi::topology::{Rank, SimpleCommunicator};
use mpi::traits::*;
use mpi::{Count, Threading};
use std::ops::AddAssign;

/// Buffers from this many bytes go round the ring; smaller ones through rank 0, where a ring's
/// `2 (N - 1)` messages in a row would cost more in latency than its bandwidth saves.
const RING_FROM_BYTES: usize = 64 << 10;

/// Broadcasts go in pieces of at most this many bytes (MPI counts are 32-bit).
const BROADCAST_PIECE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MpiError {
    #[error("MPI is already initialised in this process")]
    AlreadyInitialised,
    #[error(
        "the MPI library offers threading level {0:?}; imprint needs at least `Funneled` \
         (worker threads that never call MPI)"
    )]
    Threading(Threading),
}

/// This process as one rank of the MPI job that started it.
pub struct Mpi {
    world: SimpleCommunicator,
    /// Finalises MPI when dropped, after everything else here.
    _universe: Universe,
}

impl Mpi {
    /// Joins the job (`MPI_Init_thread`): call once, from the thread that will make every MPI
    /// call. A process started without a launcher is a job of one.
    pub fn init() -> Result<Self, MpiError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or(MpiError::AlreadyInitialised)?;
        if threading < Threading::Funneled {
            return Err(MpiError::Threading(threading));
        }
        Ok(Self {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Ends every rank of the job (`MPI_Abort`): for a rank that failed while the others may
    /// be waiting for it in a collective call.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn sum_any<T: Equivalence + Copy + Default + AddAssign>(&self, values: &mut [T]) {
        if self.size() == 1 {
            return;
        }
        if std::mem::size_of_val(values) < RING_FROM_BYTES || values.len() < self.size() {
            self.sum_at_root(values)
        } else {
            self.sum_round_ring(values)
        }
    }

    /// Gathers every rank's `values` on rank 0, adds them in rank order there, and broadcasts
    /// the sum.
    fn sum_at_root<T: Equivalence + Copy + Default + AddAssign>(&self, values: &mut [T]) {
        let root = self.world.process_at_rank(0);
        if self.rank() == 0 {
            let mut all = vec![T::default(); values.len() * self.size()];
            root.gather_into_root(&values[..], &mut all[..]);
            values.copy_from_slice(&all[..values.len()]);
            for part in all.chunks_exact(values.len()).skip(1) {
                values.iter_mut().zip(part).for_each(|(v, &p)| *v += p);
            }
        } else {
            root.gather_into(&values[..]);
        }
        root.broadcast_into(values);
    }

    /// The ring: `N - 1` steps of reduce-scatter, then `N - 1` of all-gather, each step a send
    /// to the next rank and a receive from the previous one.
    fn sum_round_ring<T: Equivalence + Copy + Default + AddAssign>(&self, values: &mut [T]) {
        let (n, r, len) = (self.size(), self.rank(), values.len());
        let segment = |k: usize| share(len, k % n, n);
        let next = self.world.process_at_rank(((r + 1) % n) as Rank);
        let prev = self.world.process_at_rank(((r + n - 1) % n) as Rank);
        let mut incoming = vec![T::default(); len.div_ceil(n)];
        // Step s: pass on the partial sum of segment r - s, add ours to that of r - s - 1.
        // Segment k thus starts on rank k, and rank r ends with segment r + 1 complete.
        for s in 0..n - 1 {
            let (send, recv) = (segment(r + n - s), segment(r + n - s - 1));
            let buf = &mut incoming[..recv.len()];
            send_receive_into(&values[send], &next, buf, &prev);
            for (v, &partial) in values[recv].iter_mut().zip(buf.iter()) {
                let mut sum = partial;
                sum += *v;
                *v = sum;
            }
        }
        // Step s: pass on finished segment r + 1 - s, receive finished segment r - s.
        for s in 0..n - 1 {
            let (send, recv) = (segment(r + 1 + n - s), segment(r + n - s));
            let buf = &mut incoming[..recv.len()];
            send_receive_into(&values[send], &next, buf, &prev);
            values[recv].copy_from_slice(buf);
        }
    }
}

/// Makes a panic on this process end every process of the job once its message is printed:
/// under a launcher that does not end a job when one of its processes dies, the others would
/// wait for it forever in their next sum.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: MPI is initialised (an `Mpi` exists, or existed, before any training); the
        // world communicator is a constant of the library.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 101);
        }
    }));
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum(&self, values: &mut [f32]) {
        self.sum_any(values)
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.sum_any(values)
    }

    fn gather(&self, values: &[f32]) -> Vec<f32> {
        let mut counts = vec![0 as Count; self.size()];
        self.world
            .all_gather_into(&(values.len() as Count), &mut counts[..]);
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let start = *at;
                *at += c;
                Some(start)
            })
            .collect();
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut out = vec![0.0f32; total];
        let mut parts = PartitionMut::new(&mut out[..], counts, displs);
        self.world.all_gather_varcount_into(values, &mut parts);
        out
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for piece in bytes.chunks_mut(BROADCAST_PIECE) {
            root.broadcast_into(piece);
        }
    }
}
