//! Data at scale: the records stay small however many files a source has, a source over the
//! memory budget is decoded once into the image cache and read from there (rebuilt when a file
//! changes, or when the cache file is damaged), and `--resume` names the first file that
//! changed since the recorded run.

use imprint_e2e::{
    arg, assert_refused_after_loading, imprint, imprint_with_cache, modified, png_pipeline,
    read_json, read_manifest, run_args, snapshot, test_dir, words, write_grey_png, Table, SIDE,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The one image cache file under `cache`.
fn image_cache(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache.join("images"))
        .unwrap_or_else(|e| panic!("no image cache in {}: {e}", cache.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Dates a file an hour back, so that a rewrite shows as a newer time; returns that time.
fn backdate(path: &Path) -> SystemTime {
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(past)
        .unwrap();
    modified(path)
}

/// A zero memory budget: every source is read from the image cache.
const NO_MEMORY: [&str; 2] = ["--set", "data.memory_budget_mb=0"];

/// `run PIPELINE --out OUT --force` with [`NO_MEMORY`].
fn run_from_cache(t: &Path, pipeline: &Path, out: &Path, cache: &Path) -> Table {
    let mut args = run_args(pipeline, out, &["--force"]);
    args.extend(NO_MEMORY);
    imprint_with_cache(t, &args, cache).assert_success();
    Table::read(&out.join("results.csv"))
}

#[test]
fn a_source_over_the_budget_is_cached_reused_and_rebuilt_as_its_files_change() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 8);
    let cache = t.join("cache");

    let in_memory = t.join("mem");
    imprint(t, &run_args(&pipeline, &in_memory, &[])).assert_success();
    let expected = Table::read(&in_memory.join("results.csv")).outcomes();

    let first = run_from_cache(t, &pipeline, &t.join("c1"), &cache);
    assert_eq!(
        first.outcomes(),
        expected,
        "the cache gives the same results"
    );
    let file = image_cache(&cache);
    let written = backdate(&file);
    let again = run_from_cache(t, &pipeline, &t.join("c2"), &cache);
    assert_eq!(again.outcomes(), expected);
    assert_eq!(
        modified(&file),
        written,
        "an unchanged source reuses its cache"
    );

    // a damaged cache is rebuilt, and gives the same results
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() / 3]).unwrap();
    let repaired = run_from_cache(t, &pipeline, &t.join("c3"), &cache);
    assert_eq!(repaired.outcomes(), expected);
    assert_eq!(std::fs::read(&file).unwrap(), whole);

    // an image changed: the cache is rebuilt with it
    let written = backdate(&file);
    write_grey_png(&data.join("a/3.png"), SIDE, SIDE, vec![255; 64]);
    run_from_cache(t, &pipeline, &t.join("c4"), &cache);
    assert_ne!(
        modified(&file),
        written,
        "a changed source rebuilds its cache"
    );
    assert_ne!(std::fs::read(&file).unwrap(), whole);
}

#[test]
fn an_unwritable_cache_folder_is_refused_naming_it() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    // a file where the cache folder should be: no folder can be made there
    let blocked = t.join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let before = snapshot(t);
    let out = t.join("out");
    let refused = imprint_with_cache(t, &run_args(&pipeline, &out, &NO_MEMORY), &blocked);
    refused.assert_error(&[
        &format!(
            "{}: cannot write the image cache",
            blocked.join("images").display()
        ),
        "set data.cache_dir (or IMPRINT_CACHE_DIR) to a writable folder",
        "data.memory_budget_mb to at least 1",
    ]);
    assert_eq!(snapshot(t), before, "a refused run changed files");
}

#[test]
fn records_stay_small_and_resume_names_the_first_changed_file() {
    let t: &Path = &test_dir();
    let per_class = 150;
    let (data, pipeline) = png_pipeline(t, &["a", "b"], per_class);
    let out = t.join("out");
    let args = run_args(&pipeline, &out, &["--epochs", "1"]);
    imprint(t, &args).assert_success();

    // one line per source, however many files; the files listed once, in the manifest
    let files = 2 * per_class;
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["data"]["unlabeled"]["files"], files, "{run}");
    let encoder = out.join("pretrain/seed-0/encoder.safetensors");
    let side = read_json(&encoder.with_extension("json"));
    assert_eq!(side["data"]["files"], files, "{side}");
    assert_eq!(side["data"]["sha256"], run["data"]["unlabeled"]["sha256"]);
    for record in [out.join("run.json"), encoder.with_extension("json")] {
        let size = std::fs::metadata(&record).unwrap().len();
        assert!(size < 16 << 10, "{}: {size} bytes", record.display());
    }
    let manifest = read_manifest(&out.join("data-manifest.csv.gz"));
    assert_eq!(manifest.len(), files + 1);
    assert!(manifest[1].contains(",a/0.png,"), "{}", manifest[1]);
    let shown = imprint(t, &["inspect", arg(&encoder)]);
    shown.assert_success();
    let data_lines: Vec<&str> = shown
        .stdout
        .lines()
        .filter(|l| l.contains("sha256"))
        .collect();
    assert_eq!(data_lines.len(), 1, "{}", shown.stdout);
    assert!(
        data_lines[0].contains(&format!("{files} files")),
        "{}",
        data_lines[0]
    );
    assert!(shown.stdout.lines().count() < 20, "{}", shown.stdout);

    // one image redrawn: --resume refuses, naming it
    write_grey_png(&data.join("b/7.png"), SIDE, SIDE, vec![9; 64]);
    let mut resumed = args.clone();
    resumed.push("--resume");
    let cannot = format!("{}: cannot resume", out.join("run.json").display());
    let changed = "the data.unlabeled files differ from the recorded run: b/7.png changed (";
    assert_refused_after_loading(t, &resumed, &[&cannot, changed, "sha256"]);
}

/// `imprint bench --data` at tiny sizes: it generates both sources, loads each twice (the PNG
/// folder over its budget, so from the image cache), pre-trains one epoch on each as a child
/// process, and reports every figure beside its goal; a second run finds the data it generated.
#[test]
fn data_bench_reports_every_figure_at_tiny_sizes() {
    let t: &Path = &test_dir();
    let dir = t.join("bench");
    let mut args = vec!["bench", "--data", arg(&dir)];
    args.extend(words(
        "--png-images 40 --idx-images 60 --idx-budget-mb 0 --busy-ok",
    ));
    for _ in 0..2 {
        let run = imprint(t, &args);
        run.assert_success();
        let out = &run.stdout;
        let loads = run.stdout_lines_starting("  loaded ");
        assert_eq!(loads.len(), 4, "{out}");
        assert!(
            loads[..2].iter().all(|l| l.contains("40 images 3x32x32")),
            "{out}"
        );
        assert!(
            loads[2..].iter().all(|l| l.contains("60 images 3x32x32")),
            "{out}"
        );
        assert!(loads.iter().all(|l| l.ends_with(", on disk")), "{out}");
        for what in [
            "PNG folder from the cache: first load ",
            "idx file, on disk: first load ",
        ] {
            let line = out.lines().find(|l| l.starts_with(what));
            let line = line.unwrap_or_else(|| panic!("no `{what}` in {out}"));
            for figure in [
                "peak memory ",
                " images/s",
                "run.json ",
                "data-manifest.csv.gz ",
            ] {
                assert!(line.contains(figure), "{line}");
            }
        }
        assert!(out.contains("PNG folder in memory: peak memory "), "{out}");
        let goals = run.stdout_lines_starting("goal ");
        assert_eq!(goals.len(), 5, "{out}");
        // The records are small whatever the speed of the machine.
        let records = goals.iter().find(|g| g.contains("run.json and sidecars"));
        assert!(records.is_some_and(|g| g.ends_with(": met")), "{out}");
    }
    assert!(dir.join("png-40/.complete-40").exists());
    let idx = dir.join("bench-60-images-idx4-ubyte");
    assert_eq!(
        std::fs::metadata(&idx).unwrap().len(),
        16 + 4 + 60 * 3 * 32 * 32
    );
}
