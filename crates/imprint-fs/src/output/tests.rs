use super::*;

fn ours(_: &Path) -> std::result::Result<(), String> {
    Err("no record of imprint".into())
}

fn claim<'a>(force: bool, inputs: &'a [Input]) -> Claim<'a> {
    Claim {
        force,
        resume: false,
        inputs,
        earlier_output: &ours,
    }
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_new_folder_is_marked_and_held_and_a_second_job_is_told_whose_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs/new");
    let first = OutputDir::create(&out, &claim(false, &[])).unwrap();
    assert_eq!(
        first.path(),
        out.as_path(),
        "a new folder is written in place"
    );
    assert!(out.join(MARKER).is_file());
    let pid = std::process::id().to_string();
    assert_eq!(fs::read_to_string(out.join(HOLDER)).unwrap(), pid);

    for force in [false, true] {
        match OutputDir::create(&out, &claim(force, &[])) {
            Err(OutputError::InUse { pid: Some(p), .. }) => assert_eq!(p, std::process::id()),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a held folder was handed out twice"),
        }
    }
    fs::write(out.join("results.csv"), "rows").unwrap();
    assert_eq!(first.finish().unwrap(), out);
    assert!(out.join(MARKER).is_file(), "the marker stays");
    assert!(!out.join(HOLDER).exists(), "the process id goes");
    // Released: a forced job may now take it.
    drop(OutputDir::create(&out, &claim(true, &[])).unwrap());
}

#[test]
fn a_job_that_fails_before_writing_leaves_no_folder_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a/b/out");
    let job = OutputDir::create(&out, &claim(false, &[])).unwrap();
    fs::create_dir_all(out.join("pretrain/seed-0")).unwrap();
    drop(job);
    assert!(!tmp.path().join("a").exists(), "created folders removed");

    // A folder the user made is kept, emptied of our marker only.
    let mine = tmp.path().join("mine");
    fs::create_dir(&mine).unwrap();
    drop(OutputDir::create(&mine, &claim(false, &[])).unwrap());
    assert!(mine.is_dir() && fs::read_dir(&mine).unwrap().next().is_none());

    // A job that wrote something keeps it (a checkpoint to resume from).
    let kept = tmp.path().join("kept");
    let job = OutputDir::create(&kept, &claim(false, &[])).unwrap();
    fs::write(kept.join("checkpoint.safetensors"), "x").unwrap();
    drop(job);
    assert!(kept.join("checkpoint.safetensors").is_file() && kept.join(MARKER).is_file());
}

#[test]
fn force_replaces_earlier_outputs_only_when_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    drop(OutputDir::create(&out, &claim(false, &[])).unwrap());
    let first = OutputDir::create(&out, &claim(false, &[])).unwrap();
    fs::write(first.path().join("results.csv"), "earlier").unwrap();
    first.finish().unwrap();
    let before = files(tmp.path());

    match OutputDir::create(&out, &claim(false, &[])) {
        Err(OutputError::NotEmpty(_)) => {}
        other => panic!("{:?}", other.err()),
    }
    let failed = OutputDir::create(&out, &claim(true, &[])).unwrap();
    assert_ne!(failed.path(), out.as_path());
    fs::write(failed.path().join("results.csv"), "half").unwrap();
    drop(failed);
    assert_eq!(
        files(tmp.path()),
        before,
        "a failed job leaves the earlier outputs"
    );

    let done = OutputDir::create(&out, &claim(true, &[])).unwrap();
    fs::write(done.path().join("results.csv"), "new").unwrap();
    done.finish().unwrap();
    assert_eq!(fs::read_to_string(out.join("results.csv")).unwrap(), "new");
    assert!(out.join(MARKER).is_file());
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "nothing left beside");
}

#[test]
fn force_refuses_a_folder_imprint_did_not_write_and_leaves_it_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("photos");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("cat.png"), "meow").unwrap();
    let before = files(tmp.path());
    match OutputDir::create(&out, &claim(true, &[])) {
        Err(OutputError::NotOurs { why, .. }) => assert!(why.contains("no record"), "{why}"),
        other => panic!("{:?}", other.err()),
    }
    assert_eq!(files(tmp.path()), before);

    // One an older version wrote (no marker) is recognised by the caller, and replaced; a
    // failed replacement leaves it as it was, without a marker.
    let older = |_: &Path| Ok(());
    let forced = Claim {
        earlier_output: &older,
        ..claim(true, &[])
    };
    drop(OutputDir::create(&out, &forced).unwrap());
    assert_eq!(files(tmp.path()), before);
    let done = OutputDir::create(&out, &forced).unwrap();
    fs::write(done.path().join("results.csv"), "new").unwrap();
    done.finish().unwrap();
    assert!(!out.join("cat.png").exists() && out.join(MARKER).is_file());
}

#[test]
fn a_folder_holding_or_inside_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("project/data");
    fs::create_dir_all(&data).unwrap();
    let inputs = [Input::new("data.labeled", &data)];
    for (out, holds) in [
        (tmp.path().join("project"), true),
        (data.clone(), true),
        (data.join("out"), false),
        (data.join("../data/./x/.."), true),
    ] {
        match OutputDir::create(&out, &claim(true, &inputs)) {
            Err(OutputError::HoldsInput { .. }) if holds => {}
            Err(OutputError::InsideInput { .. }) if !holds => {}
            other => panic!("{}: {:?}", out.display(), other.err()),
        }
    }
    assert!(!data.join("out").exists(), "nothing created");
}

#[test]
fn single_files_go_to_new_paths_or_replace_regular_files_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let new = tmp.path().join("predictions.csv");
    assert_eq!(output_file(&new, false, &[]).unwrap(), new);
    fs::write(&new, "earlier").unwrap();
    assert!(matches!(
        output_file(&new, false, &[]),
        Err(OutputError::FileExists(_))
    ));
    assert_eq!(output_file(&new, true, &[]).unwrap(), new);

    let link = tmp.path().join("link.csv");
    std::os::unix::fs::symlink(&new, &link).unwrap();
    assert_eq!(output_file(&link, true, &[]).unwrap(), resolved(&new));

    let missing = tmp.path().join("nowhere/x.csv");
    match output_file(&missing, true, &[]) {
        Err(e @ OutputError::NoFolder { .. }) => {
            assert!(e.to_string().contains("nowhere does not exist"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn single_files_never_land_on_inputs_or_special_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.json");
    fs::write(&model, "{}").unwrap();
    let images = tmp.path().join("images");
    fs::create_dir(&images).unwrap();
    let inputs = [
        Input::new("the model's sidecar", &model),
        Input::new("--input", &images),
    ];
    assert!(matches!(
        output_file(&model, true, &inputs),
        Err(OutputError::IsInput { .. })
    ));
    assert!(matches!(
        output_file(&images.join("new.csv"), true, &inputs),
        Err(OutputError::InsideInput { .. })
    ));
    let link = tmp.path().join("sneaky.csv");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    assert!(matches!(
        output_file(&link, true, &inputs),
        Err(OutputError::IsInput { .. })
    ));

    let null = tmp.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    for (path, kind) in [
        (images.clone(), "a folder"),
        (PathBuf::from("/dev/null"), "a device"),
        (null, "a symbolic link to a device"),
    ] {
        match output_file(&path, true, &[]) {
            Err(e @ OutputError::NotAFile { .. }) => {
                assert!(e.to_string().contains(kind), "{e}")
            }
            other => panic!("{}: {:?}", path.display(), other.err()),
        }
    }
}

#[test]
fn force_through_a_link_replaces_the_folder_it_leads_to() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    drop(OutputDir::create(&real, &claim(false, &[])).unwrap());
    let first = OutputDir::create(&real, &claim(false, &[])).unwrap();
    fs::write(first.path().join("results.csv"), "earlier").unwrap();
    first.finish().unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let forced = OutputDir::create(&link, &claim(true, &[])).unwrap();
    fs::write(forced.path().join("results.csv"), "new").unwrap();
    forced.finish().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(real.join("results.csv")).unwrap(), "new");
    let names = fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(names, 2, "nothing left beside");
}
