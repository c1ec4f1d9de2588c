//! Shared helpers for the end-to-end tests in `tests/*.rs`.
//!
//! The tests run the real `imprint` executable as a user would: a fresh temporary folder per
//! test, small data written by the test itself (or the shipped `data/digits`), and assertions on
//! the files the command leaves behind and on its exit status and messages.
//!
//! # Finding the binary
//!
//! Cargo only hands `CARGO_BIN_EXE_<name>` to the integration tests of the package that owns the
//! binary, and `imprint` lives in `imprint-cli`, not here; a binary cannot be a dependency
//! either. So [`imprint_bin`] derives the location from the running test executable, which
//! cargo places in `<target dir>/<profile dir>/deps/`: the binary is
//! `<target dir>/<profile dir>/imprint`. `cargo test --workspace` does not build that file
//! (only the test harness of `imprint-cli`), so the first test of each test executable runs
//! `cargo build -p imprint-cli` for the same target folder and profile (`debug` for
//! `cargo test`, `--release` for `cargo test --release`). It does so even when the file exists,
//! because an old binary would silently test old code; when it is up to date the call costs a
//! fraction of a second. Set `IMPRINT_BIN` to test another binary without building.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent folder")
        .to_path_buf()
}

/// A fresh temporary folder for one test, removed when dropped. It derefs to its path, so that
/// `let t: &Path = &test_dir();` holds it for the whole test in one line.
pub struct TestDir(tempfile::TempDir);

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

/// A new [`TestDir`].
pub fn test_dir() -> TestDir {
    TestDir(tempfile::tempdir().expect("a temporary folder"))
}

/// The shipped digits data set (1797 8x8 images, 10 classes).
pub fn digits_dir() -> PathBuf {
    workspace_root().join("data").join("digits")
}

/// Path of the `imprint` executable, built on first use (see the crate docs).
pub fn imprint_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_or_build)
}

fn locate_or_build() -> PathBuf {
    if let Some(bin) = std::env::var_os("IMPRINT_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "IMPRINT_BIN={} is not a file", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    let deps = exe
        .parent()
        .expect("test executable lies in <target>/<profile>/deps");
    let profile_dir = deps
        .parent()
        .expect("test executable lies in <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .expect("test executable lies in <target>/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .expect("profile folder name")
        .to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "imprint-cli", "--bin", "imprint"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run `cargo build -p imprint-cli`: {e}"));
    assert!(status.success(), "`cargo build -p imprint-cli` failed");
    let bin = profile_dir.join(format!("imprint{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "cargo built imprint-cli but {} is missing",
        bin.display()
    );
    bin
}

/// What one `imprint` invocation did.
#[derive(Debug)]
pub struct Outcome {
    pub cmdline: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A path as a command-line argument (temporary folders have UTF-8 names).
pub fn arg(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// Runs `imprint ARGS` in `cwd` and waits for it, with a cache folder of its own that is
/// removed afterwards: no test reads what another left, or writes into the user's cache.
pub fn imprint(cwd: &Path, args: &[&str]) -> Outcome {
    let cache = tempfile::tempdir().expect("a temporary cache folder");
    imprint_with_cache(cwd, args, cache.path())
}

/// [`imprint`] with `IMPRINT_CACHE_DIR` set to `cache`, kept between calls.
pub fn imprint_with_cache(cwd: &Path, args: &[&str], cache: &Path) -> Outcome {
    let cmdline = format!("imprint {}", args.join(" "));
    let out = Command::new(imprint_bin())
        .current_dir(cwd)
        .args(args)
        .env("IMPRINT_CACHE_DIR", cache)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", imprint_bin().display()));
    Outcome {
        cmdline,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `flags` split at white space: the literal part of a command line, written as it is typed.
pub fn words(flags: &str) -> Vec<&str> {
    flags.split_whitespace().collect()
}

/// `pretrain --pipeline PIPELINE --out OUT`, then `extra`.
pub fn pretrain_args<'a>(pipeline: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["pretrain", "--pipeline", arg(pipeline), "--out", arg(out)];
    args.extend(extra);
    args
}

/// `finetune --pipeline PIPELINE --strategy STRATEGY --labels-per-class K --out OUT`, then
/// `extra`.
pub fn finetune_args<'a>(
    pipeline: &'a Path,
    strategy: &'a str,
    k: &'a str,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "finetune",
        "--pipeline",
        arg(pipeline),
        "--strategy",
        strategy,
    ];
    args.extend(["--labels-per-class", k, "--out", arg(out)]);
    args.extend(extra);
    args
}

/// `run PIPELINE --out OUT`, then `extra`.
pub fn run_args<'a>(pipeline: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", arg(pipeline), "--out", arg(out)];
    args.extend(extra);
    args
}

/// `run pipelines/digits.toml --out OUT`, then [`words`] of `flags`: a comparison on the
/// shipped digits, for a command run in [`workspace_root`].
pub fn digits_run_args<'a>(out: &'a Path, flags: &'a str) -> Vec<&'a str> {
    run_args(Path::new("pipelines/digits.toml"), out, &words(flags))
}

/// `predict --model CHECKPOINT` or `embed --encoder CHECKPOINT`, then `--input INPUT --out OUT`:
/// the two commands that apply a checkpoint to images.
pub fn apply_args<'a>(
    command: &'a str,
    checkpoint: &'a Path,
    input: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    let flag = match command {
        "predict" => "--model",
        "embed" => "--encoder",
        other => panic!("`{other}` applies no checkpoint"),
    };
    let mut args = vec![command, flag, arg(checkpoint)];
    args.extend(["--input", arg(input), "--out", arg(out)]);
    args
}

/// Lines the CLI prints to stderr while it works (progress), as opposed to the error line.
const PROGRESS_PREFIXES: [&str; 8] = [
    "unlabeled:",
    "labeled pool:",
    "test:",
    "pre-training",
    "seed ",
    // The kernel of each section's products (docs/precision.md).
    "pretrain:",
    "finetune:",
    "pretrain, finetune:",
];

impl Outcome {
    fn dump(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }

    /// Panics (showing both streams) unless the command succeeded.
    pub fn assert_success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{}", self.dump());
        assert!(!self.stderr.contains("panicked"), "{}", self.dump());
        self
    }

    /// Panics (showing both streams) unless stdout holds every one of `needles`.
    pub fn assert_stdout_has(&self, needles: &[&str]) -> &Self {
        self.check_has("stdout", &self.stdout, needles)
    }

    /// Panics (showing both streams) unless stderr holds every one of `needles`.
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Self {
        self.check_has("stderr", &self.stderr, needles)
    }

    fn check_has(&self, name: &str, stream: &str, needles: &[&str]) -> &Self {
        for needle in needles {
            assert!(
                stream.contains(needle),
                "no {needle:?} in {name}\n{}",
                self.dump()
            );
        }
        self
    }

    /// The lines of stdout that start with `prefix`.
    pub fn stdout_lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Checks a clean failure before any work began: exit status 1, no panic, and stderr is
    /// exactly one line that starts with `error:` and contains every one of `needles`.
    /// Returns that line.
    pub fn assert_error(&self, needles: &[&str]) -> String {
        self.check_error(needles, false)
    }

    /// Like [`Outcome::assert_error`] for a failure after the data was loaded: the progress
    /// lines the CLI prints to stderr may precede the error, which must still be one line, the
    /// last, and the only one starting with `error:`.
    pub fn assert_error_after_progress(&self, needles: &[&str]) -> String {
        self.check_error(needles, true)
    }

    fn check_error(&self, needles: &[&str], allow_progress: bool) -> String {
        let dump = self.dump();
        assert_eq!(self.code, Some(1), "expected exit status 1\n{dump}");
        assert!(!self.stderr.contains("panicked"), "panic\n{dump}");
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "panic\n{dump}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        let (last, before) = lines
            .split_last()
            .unwrap_or_else(|| panic!("stderr is empty\n{dump}"));
        assert!(
            last.starts_with("error: "),
            "last stderr line must start with `error: `\n{dump}"
        );
        assert!(
            self.stderr.ends_with('\n'),
            "stderr must end with a newline\n{dump}"
        );
        if allow_progress {
            for line in before {
                assert!(
                    PROGRESS_PREFIXES.iter().any(|p| line.starts_with(p)),
                    "unexpected stderr line {line:?} before the error\n{dump}"
                );
            }
        } else {
            assert!(before.is_empty(), "stderr must be exactly one line\n{dump}");
        }
        for needle in needles {
            assert!(
                last.contains(needle),
                "error line does not mention {needle:?}\n{dump}"
            );
        }
        // Shown with `--nocapture`; tests/BAD_INPUT.md quotes these lines.
        println!("{}\n  -> {last}", self.cmdline);
        last.to_string()
    }
}

/// Runs `imprint ARGS` in `t` and asserts that it fails with one error line holding all of
/// `needles` ([`Outcome::assert_error`]), every file under `t` left as it was.
pub fn assert_refused(t: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(t);
    imprint(t, args).assert_error(needles);
    assert_eq!(snapshot(t), before, "a refused run changed files");
}

/// [`assert_refused`] for a problem found once the data is read: progress lines may precede
/// the error line ([`Outcome::assert_error_after_progress`]).
pub fn assert_refused_after_loading(t: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(t);
    imprint(t, args).assert_error_after_progress(needles);
    assert_eq!(snapshot(t), before, "a refused run changed files");
}

/// A CSV file split into its header and rows. The files checked here never quote fields.
#[derive(Debug)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn read(path: &Path) -> Table {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut lines = text.lines().filter(|l| !l.is_empty());
        let split = |l: &str| l.split(',').map(str::to_string).collect::<Vec<_>>();
        let header = split(
            lines
                .next()
                .unwrap_or_else(|| panic!("{} is empty", path.display())),
        );
        let rows: Vec<Vec<String>> = lines.map(split).collect();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                row.len(),
                header.len(),
                "{} row {} has {} fields, header has {}",
                path.display(),
                i + 1,
                row.len(),
                header.len()
            );
        }
        Table { header, rows }
    }

    /// Index of a column; panics naming the columns present.
    pub fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {:?}", self.header))
    }

    /// One column's values.
    pub fn column(&self, name: &str) -> Vec<&str> {
        let i = self.col(name);
        self.rows.iter().map(|r| r[i].as_str()).collect()
    }

    /// (strategy, labels_per_class, seed, test_accuracy, macro_f1) of every row of a
    /// results.csv, in order: what a comparison found, without its timings.
    pub fn outcomes(&self) -> Vec<Vec<String>> {
        let cols = [
            "strategy",
            "labels_per_class",
            "seed",
            "test_accuracy",
            "macro_f1",
        ];
        self.rows
            .iter()
            .map(|r| cols.iter().map(|c| r[self.col(c)].clone()).collect())
            .collect()
    }

    /// One column parsed as numbers.
    pub fn numbers(&self, name: &str) -> Vec<f64> {
        self.column(name)
            .into_iter()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("{name} value {v:?} is not a number: {e}"))
            })
            .collect()
    }
}

/// Every file under `root` with its bytes (for "nothing was changed" checks).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("readable folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.insert(path, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// Asserts that `path` is a PNG that decodes, and returns its size.
pub fn assert_png(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} lacks the PNG signature",
        path.display()
    );
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{} does not decode as PNG: {e}", path.display()));
    assert!(
        img.width() > 0 && img.height() > 0,
        "{} is empty",
        path.display()
    );
    (img.width(), img.height())
}

/// Asserts that a file exists and is not empty.
pub fn assert_nonempty(path: &Path) {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()))
        .len();
    assert!(len > 0, "{} is empty", path.display());
}

/// Asserts that the file `rel` holds the same bytes in the folders `a` and `b`.
pub fn assert_same_file(a: &Path, b: &Path, rel: &str) {
    let read = |dir: &Path| {
        let path = dir.join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    assert!(
        read(a) == read(b),
        "{rel} differs between {} and {}",
        a.display(),
        b.display()
    );
}

/// When a file was last written.
pub fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A tensor as a safetensors file holds it: name, shape and little-endian f32 bytes.
pub type RawTensor = (String, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors file, in the file's order.
pub fn read_tensors(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not safetensors: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

/// Writes f32 `tensors` to a safetensors file, with `metadata` in its header.
pub fn write_tensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: Option<HashMap<String, String>>,
) {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let view = TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, &metadata).unwrap();
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The lines of a gzipped text file such as `data-manifest.csv.gz`.
pub fn read_manifest(path: &Path) -> Vec<String> {
    use std::io::Read;
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{} is not gzipped text: {e}", path.display()));
    text.lines().map(str::to_string).collect()
}

/// Size of the synthetic images.
pub const SIDE: u32 = 8;

/// A small deterministic pseudo-random generator for test data (no dependency needed).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn next_u8(&mut self, below: u8) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(below.max(1))) as u8
    }
}

/// Pixels (`SIDE` x `SIDE`, row-major) of sample `i` of class `class`: a bright bar whose rows
/// depend on the class, over faint noise; easy to tell apart, never identical.
pub fn class_pixels(class: usize, i: usize) -> Vec<u8> {
    let mut rng = Lcg::new((class * 1000 + i) as u64);
    let side = SIDE as usize;
    let row = (class * 3) % (side - 1);
    let mut px = vec![0u8; side * side];
    for (k, p) in px.iter_mut().enumerate() {
        let (y, x) = (k / side, k % side);
        *p = if y == row || y == row + 1 {
            200 + rng.next_u8(56)
        } else {
            rng.next_u8(40)
        };
        // a short vertical stroke that wanders, so images of a class differ
        if x == (i + class) % side && y > 4 {
            *p = 120;
        }
    }
    px
}

/// Writes one grey PNG.
pub fn write_grey_png(path: &Path, width: u32, height: u32, pixels: Vec<u8>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create image folder");
    }
    image::GrayImage::from_raw(width, height, pixels)
        .expect("pixel count matches the size")
        .save(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A folder-per-class PNG data set under `root`: `root/<class>/<first + i>.png` for
/// `i < per_class`. Returns (relative path, class) of each image written.
pub fn write_png_classes(
    root: &Path,
    classes: &[&str],
    first: usize,
    per_class: usize,
) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        for i in first..first + per_class {
            let rel = format!("{name}/{i}.png");
            write_grey_png(&root.join(&rel), SIDE, SIDE, class_pixels(c, i));
            written.push((rel, name.to_string()));
        }
    }
    written
}

/// `per_class` PNGs of each of `classes` in `t/data` (see [`write_png_classes`]), and a
/// [`Tiny`] pipeline `t/p.toml` on them; returns (data folder, pipeline file).
pub fn png_pipeline(t: &Path, classes: &[&str], per_class: usize) -> (PathBuf, PathBuf) {
    let data = t.join("data");
    write_png_classes(&data, classes, 0, per_class);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    (data, pipeline)
}

/// Writes an uncompressed idx3 image file (`pixels` is n*h*w bytes).
pub fn write_idx_images(path: &Path, n: u32, h: u32, w: u32, pixels: &[u8]) {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Writes an uncompressed idx1 labels file.
pub fn write_idx_labels(path: &Path, labels: &[u8]) {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Settings of a small pipeline file written by [`write_pipeline`].
pub struct Tiny<'a> {
    pub unlabeled: &'a Path,
    pub labeled: &'a Path,
    pub test: Option<&'a Path>,
    pub hidden: &'a [usize],
    pub epochs: usize,
    pub steps: usize,
}

impl<'a> Tiny<'a> {
    /// One data source for everything (30% held out as the test set), hidden layer [16].
    pub fn on(data: &'a Path) -> Tiny<'a> {
        Tiny {
            unlabeled: data,
            labeled: data,
            test: None,
            hidden: &[16],
            epochs: 3,
            steps: 40,
        }
    }
}

/// Replaces `from`, which must occur, by `to` in the text file at `path`; returns the new text.
pub fn edit_file(path: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    let text = text.replace(from, to);
    std::fs::write(path, &text).unwrap();
    text
}

/// Writes a small pipeline file (absolute data paths, TOML literal strings) and returns its path.
pub fn write_pipeline(path: &Path, t: &Tiny) -> PathBuf {
    let lit = |p: &Path| {
        let s = p.display().to_string();
        assert!(
            !s.contains('\''),
            "path {s} cannot be a TOML literal string"
        );
        format!("'{s}'")
    };
    let test = match t.test {
        Some(p) => format!("test = {}\n", lit(p)),
        None => String::new(),
    };
    let hidden: Vec<String> = t.hidden.iter().map(|h| h.to_string()).collect();
    let text = format!(
        r#"name = "tiny"
description = "end-to-end test"

[data]
unlabeled = {unlabeled}
labeled = {labeled}
{test}
# The size of the images the tests write (a folder's images are 32x32 unless set).
[data.preprocess]
height = {side}
width = {side}

[pretrain]
architecture = {{ kind = "dense", hidden = [{hidden}], latent = 8 }}
epochs = {epochs}
batch_size = 16

[finetune]
steps = {steps}
augment_shift = 0

[compare]
strategies = ["scratch", "full"]
labels_per_class = [2]
seeds = [0]
"#,
        unlabeled = lit(t.unlabeled),
        labeled = lit(t.labeled),
        hidden = hidden.join(", "),
        epochs = t.epochs,
        steps = t.steps,
        side = SIDE,
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_path_buf()
}

/// A 32 x 32 colour picture of soft blobs and ripples over a gradient, different for every
/// seed: a stand-in for a photo (textured as photos are), whose copies a near-duplicate check
/// must tell from other pictures.
pub fn photo(seed: u64) -> image::RgbImage {
    let mut rng = Lcg::new(seed);
    let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * f32::from(rng.next_u8(255)) / 254.0;
    let base: [f32; 3] = std::array::from_fn(|_| uniform(60.0, 190.0));
    let slope: [f32; 3] = std::array::from_fn(|_| uniform(-2.0, 2.0));
    let blobs: Vec<([f32; 3], [f32; 3])> = (0..12)
        .map(|_| {
            let shape = [uniform(0.0, 32.0), uniform(0.0, 32.0), uniform(1.5, 6.0)];
            (shape, std::array::from_fn(|_| uniform(-100.0, 100.0)))
        })
        .collect();
    let ripples: Vec<[f32; 4]> = (0..3)
        .map(|_| {
            let f = [uniform(-1.0, 1.0), uniform(-1.0, 1.0)];
            [f[0], f[1], uniform(0.0, 6.3), uniform(10.0, 30.0)]
        })
        .collect();
    image::RgbImage::from_fn(32, 32, |x, y| {
        let (x, y) = (x as f32, y as f32);
        let ripple: f32 = ripples
            .iter()
            .map(|[fx, fy, phase, amp]| amp * (fx * x + fy * y + phase).sin())
            .sum();
        image::Rgb(std::array::from_fn(|c| {
            let mut v = base[c] + slope[c] * (x - 16.0) + ripple;
            for ([bx, by, size], colour) in &blobs {
                let d2 = (x - bx).powi(2) + (y - by).powi(2);
                v += colour[c] * (-d2 / (2.0 * size * size)).exp();
            }
            v.clamp(0.0, 255.0) as u8
        }))
    })
}

/// Saves `img` at `path` (folders made as needed): PNG, or JPEG of `quality` for a `.jpg` name.
pub fn save_photo(path: &Path, img: &image::RgbImage, quality: u8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create image folder");
    }
    if path.extension().is_some_and(|e| e == "jpg") {
        let file = std::fs::File::create(path).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(file, quality)
            .encode_image(img)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    } else {
        img.save(path)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// `per_class` distinct photos (see [`photo`]) of each of `classes` as `root/<class>/<i>.png`,
/// seeds from `first_seed` on; returns the paths written.
pub fn write_photo_classes(
    root: &Path,
    classes: &[&str],
    per_class: usize,
    first_seed: u64,
) -> Vec<PathBuf> {
    let mut written = Vec::new();
    let mut seed = first_seed;
    for class in classes {
        for i in 0..per_class {
            let path = root.join(class).join(format!("{i}.png"));
            save_photo(&path, &photo(seed), 0);
            written.push(path);
            seed += 1;
        }
    }
    written
}
