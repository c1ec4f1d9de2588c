//! The `imprint` command as the processes of an MPI job (`mpirun -np 2`, Open MPI's flags, with
//! its consent variables for root): 2 processes pre-train the encoder 1 process pre-trains, and
//! a failure ends the job with one error. Built only with the `mpi` feature; needs `mpirun`.
#![cfg(feature = "mpi")]

use imprint_nn::load_tensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// SimCLR with a ResNet-8 on 400 of the shipped digits as they are (one channel of 28x28, not
/// the default photos' three of 32x32), epochs of 5 steps, one thread.
const SIMCLR: &[&str] = &[
    "pretrain",
    "--unlabeled",
    "data/digits/digits-images-idx3-ubyte.gz",
    "--set",
    "pretrain.architecture={kind=\"resnet\",depth=8,widths=[4,8,16]}",
    "--set",
    "pretrain.pretexts=[{kind=\"contrastive\"}]",
    "--set",
    "pretrain.noise={kind=\"none\"}",
    "--set",
    "pretrain.augment_shift=1",
    "--set",
    "pretrain.batch_size=80",
    "--set",
    "data.preprocess={channels=1,height=28,width=28}",
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

/// What a run that succeeded printed, stdout then stderr.
fn succeeded(out: Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

/// The same global batch, seed and data on 2 processes as on 1 give the same encoder, to the
/// rounding of sums taken in another order (each process its share, then the shares added): the
/// tolerance of docs/distributed.md. Process 0 alone prints.
#[test]
fn two_processes_pretrain_the_encoder_one_process_pretrains() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let mut args = SIMCLR.to_vec();
    args.extend(["--epochs", "2"]);
    succeeded(imprint(0, &args, &one));
    let printed = succeeded(imprint(2, &args, &two));
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
    args.extend(["--epochs", "2", "--set", "pretrain.batch_size=1"]);
    let run = imprint(2, &args, &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("`batch_size`: batches of 1 images cannot be shared by 2 processes"),
        "{err}"
    );
    assert!(!out.join("encoder.safetensors").exists());
}

/// A 2-process pre-training stopped after a checkpoint (mpirun ended) and resumed with
/// `--resume` on 2 processes ends with the encoder of the run that never stopped, bit for bit:
/// process 0 reads the checkpoint and hands it to the other, and the sums run in the same order.
#[test]
fn two_processes_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, stopped) = (dir.path().join("whole"), dir.path().join("stopped"));
    let mut args = SIMCLR.to_vec();
    args.extend(["--epochs", "40"]);
    succeeded(imprint(2, &args, &whole));
    let exe = env!("CARGO_BIN_EXE_imprint");
    let mut job = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", exe])
        .args(&args)
        .arg("--out")
        .arg(&stopped)
        .current_dir(workspace())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The folder is the staging one until the job ends: wait for a checkpoint anywhere below.
    let checkpoint = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.path().join("checkpoint.safetensors").exists())
    };
    let started = std::time::Instant::now();
    while !checkpoint() && job.try_wait().unwrap().is_none() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGTERM, which mpirun passes on to the processes before it leaves (SIGKILL would leave
    // them running).
    // SAFETY: a signal to the child this test started, which has not been waited for.
    unsafe { libc::kill(job.id() as libc::pid_t, libc::SIGTERM) };
    job.wait().unwrap();
    assert!(
        !stopped.join("encoder.safetensors").exists(),
        "the job ended before it could be stopped"
    );
    args.push("--resume");
    let printed = succeeded(imprint(2, &args, &stopped));
    assert!(printed.contains("pre-trained 40 epochs"), "{printed}");
    assert!(
        printed.contains("continuing pre-training after epoch"),
        "{printed}"
    );
    let weights = |dir: &Path| load_tensors(&dir.join("encoder.safetensors")).unwrap().0;
    assert_eq!(weights(&whole), weights(&stopped));
}
