//! `read_checkpoint` on the checkpoints `fixtures/make_fixtures.py` wrote with PyTorch,
//! against the contents the same script recorded in `fixtures/expected.json`.

use imprint_torch::{read_checkpoint, read_state_dict, Dtype, Error, Problem, TorchTensor};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The tensors of one group of `expected.json`, as the reader should return them.
fn expected(group: &str) -> Vec<TorchTensor> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let numbers = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    };
    json[group]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TorchTensor {
            name: t["name"].as_str().unwrap().to_string(),
            dtype: dtype(t["dtype"].as_str().unwrap()),
            shape: numbers(&t["shape"]).iter().map(|&d| d as usize).collect(),
            data: numbers(&t["bits"])
                .iter()
                .map(|&b| f32::from_bits(b as u32))
                .collect(),
        })
        .collect()
}

fn dtype(name: &str) -> Dtype {
    match name {
        "F32" => Dtype::F32,
        "F64" => Dtype::F64,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "I64" => Dtype::I64,
        "I32" => Dtype::I32,
        "I16" => Dtype::I16,
        "I8" => Dtype::I8,
        "U8" => Dtype::U8,
        "Bool" => Dtype::Bool,
        other => panic!("unknown dtype {other}"),
    }
}

fn names(tensors: &[TorchTensor]) -> Vec<String> {
    tensors.iter().map(|t| t.name.clone()).collect()
}

/// Equal names, dtypes, shapes and values to the bit; `label` names what is compared.
fn assert_same(label: &str, actual: &[TorchTensor], expected: &[TorchTensor]) {
    assert_eq!(names(actual), names(expected), "{label}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(
            (a.dtype, &a.shape),
            (e.dtype, &e.shape),
            "{label}: {}",
            a.name
        );
        let bits = |t: &TorchTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(e), "{label}: {}", a.name);
    }
}

fn read(name: &str) -> Vec<TorchTensor> {
    read_checkpoint(&fixture(name)).unwrap()
}

/// The message of the error reading fixture `name` gives.
fn error_message(name: &str) -> String {
    read_checkpoint(&fixture(name)).unwrap_err().to_string()
}

/// The problem reading fixture `name` runs into; its message must be one line naming the file.
fn problem(name: &str) -> Problem {
    problem_at(&fixture(name))
}

fn problem_at(path: &Path) -> Problem {
    let error = read_checkpoint(path).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    match error {
        Error::Invalid { problem, .. } => problem,
        other => panic!("expected a problem with the contents, got {other}"),
    }
}

#[test]
fn zip_state_dict_reads_as_torch_saved_it() {
    let tensors = read("state_dict.pt");
    assert_same("state_dict.pt", &tensors, &expected("state_dict"));
    let count = tensors.iter().find(|t| t.name == "bn.num_batches_tracked");
    assert_eq!(
        count.map(|t| (t.dtype, t.data.clone())),
        Some((Dtype::I64, vec![7.0]))
    );
}

/// Each other format and layout reads as the group of `expected.json` it holds.
#[test]
fn every_format_and_layout_reads_as_torch_saved_it() {
    let cases = [
        // The legacy (non-zip) format.
        ("state_dict_legacy.pt", "state_dict"),
        // safetensors, through the same function.
        ("state_dict.safetensors", "state_dict"),
        // `{'state_dict': {'module.conv.weight': ...}, 'best_prec1': 91.2, 'epoch': 3}`: the
        // state dict under a key loses its data-parallel prefix.
        ("prefixed_legacy.th", "state_dict"),
        // `_rebuild_tensor(storage, offset, size, stride)` of releases before 0.4, as early
        // ImageNet and CIFAR checkpoints hold, rebuilt without hooks; `fc.weight_t` views
        // `fc.weight`'s storage transposed.
        ("old_rebuild_legacy.th", "old_rebuild"),
    ];
    for (file, group) in cases {
        assert_same(file, &read(file), &expected(group));
    }
    // The legacy file reads the same as the zip one.
    let legacy = read("state_dict_legacy.pt");
    assert_same("legacy vs zip", &legacy, &read("state_dict.pt"));
}

#[test]
fn other_dtypes_convert_to_f32() {
    let tensors = read("dtypes.pt");
    assert_same("dtypes.pt", &tensors, &expected("dtypes"));
    let f16 = tensors.iter().find(|t| t.name == "f16").unwrap();
    assert_eq!((f16.dtype, f16.shape.as_slice()), (Dtype::F16, &[6][..]));
}

#[test]
fn strided_views_and_shared_storages_come_out_row_major() {
    // `w.t()`, two slices of one storage at different offsets, a column, a scalar and an
    // `nn.Parameter`.
    for file in ["views.pt", "views_legacy.pt"] {
        let tensors = read(file);
        assert_same(file, &tensors, &expected("views"));
        let by_name = |n: &str| tensors.iter().find(|t| t.name == n).unwrap().data.clone();
        // The base is 0.5 * i - 3 for i in 0..24.
        let base = |i: usize| 0.5 * i as f32 - 3.0;
        assert_eq!(by_name("first"), (2..7).map(base).collect::<Vec<_>>());
        assert_eq!(by_name("second"), (10..22).map(base).collect::<Vec<_>>());
        assert_eq!(by_name("column"), [1, 7, 13, 19].map(base));
        assert_eq!(by_name("scalar"), [2.5]);
    }
}

#[test]
fn os_system_is_refused_in_both_formats() {
    // Protocol 4 in a zip (STACK_GLOBAL) and protocol 2 in a legacy file (GLOBAL); Python
    // writes os.system under its home module, posix.
    for file in ["system.pt", "system_legacy.pt"] {
        assert_eq!(problem(file), Problem::Refused("posix.system".into()));
    }
    let message = error_message("system.pt");
    assert!(message.ends_with(
        "system.pt: refuses to load: the pickle imports posix.system, which is not a \
         tensor-rebuilding function or a plain container"
    ));
}

#[test]
fn eval_hidden_among_tensors_is_refused() {
    assert_eq!(
        problem("eval.pt"),
        Problem::Refused("__builtin__.eval".into())
    );
}

#[test]
fn truncated_legacy_file_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.th");
    let bytes = std::fs::read(fixture("state_dict_legacy.pt")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let Problem::Truncated(detail) = problem_at(&path) else {
        panic!("expected truncation");
    };
    // "the storage of `<name>` needs N bytes, N - 10 remain"
    let numbers: Vec<usize> = detail
        .split(' ')
        .filter_map(|word| word.parse().ok())
        .collect();
    assert!(detail.starts_with("the storage of `"), "{detail}");
    assert_eq!(numbers.len(), 2, "{detail}");
    assert_eq!(numbers[0] - numbers[1], 10, "{detail}");
}

#[test]
fn zip_without_a_storage_entry_names_it() {
    assert_eq!(
        problem("missing_storage.pt"),
        Problem::Archive("no entry `state_dict/data/0` for the storage of `conv.weight`".into())
    );
}

#[test]
fn pickled_list_has_no_state_dict() {
    let message = error_message("list.pt");
    assert!(message.ends_with("list.pt: no state dict found: the top-level object is a list"));
}

/// Two dicts of tensors under keys that name no state dict: the error lists them, and either
/// reads when named.
#[test]
fn dicts_of_tensors_under_unknown_keys_are_listed_and_read_when_named() {
    for (name, keys) in [
        ("nested.pt", ["encoder", "head"]),
        ("two_nets.pt", ["student", "teacher"]),
    ] {
        assert_eq!(
            problem(name),
            Problem::AmbiguousStateDict(keys.map(String::from).to_vec())
        );
        let read = read_state_dict(&fixture(name), Some(keys[1])).unwrap();
        assert_eq!(read.location.key.as_deref(), Some(keys[1]));
        assert_eq!(read.location.others, [keys[0]]);
    }
    let teacher = read_state_dict(&fixture("two_nets.pt"), Some("teacher")).unwrap();
    assert_eq!(
        names(&teacher.tensors),
        ["backbone.conv1.weight", "backbone.fc.bias"]
    );
    assert!(teacher.tensors[0].data.iter().all(|&v| v == 2.0));
}

/// Lightning's `.ckpt`: the state dict under `state_dict`, its names kept with the module's
/// prefix, beside optimizer states that hold tensors too; timm's: `state_dict` before its
/// averaged copy, which is named as the other choice and reads when asked for.
#[test]
fn state_dicts_of_lightning_and_timm_are_found() {
    let lightning = read_state_dict(&fixture("lightning.ckpt"), None).unwrap();
    assert_eq!(lightning.location.key.as_deref(), Some("state_dict"));
    assert!(lightning.location.others.is_empty());
    assert_eq!(
        names(&lightning.tensors),
        ["model.conv1.weight", "model.fc.bias"]
    );
    let timm = read_state_dict(&fixture("ema.pt"), None).unwrap();
    assert_eq!(timm.location.key.as_deref(), Some("state_dict"));
    assert_eq!(timm.location.others, ["state_dict_ema"]);
    assert!(timm
        .tensors
        .iter()
        .all(|t| t.data.iter().all(|&v| v == 1.0)));
    let ema = read_state_dict(&fixture("ema.pt"), Some("state_dict_ema")).unwrap();
    assert!(ema.tensors.iter().all(|t| t.data.iter().all(|&v| v == 2.0)));
    // A key that holds none names what the file has instead.
    let Err(Error::Invalid { problem, .. }) = read_state_dict(&fixture("ema.pt"), Some("ema"))
    else {
        panic!("`ema` is not in the file");
    };
    assert_eq!(
        problem,
        Problem::NoStateDict(
            "no dict of tensors under `ema`; dicts of tensors are under `state_dict`, \
             `state_dict_ema`"
                .into()
        )
    );
}

#[test]
fn big_endian_archive_is_refused() {
    assert!(matches!(problem("big_endian.pt"), Problem::Unsupported(d) if d.contains("big")));
}

#[test]
fn element_count_beyond_the_file_is_an_error() {
    // A legacy storage claiming 10^12 elements.
    assert_eq!(
        problem("huge_count_legacy.th"),
        Problem::Truncated("the storage of `w` needs 4000000000000 bytes, 12 remain".into())
    );
}

#[test]
fn expanded_view_past_the_element_budget_is_refused() {
    // `torch.ones(1).expand(10**6, 10**6)`: 10^12 elements from one stored float.
    let Problem::Tensor { name, detail } = problem("expanded.pt") else {
        panic!("expected a tensor problem");
    };
    assert_eq!(name, "e");
    assert!(detail.starts_with("its 1000000000000 elements"), "{detail}");
}

#[test]
fn other_files_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a checkpoint").unwrap();
    assert_eq!(problem_at(&path), Problem::NotACheckpoint);
    let missing = dir.path().join("missing.pt");
    let message = read_checkpoint(&missing).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: cannot read: ", missing.display())));
}

proptest! {
    /// Arbitrary bytes, and a valid checkpoint of each format with one byte changed or cut
    /// short, read or give an error naming the file; never a panic (`PROPTEST_CASES` raises
    /// the count).
    #[test]
    fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                           which in 0usize..4, at in any::<usize>(), byte in any::<u8>(),
                           cut in 0usize..2048) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pt");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_checkpoint(&path) {
            prop_assert!(e.to_string().starts_with(&path.display().to_string()));
        }
        let source = ["state_dict.pt", "state_dict_legacy.pt", "views_legacy.pt",
                      "state_dict.safetensors"][which];
        let mut valid = std::fs::read(fixture(source)).unwrap();
        let at = at % valid.len();
        valid[at] = byte;
        valid.truncate(valid.len() - cut.min(valid.len()));
        std::fs::write(&path, &valid).unwrap();
        if let Err(e) = read_checkpoint(&path) {
            let message = e.to_string();
            prop_assert!(message.starts_with(&path.display().to_string()), "{}", message);
            prop_assert!(!message.contains('\n'), "{}", message);
        }
    }
}
