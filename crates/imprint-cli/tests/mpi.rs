//! The `imprint` command as the processes of an MPI job (`mpirun -np 2`, Open MPI's flags, with
//! its consent variables for root): 2 processes pre-train the encoder 1 process pre-trains, and
//! a failure ends the job with one error. Built only with the `mpi` feature; needs `mpirun`.
#![cfg(feature = "mpi")]

use imprint_nn::load_tensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// SimCLR with a ResNet-8 on 400 of the shipped digits, 2 epochs of 5 steps, one thread.
const SIMCLR: &[&str] = &[
    "pretrain",
    "--set",
    "pretrain.architecture={kind=\"resnet\",depth=8,widths=[4,8,16]}",
    "--set",
    "pretrain.reconstruction_weight=0",
    "--set",
    "pretrain.contrast_weight=1",
    "--set",
    "pretrain.noise={kind=\"none\"}",
    "--set",
    "pretrain.augment_shift=1",
    "--epochs",
    "2",
    "--max-unlabeled",
    "400",
    "--threads",
    "1",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `imprint args`, on `ranks` processes under mpirun (0: alone, without mpirun).
fn imprint(ranks: usize, args: &[&str], out: &Path) -> Output {
    let exe = env!("CARGO_BIN_EXE_imprint");
    let mut cmd = match ranks {
        0 => Command::new(exe),
        n => {
            let mut c = Command::new("mpirun");
            c.args(["--oversubscribe", "-np", &n.to_string(), exe]);
            c
        }
    };
    cmd.args(args)
        .arg("--out")
        .arg(out)
        .current_dir(workspace())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("imprint, and mpirun (Open MPI) on the PATH")
}

fn succeeded(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    text
}

/// The same global batch, seed and data on 2 processes as on 1 give the same encoder, to the
/// rounding of sums taken in another order (each process its share, then the shares added): the
/// tolerance of docs/distributed.md. Process 0 alone prints.
#[test]
fn two_processes_pretrain_the_encoder_one_process_pretrains() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    succeeded(imprint(0, SIMCLR, &one));
    let printed = succeeded(imprint(2, SIMCLR, &two));
    assert_eq!(
        printed.matches("pre-trained 2 epochs").count(),
        1,
        "{printed}"
    );
    let weights = |dir: &Path| load_tensors(&dir.join("encoder.safetensors")).unwrap().0;
    let (a, b) = (weights(&one), weights(&two));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst: f32 = 0.0;
    for (name, a) in &a {
        let b = &b[name].data;
        let scale = a.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let diff = a
            .data
            .iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    eprintln!("largest difference, relative to its tensor's largest value: {worst:e}");
    assert!(worst < 1e-4, "2 processes vs 1: {worst:e}");
}

/// A setting every process refuses: one `error:` line (process 0's), a failed job, no output.
#[test]
fn a_failing_job_ends_every_process_with_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = SIMCLR.to_vec();
    args.extend(["--set", "pretrain.batch_size=1"]);
    let run = imprint(2, &args, &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("batch_size"), "{err}");
    assert!(!out.join("encoder.safetensors").exists());
}
