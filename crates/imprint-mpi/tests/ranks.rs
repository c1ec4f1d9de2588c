//! The MPI sums, gathers and broadcasts on several processes. Run by `cargo test`, the test
//! starts itself again under `mpirun -np 3` (Open MPI's flags; as root, with its consent
//! variables) and checks that every rank passed; each rank, seeing `OMPI_COMM_WORLD_SIZE`,
//! runs the checks instead. Built only with the crate's `mpi` feature.
#![cfg(feature = "mpi")]

use imprint_collective::Collective;
use imprint_mpi::Mpi;
use std::process::Command;

const RANKS: usize = 3;

#[test]
fn sums_gathers_and_broadcasts_across_ranks() {
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() {
        return on_a_rank();
    }
    let exe = std::env::current_exe().expect("the test executable");
    let out = Command::new("mpirun")
        .args(["-np", &RANKS.to_string(), "--oversubscribe"])
        .arg(exe)
        .args([
            "--exact",
            "sums_gathers_and_broadcasts_across_ranks",
            "--nocapture",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun (Open MPI) on the PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("rank checks passed").count(), RANKS, "{text}");
}

fn on_a_rank() {
    let mpi = Mpi::init().expect("MPI starts");
    let (r, n) = (mpi.rank(), mpi.size());
    assert_eq!(n, RANKS);
    // Rank r holds r + i at i: the sums are n (n - 1) / 2 + n i, exact in f32.
    for len in [1, 5, 70_001] {
        let mut v: Vec<f32> = (0..len).map(|i| (r + i) as f32).collect();
        mpi.sum(&mut v);
        let expected: Vec<f32> = (0..len).map(|i| (n * (n - 1) / 2 + n * i) as f32).collect();
        assert_eq!(v, expected, "sum of {len}");
        let mut w: Vec<f64> = (0..len).map(|i| (r * i) as f64).collect();
        mpi.sum_f64(&mut w);
        assert!(w
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i * n * (n - 1) / 2) as f64));
    }
    // Every rank gets the same bits: 1e8 + 1 - 1e8 depends on the order of the additions
    // (each segment of the ring starts on another rank), and whatever each element gives, it
    // gives everywhere.
    let big = 20_000;
    let mut v = vec![[1e8f32, 1.0, -1e8][r]; big];
    mpi.sum(&mut v);
    let all = mpi.gather(&v);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(all.chunks(big).all(|other| bits(other) == bits(&v)));
    assert!(v.contains(&0.0) && v.contains(&1.0));
    let gathered = mpi.gather(&vec![r as f32; r + 1]);
    assert_eq!(gathered, [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    let mut bytes = if r == 0 {
        b"from rank 0".to_vec()
    } else {
        Vec::new()
    };
    mpi.broadcast(&mut bytes);
    assert_eq!(bytes, b"from rank 0");
    println!("rank checks passed");
}
