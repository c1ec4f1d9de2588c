//! Seeded, stratified choice of which items are labeled and which are held out.
//!
//! Each class draws from its own ChaCha stream (seed, class), so one class's picks do not change
//! when another class grows, and a larger budget under the same seed contains the smaller one:
//! label-budget curves then compare nested label sets rather than unrelated ones.

use crate::{DataError, Dataset, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How many labeled items to use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelBudget {
    /// Exactly this many of each class.
    PerClass(usize),
    /// This many in all, spread over the classes in proportion to their sizes.
    Total(usize),
    /// This fraction of each class, at least one each.
    Fraction(f64),
}

impl std::fmt::Display for LabelBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelBudget::PerClass(k) => write!(f, "{k} per class"),
            LabelBudget::Total(n) => write!(f, "{n} in total"),
            LabelBudget::Fraction(x) => write!(f, "fraction {x}"),
        }
    }
}

/// Mixed into the seed by [`stratified_split`] so its draws differ from [`sample_labeled`]'s.
const SPLIT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

fn class_rng(seed: u64, class: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(class as u64);
    rng
}

/// Item indices of each class, ascending; grows past `num_classes` if a label is larger.
fn by_class(labels: &[usize], num_classes: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= groups.len() {
            groups.resize(l + 1, Vec::new());
        }
        groups[l].push(i);
    }
    groups
}

/// Splits `n` over `weights` by largest remainder (ties to the lower class); never exceeds a
/// weight as long as `n <= sum(weights)`.
fn apportion(n: usize, weights: &[usize]) -> Vec<usize> {
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    for (c, &w) in weights.iter().enumerate() {
        let q = n as u128 * w as u128;
        out.push((q / total) as usize);
        rems.push((q % total, c));
    }
    let left = n.saturating_sub(out.iter().sum());
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, c) in rems.iter().take(left) {
        out[c] += 1;
    }
    out
}

/// Stratified random pick of labeled items from `labels` (`num_classes` classes).
///
/// `PerClass(k)`: exactly k of each class, an error naming the class when it has fewer.
/// `Total(n)`: n spread over classes in proportion to their sizes, at least 1 each when
/// n >= classes. `Fraction(f)`: round(f * count) per class, at least 1.
/// Returned indices are sorted by class, then ascending.
pub fn sample_labeled(
    labels: &[usize],
    num_classes: usize,
    budget: LabelBudget,
    seed: u64,
) -> Result<Vec<usize>> {
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(DataError::Sampling(format!(
            "label budget: item {i} has label {l}, out of range for {num_classes} classes"
        )));
    }
    let groups = by_class(labels, num_classes);
    let counts: Vec<usize> = groups.iter().map(Vec::len).collect();
    let take: Vec<usize> = match budget {
        LabelBudget::PerClass(k) => {
            if let Some(c) = counts.iter().position(|&n| n < k) {
                return Err(DataError::Sampling(format!(
                    "label budget {budget}: class {c} has only {} labeled items",
                    counts[c]
                )));
            }
            vec![k; counts.len()]
        }
        LabelBudget::Total(n) => {
            let total: usize = counts.iter().sum();
            if n > total {
                return Err(DataError::Sampling(format!(
                    "label budget {budget}: only {total} labeled items available"
                )));
            }
            let present = counts.iter().filter(|&&c| c > 0).count();
            if n >= present {
                // one each first, the rest in proportion to what is left of each class
                let rest: Vec<usize> = counts.iter().map(|&c| c.saturating_sub(1)).collect();
                apportion(n - present, &rest)
                    .iter()
                    .zip(&counts)
                    .map(|(&extra, &c)| extra + usize::from(c > 0))
                    .collect()
            } else {
                apportion(n, &counts)
            }
        }
        LabelBudget::Fraction(f) => {
            if !(f > 0.0 && f <= 1.0) {
                return Err(DataError::Sampling(format!(
                    "label budget {budget}: fraction must be in (0, 1]"
                )));
            }
            counts
                .iter()
                .map(|&c| ((f * c as f64).round() as usize).clamp(c.min(1), c))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(take.iter().sum());
    for (c, (group, &k)) in groups.iter().zip(&take).enumerate() {
        let mut pool = group.clone();
        let (picked, _) = pool.partial_shuffle(&mut class_rng(seed, c), k);
        let mut picked = picked.to_vec();
        picked.sort_unstable();
        out.extend(picked);
    }
    Ok(out)
}

/// Stratified train/test split: `round(test_fraction * count)` of each class goes to test.
/// Returns `(train, test)` index lists, each ascending. The fraction is clamped to [0, 1].
pub fn stratified_split(
    labels: &[usize],
    num_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let f = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let mut train = Vec::new();
    let mut test = Vec::new();
    let split_seed = seed ^ SPLIT_SALT;
    for (c, group) in by_class(labels, num_classes).iter().enumerate() {
        let k = ((f * group.len() as f64).round() as usize).min(group.len());
        let mut pool = group.clone();
        let (held, kept) = pool.partial_shuffle(&mut class_rng(split_seed, c), k);
        test.extend_from_slice(held);
        train.extend_from_slice(kept);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Writes `index,item,label` rows (label as class name, empty if unlabeled) atomically: the
/// audit trail of which items a run used.
pub fn write_selection_csv(path: &Path, ds: &Dataset, indices: &[usize]) -> Result<()> {
    write_rows(
        path,
        ds,
        indices,
        ["index", "item", "label"],
        |i, item, label| [i.to_string(), item.to_string(), label.to_string()],
    )
}

/// Writes the images at `indices` as a `path,label` list the loaders read back as a labeled
/// source, paths made absolute so the list works from any folder. Only sources of image files
/// can be listed (an idx file's images are not files).
pub fn write_list_csv(path: &Path, ds: &Dataset, indices: &[usize]) -> Result<()> {
    let mut absolute = Vec::with_capacity(indices.len());
    for &i in indices {
        let item = ds.items.get(i).map(Path::new);
        let found = item.and_then(|p| std::fs::canonicalize(p).ok());
        match found {
            Some(p) => absolute.push(p.display().to_string()),
            None => {
                return Err(DataError::Invalid {
                    path: path.display().to_string(),
                    msg: format!(
                        "cannot list `{}`: not an image file (idx sources cannot be listed)",
                        item.map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                })
            }
        }
    }
    let mut next = absolute.into_iter();
    write_rows(path, ds, indices, ["path", "label"], |_, _, label| {
        [next.next().unwrap_or_default(), label.to_string()]
    })
}

/// Writes a header and one row per index, built from (index, item, label name), atomically.
fn write_rows<const N: usize>(
    path: &Path,
    ds: &Dataset,
    indices: &[usize],
    header: [&str; N],
    mut row: impl FnMut(usize, &str, &str) -> [String; N],
) -> Result<()> {
    let shown = path.display().to_string();
    let csv_err = |e: csv::Error| DataError::Invalid {
        path: shown.clone(),
        msg: e.to_string(),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(csv_err)?;
    for &i in indices {
        let Some(item) = ds.items.get(i) else {
            return Err(DataError::Invalid {
                path: shown.clone(),
                msg: format!("selection index {i} is out of range for {} items", ds.len()),
            });
        };
        w.write_record(row(i, item, ds.label_name(i).unwrap_or("")))
            .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| DataError::Invalid {
        path: shown.clone(),
        msg: e.to_string(),
    })?;
    imprint_fs::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<usize> {
        // class 0: 10 items, class 1: 6, class 2: 4, interleaved
        let mut l = Vec::new();
        for i in 0..20 {
            l.push(match i % 5 {
                0 | 1 | 3 => 0,
                2 => 1,
                _ => 2,
            });
        }
        l[3] = 1;
        l[13] = 1;
        l
    }

    fn per_class(labels: &[usize], idx: &[usize], classes: usize) -> Vec<usize> {
        let mut c = vec![0; classes];
        for &i in idx {
            c[labels[i]] += 1;
        }
        c
    }

    #[test]
    fn per_class_exact_deterministic_sorted() {
        let l = labels();
        assert_eq!(
            per_class(&l, &(0..20).collect::<Vec<_>>(), 3),
            vec![10, 6, 4]
        );
        let a = sample_labeled(&l, 3, LabelBudget::PerClass(3), 7).unwrap();
        assert_eq!(per_class(&l, &a, 3), vec![3, 3, 3]);
        assert_eq!(
            a,
            sample_labeled(&l, 3, LabelBudget::PerClass(3), 7).unwrap()
        );
        // sorted by class then index
        let keys: Vec<(usize, usize)> = a.iter().map(|&i| (l[i], i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // some seed gives a different pick
        assert!((8..40).any(|s| sample_labeled(&l, 3, LabelBudget::PerClass(3), s).unwrap() != a));
        // more labels under the same seed contain the fewer
        let b = sample_labeled(&l, 3, LabelBudget::PerClass(4), 7).unwrap();
        assert!(a.iter().all(|i| b.contains(i)));
    }

    #[test]
    fn per_class_insufficient_names_class() {
        let l = labels();
        let err = sample_labeled(&l, 3, LabelBudget::PerClass(5), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 2 has only 4"), "{err}");
        let err = sample_labeled(&l, 4, LabelBudget::PerClass(1), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 3 has only 0"), "{err}");
        assert!(sample_labeled(&[0, 5], 3, LabelBudget::PerClass(1), 1).is_err());
    }

    #[test]
    fn total_and_fraction() {
        let l = labels();
        let t = sample_labeled(&l, 3, LabelBudget::Total(10), 3).unwrap();
        assert_eq!(t.len(), 10);
        assert_eq!(per_class(&l, &t, 3), vec![5, 3, 2]);
        let t = sample_labeled(&l, 3, LabelBudget::Total(3), 3).unwrap();
        assert_eq!(per_class(&l, &t, 3), vec![1, 1, 1]);
        let t = sample_labeled(&l, 3, LabelBudget::Total(2), 3).unwrap();
        assert_eq!(per_class(&l, &t, 3), vec![1, 1, 0]);
        let t = sample_labeled(&l, 3, LabelBudget::Total(20), 3).unwrap();
        assert_eq!(t.len(), 20);
        assert!(sample_labeled(&l, 3, LabelBudget::Total(21), 3).is_err());
        let f = sample_labeled(&l, 3, LabelBudget::Fraction(0.1), 3).unwrap();
        assert_eq!(per_class(&l, &f, 3), vec![1, 1, 1]);
        let f = sample_labeled(&l, 3, LabelBudget::Fraction(0.5), 3).unwrap();
        assert_eq!(per_class(&l, &f, 3), vec![5, 3, 2]);
        assert!(sample_labeled(&l, 3, LabelBudget::Fraction(0.0), 3).is_err());
        assert!(sample_labeled(&l, 3, LabelBudget::Fraction(f64::NAN), 3).is_err());
    }

    #[test]
    fn budget_serde_names() {
        let json = serde_json::to_string(&LabelBudget::PerClass(10)).unwrap();
        assert_eq!(json, r#"{"per_class":10}"#);
        let b: LabelBudget = serde_json::from_str(r#"{"fraction":0.25}"#).unwrap();
        assert_eq!(b, LabelBudget::Fraction(0.25));
    }

    #[test]
    fn split_disjoint_covering_stratified() {
        let l = labels();
        let (train, test) = stratified_split(&l, 3, 0.5, 11);
        assert_eq!(per_class(&l, &test, 3), vec![5, 3, 2]);
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(test.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (train.clone(), test.clone()),
            stratified_split(&l, 3, 0.5, 11)
        );
        assert!((12..40).any(|s| stratified_split(&l, 3, 0.5, s).1 != test));
        let (train, test) = stratified_split(&l, 3, 0.0, 1);
        assert_eq!((train.len(), test.len()), (20, 0));
    }

    #[test]
    fn selection_csv_rows() {
        let ds = Dataset {
            shape: crate::ImageShape {
                channels: 1,
                height: 1,
                width: 1,
            },
            pixels: crate::Pixels::from_bytes(vec![0, 255], 1),
            labels: Some(vec![1, 0]),
            classes: vec!["a".into(), "b,c".into()],
            items: vec!["x.png".into(), "y.png".into()],
            source: Default::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sel.csv");
        write_selection_csv(&p, &ds, &[1, 0]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "index,item,label\n1,y.png,a\n0,x.png,\"b,c\"\n");
        let err = write_selection_csv(&p, &ds, &[2]).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }
}
