//! The processes a command runs on: this one alone, or (built with the `mpi` feature) every
//! process of the MPI job that started it, `mpirun -np N imprint ...` or `srun imprint ...`,
//! which then train one model together, each on its share of every batch. Process 0 prints and
//! writes; a process that fails ends every process of the job.

#[cfg(feature = "mpi")]
use imprint_collective::Collective;
use imprint_collective::Replicas;

pub struct Processes {
    pub replicas: Replicas,
    #[cfg(feature = "mpi")]
    mpi: std::rc::Rc<imprint_collective::Metered<imprint_mpi::Mpi>>,
}

impl Processes {
    /// Joins the MPI job that started this process (a process started without a launcher is a
    /// job of one); without the `mpi` feature, this process alone.
    #[cfg(feature = "mpi")]
    pub fn join() -> anyhow::Result<Self> {
        let mpi = std::rc::Rc::new(imprint_collective::Metered::new(imprint_mpi::Mpi::init()?));
        if mpi.inner().size() > 1 {
            imprint_mpi::abort_on_panic();
        }
        Ok(Self {
            replicas: mpi.clone(),
            mpi,
        })
    }

    #[cfg(not(feature = "mpi"))]
    pub fn join() -> anyhow::Result<Self> {
        Ok(Self {
            replicas: imprint_collective::single(),
        })
    }

    /// Whether this is process 0, which prints and writes.
    pub fn leads(&self) -> bool {
        self.replicas.rank() == 0
    }

    pub fn count(&self) -> usize {
        self.replicas.size()
    }

    /// Ends the command on this process. With several processes, a failure is printed by the
    /// process that failed, which then ends the whole job (the others may be waiting for it in
    /// a sum that would never come); a process other than 0 waits a second before it does, so
    /// that when every process fails alike, process 0's message is the one printed. On success,
    /// process 0 says what communication cost.
    pub fn end(self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if self.count() == 1 {
            return result;
        }
        #[cfg(feature = "mpi")]
        {
            let (rank, size) = (self.replicas.rank(), self.count());
            match &result {
                Err(e) => {
                    if rank > 0 {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                    let whose = match rank {
                        0 => String::new(),
                        r => format!("process {r} of {size}: "),
                    };
                    eprintln!("error: {whose}{}", crate::error_message(e));
                    self.mpi.inner().abort(1);
                }
                Ok(()) if rank == 0 => eprintln!("{}", traffic_line(&self.mpi.traffic(), size)),
                Ok(()) => {}
            }
        }
        result
    }
}

/// What process 0 exchanged with the others, e.g. "2 processes; process 0 summed 12.3 MB in
/// 1,201 sums (1.4 s), gathered ..., received ...".
#[cfg(feature = "mpi")]
fn traffic_line(t: &[imprint_collective::Traffic; 3], size: usize) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let [sums, gathers, broadcasts] = t;
    format!(
        "{size} processes; process 0 summed {:.1} MB in {} sums ({:.1} s), gathered {:.1} MB \
         in {} calls ({:.1} s), broadcast {:.1} MB in {} calls ({:.1} s)",
        mb(sums.bytes),
        sums.calls,
        sums.seconds,
        mb(gathers.bytes),
        gathers.calls,
        gathers.seconds,
        mb(broadcasts.bytes),
        broadcasts.calls,
        broadcasts.seconds
    )
}
