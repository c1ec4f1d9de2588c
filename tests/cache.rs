//! The image cache checks its own bytes, is read safely while another process damages it, and
//! is built within the memory budget whatever the sizes of the images; a folder's images take
//! a size of their own, not that of whichever file comes first (docs/loading.md).

use imprint_e2e::{
    arg, imprint_bin, imprint_with_cache, png_pipeline, pretrain_args, test_dir, write_grey_png,
    Outcome,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The one image cache file under `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "u8"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// A pipeline on 30 PNGs of each of two classes that keeps no image in memory (every source
/// is read from the image cache), with `epochs` of pre-training; returns (pipeline, cache).
fn cached_pipeline(t: &Path, epochs: usize) -> (PathBuf, PathBuf) {
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 30);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text
        .replace("[data]\n", "[data]\nmemory_budget_mb = 0\n")
        .replace("epochs = 3\n", &format!("epochs = {epochs}\n"));
    std::fs::write(&pipeline, text).unwrap();
    (pipeline, t.join("cache"))
}

#[test]
fn a_cache_whose_bytes_changed_is_rebuilt_with_a_notice() {
    let t: &Path = &test_dir();
    let (pipeline, cache) = cached_pipeline(t, 2);
    let first = t.join("first");
    imprint_with_cache(t, &pretrain_args(&pipeline, &first, &[]), &cache).assert_success();
    let file = cache_file(&cache);
    let written = std::fs::read(&file).unwrap();
    // One bit of the last image flipped, as a failing disk or a stray write would.
    let mut changed = written.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let second = t.join("second");
    let run = imprint_with_cache(t, &pretrain_args(&pipeline, &second, &[]), &cache);
    run.assert_success();
    let notice = format!(
        "{}: the image cache's bytes are not those written (image 59 no longer matches its \
         checksum); rebuilding it",
        file.display()
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.contains("image cache"))
            .collect::<Vec<_>>(),
        [notice.as_str()],
        "{}",
        run.stderr
    );
    // Rebuilt as it was, and the pre-training saw the same images.
    assert_eq!(std::fs::read(&file).unwrap(), written);
    for name in ["encoder.safetensors", "loss.csv"] {
        let read = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        if name == "loss.csv" {
            let losses = |dir: &Path| -> Vec<String> {
                let text = String::from_utf8(read(dir)).unwrap();
                // the loss columns, not the timings
                text.lines()
                    .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
                    .collect()
            };
            assert_eq!(losses(&first), losses(&second));
        } else {
            assert_eq!(read(&first), read(&second), "{name}");
        }
    }
}

/// The image cache cut short by another process while a pre-training reads it: the run stops
/// with one error line naming the file, exit status 1, instead of dying of a bus error.
#[test]
fn truncating_the_cache_while_a_run_reads_it_is_an_error() {
    let t: &Path = &test_dir();
    let (pipeline, cache) = cached_pipeline(t, 100_000);
    let out = t.join("pre");
    let mut child = Command::new(imprint_bin())
        .current_dir(t)
        .args(pretrain_args(&pipeline, &out, &[]))
        .env("IMPRINT_CACHE_DIR", &cache)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Once an epoch has ended the run reads its images from the cache, epoch after epoch.
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let epoch_done = line.starts_with("seed 0 epoch 1/");
        stderr.push(line);
        if epoch_done {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{stderr:?}");
    }
    let file = cache_file(&cache);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let watchdog = std::thread::spawn({
        let pid = child.id();
        move || {
            std::thread::sleep(Duration::from_secs(120));
            // Still running after two minutes: the truncation went unnoticed.
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    stderr.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    drop(watchdog);
    let outcome = Outcome {
        cmdline: "imprint pretrain (its image cache truncated)".into(),
        code: status.code(),
        stdout: String::new(),
        stderr: stderr.join("\n") + "\n",
    };
    let error = outcome.assert_error_after_progress(&[arg(&file), "cut short while being read"]);
    assert!(
        error.starts_with(&format!("error: {}: image ", file.display())),
        "{error}"
    );
    assert!(!out.join("encoder.safetensors").exists());
}

/// Peak resident memory (bytes) of a child `imprint ARGS` in `cwd` with the cache `cache`,
/// which must succeed; and its stdout.
// The child is reaped by `wait4`, which also gives its peak memory.
#[allow(clippy::zombie_processes)]
fn peak_memory(cwd: &Path, args: &[&str], cache: &Path) -> (u64, String) {
    let child = Command::new(imprint_bin())
        .current_dir(cwd)
        .args(args)
        .env("IMPRINT_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.unwrap(), &mut stdout).unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{args:?}: {stdout}"
    );
    // Linux reports kilobytes.
    (usage.ru_maxrss as u64 * 1024, stdout)
}

/// One 11000x11000 photo among small ones: every image takes the default 32x32, not the large
/// one's size; the large one is decoded within the memory budget, alone if need be; a folder
/// that holds it is described and pre-trained on (through the image cache) in well under the
/// gigabytes every image at its size would take.
#[test]
fn a_huge_photo_among_small_ones_is_decoded_within_the_budget() {
    let t: &Path = &test_dir();
    let photos = t.join("photos");
    // Sorts first, so that the old rule (the first file's size) would make every image 121 MB.
    write_grey_png(
        &photos.join("a/000.png"),
        11_000,
        11_000,
        vec![90; 11_000 * 11_000],
    );
    for (c, class) in ["a", "b"].into_iter().enumerate() {
        for i in 1..=12 {
            let pixels = (0..64).map(|k| (k * i + 100 * c) as u8).collect();
            write_grey_png(&photos.join(format!("{class}/{i:03}.png")), 8, 8, pixels);
        }
    }
    let cache = t.join("cache");
    let (peak, out) = peak_memory(t, &["data", "describe", arg(&photos)], &cache);
    assert!(
        out.contains(": 25 images 1x32x32, 2 classes: a:13 b:12"),
        "{out}"
    );
    assert!(peak < 1 << 30, "described in {} MB", peak >> 20);
    // Every image over the budget: the cache is built an image at a time.
    let pipeline = t.join("p.toml");
    let text = format!(
        "name = \"huge\"\n[data]\nunlabeled = '{0}'\nlabeled = '{0}'\nmemory_budget_mb = 0\n\
         [pretrain]\narchitecture = {{ kind = \"dense\", hidden = [16], latent = 4 }}\n\
         epochs = 1\nbatch_size = 8\n[compare]\nstrategies = [\"scratch\"]\n\
         labels_per_class = [2]\nseeds = [0]\n",
        photos.display()
    );
    std::fs::write(&pipeline, text).unwrap();
    let pre = t.join("pre");
    let (peak, _) = peak_memory(t, &pretrain_args(&pipeline, &pre, &[]), &cache);
    assert!(peak < 1 << 30, "pre-trained in {} MB", peak >> 20);
    let side = std::fs::read_to_string(pre.join("encoder.json")).unwrap();
    assert!(side.contains("\"height\": 32"), "{side}");
}
