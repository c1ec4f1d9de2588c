//! The three data sets a pipeline names, loaded once and made consistent: same image shape,
//! test classes aligned to the labeled set's, and test images kept out of pre-training.

use crate::config::{Duplicates, NearDuplicates};
use crate::{Observer, Pipeline, PipelineError, Result};
use imprint_data::{
    near_pairs_between, near_pairs_within, split::stratified_split, Dataset, Fingerprint,
    ImageShape, NearPair,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

pub struct Prepared {
    /// Images for pre-training, labels dropped.
    pub unlabeled: Dataset,
    /// The pool labeled subsets are drawn from; empty for a pre-training given no labeled
    /// images ([`Prepared::load_for_pretraining`]).
    pub labeled: Dataset,
    pub test: Dataset,
    /// What the content checks found and did, for the report.
    pub checks: ContentChecks,
    /// Whether labeled images were given (and with them a test set).
    pub has_labels: bool,
}

/// Images the labeled source held more than once, and test images seen elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentChecks {
    /// Extra copies of labeled images dropped (`data.duplicates = "collapse"`).
    pub duplicates_dropped: usize,
    /// Labeled images dropped for being near-duplicates of an earlier one (with `collapse`).
    pub near_duplicates_dropped: usize,
    /// Images dropped for being listed under two labels (with `collapse`).
    pub contradictory_dropped: usize,
    /// Test images also among the labeled or unlabeled ones, or near-duplicates of one of them
    /// (`data.allow_test_overlap`).
    pub test_overlap: usize,
}

impl ContentChecks {
    /// A phrase for reports; empty when nothing was found.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.duplicates_dropped > 0 {
            parts.push(format!(
                "{} duplicate labeled images dropped",
                self.duplicates_dropped
            ));
        }
        if self.near_duplicates_dropped > 0 {
            parts.push(format!(
                "{} near-duplicate labeled images dropped",
                self.near_duplicates_dropped
            ));
        }
        if self.contradictory_dropped > 0 {
            parts.push(format!(
                "{} images listed under two labels dropped",
                self.contradictory_dropped
            ));
        }
        if self.test_overlap > 0 {
            parts.push(format!(
                "{} test images also among the training images or near-duplicates of them (allowed by data.allow_test_overlap)",
                self.test_overlap
            ));
        }
        parts.join("; ")
    }
}

/// Groups of labeled images with one content: refused, or collapsed to their first copy when
/// they agree on the label (and dropped when they do not).
fn check_duplicates(
    ds: Dataset,
    policy: Duplicates,
    path: &Path,
) -> Result<(Dataset, ContentChecks)> {
    let digests = ds.digests();
    let labels = ds.labels.clone().unwrap_or_default();
    let mut first: HashMap<u64, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of = vec![0usize; ds.len()];
    for (i, d) in digests.iter().enumerate() {
        let g = *first.entry(*d).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
        group_of[i] = g;
    }
    let Some(twins) = groups.iter().find(|g| g.len() > 1) else {
        return Ok((ds, ContentChecks::default()));
    };
    let name = |i: usize| {
        let label = ds.label_name(i).unwrap_or("?");
        format!("{} (label {label})", ds.items[i])
    };
    if policy == Duplicates::Refuse {
        let (a, b) = (twins[0], twins[1]);
        let copies = groups.iter().filter(|g| g.len() > 1).count();
        return Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!(
                "{} and {} are the same image ({copies} images appear more than once); remove \
                 the copies, or set data.duplicates = \"collapse\" to keep one of each",
                name(a),
                name(b)
            ),
        });
    }
    let mut checks = ContentChecks::default();
    let keep: Vec<usize> = (0..ds.len())
        .filter(|&i| {
            let g = &groups[group_of[i]];
            let agree = g.iter().all(|&j| labels.get(j) == labels.get(g[0]));
            if !agree {
                checks.contradictory_dropped += 1;
                false
            } else if g[0] != i {
                checks.duplicates_dropped += 1;
                false
            } else {
                true
            }
        })
        .collect();
    Ok((ds.subset(&keep), checks))
}

/// The first test image also among `others`, as a message, unless overlap is allowed; and the
/// positions of such images.
fn check_test_overlap(
    test: &Dataset,
    others: &[&Dataset],
    allow: bool,
    path: &Path,
) -> Result<Vec<usize>> {
    let mut seen: HashMap<u64, (usize, usize)> = HashMap::new();
    for (k, ds) in others.iter().enumerate() {
        for (i, d) in ds.digests().into_iter().enumerate() {
            seen.entry(d).or_insert((k, i));
        }
    }
    let hits: Vec<(usize, (usize, usize))> = test
        .digests()
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| seen.get(&d).map(|&at| (i, at)))
        .collect();
    match hits.first() {
        Some(&(i, (k, j))) if !allow => Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!(
                "test image {} is also the training image {} ({} test images in all); a test \
                 set must be unseen: remove them, or set data.allow_test_overlap = true",
                test.items[i],
                others[k].items[j],
                hits.len()
            ),
        }),
        _ => Ok(hits.iter().map(|h| h.0).collect()),
    }
}

/// How a near-duplicate pair was found, for messages.
fn describe_pair(p: &NearPair) -> String {
    let mirrored = if p.mirrored {
        ", one the other's mirror image"
    } else {
        ""
    };
    format!(
        "fingerprints {} bits apart, pixels correlating {:.4}{mirrored}",
        p.distance, p.correlation
    )
}

/// How to make the near-duplicate check pass, for messages.
const NEAR_REMEDY: &str = "or lower data.near_duplicate_distance (\"off\" skips the check)";

/// Labeled images that are copies of each other by their fingerprints and pixels (a photo and
/// its re-encoded or re-saved copy): refused, or each group kept as its first image when its
/// labels agree (and dropped when they do not). Returns the images kept and their fingerprints.
fn check_near_duplicates(
    (ds, prints): (Dataset, Vec<Fingerprint>),
    policy: Duplicates,
    distance: u32,
    path: &Path,
    checks: &mut ContentChecks,
) -> Result<(Dataset, Vec<Fingerprint>)> {
    let pairs = near_pairs_within(&ds, &prints, distance);
    let Some(first) = pairs.first() else {
        return Ok((ds, prints));
    };
    if policy == Duplicates::Refuse {
        let name = |i: usize| {
            let label = ds.label_name(i).unwrap_or("?");
            format!("{} (label {label})", ds.items[i])
        };
        return Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!(
                "{} and {} are near-duplicates ({}; {} such pairs); remove the copies, set \
                 data.duplicates = \"collapse\" to keep one of each, {NEAR_REMEDY}",
                name(first.a),
                name(first.b),
                describe_pair(first),
                pairs.len()
            ),
        });
    }
    // Groups of copies (joined through any chain of pairs), each named by its first image.
    let mut first_of: Vec<usize> = (0..ds.len()).collect();
    fn root(first_of: &mut [usize], mut i: usize) -> usize {
        while first_of[i] != i {
            first_of[i] = first_of[first_of[i]];
            i = first_of[i];
        }
        i
    }
    for p in &pairs {
        let (a, b) = (root(&mut first_of, p.a), root(&mut first_of, p.b));
        first_of[a.max(b)] = a.min(b);
    }
    let labels = ds.labels.clone().unwrap_or_default();
    let roots: Vec<usize> = (0..ds.len()).map(|i| root(&mut first_of, i)).collect();
    let mut agree = vec![true; ds.len()];
    for (i, &r) in roots.iter().enumerate() {
        if labels.get(i) != labels.get(r) {
            agree[r] = false;
        }
    }
    let keep: Vec<usize> = (0..ds.len())
        .filter(|&i| {
            let r = roots[i];
            if !agree[r] {
                checks.contradictory_dropped += 1;
                false
            } else if r != i {
                checks.near_duplicates_dropped += 1;
                false
            } else {
                true
            }
        })
        .collect();
    let prints = keep.iter().map(|&i| prints[i]).collect();
    Ok((ds.subset(&keep), prints))
}

/// The first test image that is a near-duplicate of an image of `others`, as a message, unless
/// overlap is allowed; and the positions of such test images.
fn check_test_near_overlap(
    (test, test_prints): (&Dataset, &[Fingerprint]),
    others: &[(&Dataset, &[Fingerprint])],
    distance: u32,
    allow: bool,
    path: &Path,
) -> Result<Vec<usize>> {
    let found: Vec<(usize, NearPair)> = others
        .iter()
        .enumerate()
        .flat_map(|(k, other)| {
            near_pairs_between((test, test_prints), *other, distance)
                .into_iter()
                .map(move |p| (k, p))
        })
        .collect();
    let mut hits: Vec<usize> = found.iter().map(|(_, p)| p.a).collect();
    hits.sort_unstable();
    hits.dedup();
    match found.first() {
        Some((k, p)) if !allow => Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!(
                "test image {} is a near-duplicate of the training image {} ({}; {} test images \
                 in all); a test set must be unseen: remove them, set \
                 data.allow_test_overlap = true, {NEAR_REMEDY}",
                test.items[p.a],
                others[*k].0.items[p.b],
                describe_pair(p),
                hits.len()
            ),
        }),
        _ => Ok(hits),
    }
}

/// The fingerprints at `ids`.
fn pick(prints: &[Fingerprint], ids: &[usize]) -> Vec<Fingerprint> {
    ids.iter().map(|&i| prints[i]).collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn require_labels(ds: &Dataset, path: &Path, key: &str) -> Result<()> {
    if ds.labels.is_none() {
        return Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!("{key} needs labels, and this source has none (no labels file, class folders or CSV labels)"),
        });
    }
    Ok(())
}

/// Writes the split [`Prepared::load`] makes of `source` when a pipeline has no `data.test` (the
/// `--dev` split, with `data.duplicates = "refuse"` and `near` as `data.near_duplicate_distance`) as `out/train.csv` and `out/test.csv`
/// `path,label` lists; returns their lengths. Other jobs (a classifier trained elsewhere on the
/// training part alone, say) can then keep clear of the test images. Existing lists are
/// replaced only with `force`; a folder made for them goes again when the split fails.
pub fn write_split(
    source: &Path,
    test_fraction: f64,
    split_seed: u64,
    near: NearDuplicates,
    out: &Path,
    force: bool,
) -> Result<(usize, usize)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(PipelineError::Input {
            path: source.display().to_string(),
            message: format!("--test-fraction {test_fraction}: must be in (0, 1)"),
        });
    }
    if out.exists() && !out.is_dir() {
        return Err(imprint_fs::OutputError::NotAFolder(out.to_path_buf()).into());
    }
    let mut made = imprint_fs::NewFolders::create(out)?;
    let inputs = [imprint_fs::Input::new("the source", source)];
    let train_csv = crate::prepare_output_file(&out.join("train.csv"), force, &inputs)?;
    let test_csv = crate::prepare_output_file(&out.join("test.csv"), force, &inputs)?;
    let all = imprint_data::load(source, &Default::default())?;
    require_labels(&all, source, "a split")?;
    let (mut all, mut checks) = check_duplicates(all, Duplicates::Refuse, source)?;
    if let Some(distance) = near.distance() {
        let prints = all.fingerprints();
        (all, _) = check_near_duplicates(
            (all, prints),
            Duplicates::Refuse,
            distance,
            source,
            &mut checks,
        )?;
    }
    let labels = all.labels.clone().unwrap_or_default();
    let (train, test) = stratified_split(&labels, all.num_classes(), test_fraction, split_seed);
    imprint_data::split::write_list_csv(&train_csv, &all, &train)?;
    imprint_data::split::write_list_csv(&test_csv, &all, &test)?;
    made.keep();
    Ok((train.len(), test.len()))
}

impl Prepared {
    /// What a pre-training reads: [`Prepared::load`] when labeled images are given (for the
    /// kNN monitor, and to keep their test part out of pre-training), else the unlabeled images
    /// alone, every one of them.
    pub fn load_for_pretraining(p: &Pipeline, obs: &dyn Observer) -> Result<Prepared> {
        let d = &p.data;
        if d.labeled.is_some() {
            return Self::load(p, obs);
        }
        let path = d.unlabeled()?;
        let mut unlabeled = imprint_data::load_with(path, &d.preprocess, &d.storage())?;
        unlabeled = keep_at_most(unlabeled, d.max_unlabeled, d.split_seed);
        unlabeled.labels = None;
        if let Some(problem) = d.preprocess.normalize_problem(unlabeled.shape.channels) {
            return Err(PipelineError::Input {
                path: path.display().to_string(),
                message: format!("{problem}; its images have {}", unlabeled.shape),
            });
        }
        obs.info(&format!("unlabeled: {}", unlabeled.describe()));
        crate::bounds::check_pipeline(p, unlabeled.shape, 0, 0)?;
        let mut none = unlabeled.subset(&[]);
        none.labels = Some(Vec::new());
        Ok(Prepared {
            labeled: none.clone(),
            test: none,
            unlabeled,
            checks: ContentChecks::default(),
            has_labels: false,
        })
    }

    pub fn load(p: &Pipeline, obs: &dyn Observer) -> Result<Prepared> {
        let d = &p.data;
        let storage = d.storage();
        let labeled_path = d.labeled()?;
        let unlabeled_path = d.unlabeled()?;
        let all = imprint_data::load_with(labeled_path, &d.preprocess, &storage)?;
        require_labels(&all, labeled_path, "data.labeled")?;
        let (all, mut checks) = check_duplicates(all, d.duplicates, labeled_path)?;
        let near = d.near_duplicate_distance.distance();
        // Fingerprints of the labeled images, kept beside them through every subset below.
        let (all, all_prints) = match near {
            Some(distance) => {
                let prints = all.fingerprints();
                let (all, prints) = check_near_duplicates(
                    (all, prints),
                    d.duplicates,
                    distance,
                    labeled_path,
                    &mut checks,
                )?;
                (all, Some(prints))
            }
            None => (all, None),
        };
        if all.num_classes() < 2 {
            return Err(PipelineError::Input {
                path: labeled_path.display().to_string(),
                message: format!(
                    "has one class ({}); a classifier needs at least two",
                    all.classes.join(", ")
                ),
            });
        }
        let labels = all.labels.clone().unwrap_or_default();
        let (labeled, test, pool_idx) = match &d.test {
            Some(path) => {
                let test = imprint_data::load_with(path, &d.preprocess, &storage)?;
                require_labels(&test, path, "data.test")?;
                (all.clone(), test.align_classes(&all.classes)?, None)
            }
            None => {
                let (train, test) =
                    stratified_split(&labels, all.num_classes(), d.test_fraction, d.split_seed);
                (all.subset(&train), all.subset(&test), Some(train))
            }
        };
        if test.is_empty() {
            // An accuracy over no images would read as 0%.
            let smallest = all.class_counts().into_iter().map(|(_, n)| n).min();
            return Err(PipelineError::Input {
                path: "data.test_fraction".into(),
                message: format!(
                    "{} of the labeled images holds out no test image (the smallest class has \
                     {}); raise it, or give data.test",
                    d.test_fraction,
                    smallest.unwrap_or(0)
                ),
            });
        }
        let unlabeled_is_labeled = same_file(unlabeled_path, labeled_path);
        let unlabeled = if unlabeled_is_labeled {
            // Test images split off this source must stay unseen by pre-training.
            match &pool_idx {
                Some(train) => all.subset(train),
                None => all,
            }
        } else {
            imprint_data::load_with(unlabeled_path, &d.preprocess, &storage)?
        };
        let mut unlabeled = keep_at_most(unlabeled, d.max_unlabeled, d.split_seed);
        unlabeled.labels = None;
        check_shape(
            &unlabeled.shape,
            &labeled.shape,
            unlabeled_path,
            labeled_path,
        )?;
        let test_path = d.test.as_deref().unwrap_or(labeled_path);
        check_shape(&test.shape, &labeled.shape, test_path, labeled_path)?;
        let mut overlap = check_test_overlap(
            &test,
            &[&labeled, &unlabeled],
            d.allow_test_overlap,
            test_path,
        )?;
        if let (Some(distance), Some(all_prints)) = (near, &all_prints) {
            // A test set split off the labeled images (or an unlabeled source that is those
            // images) was checked with them above.
            let labeled_prints = match &pool_idx {
                Some(train) => pick(all_prints, train),
                None => all_prints.clone(),
            };
            let unlabeled_prints = (!unlabeled_is_labeled).then(|| unlabeled.fingerprints());
            let test_prints = if d.test.is_some() || unlabeled_prints.is_some() {
                test.fingerprints()
            } else {
                Vec::new()
            };
            let mut others: Vec<(&Dataset, &[Fingerprint])> = Vec::new();
            if d.test.is_some() {
                others.push((&labeled, &labeled_prints));
            }
            if let Some(prints) = &unlabeled_prints {
                others.push((&unlabeled, prints));
            }
            if !others.is_empty() {
                overlap.extend(check_test_near_overlap(
                    (&test, &test_prints),
                    &others,
                    distance,
                    d.allow_test_overlap,
                    test_path,
                )?);
            }
        }
        overlap.sort_unstable();
        overlap.dedup();
        checks.test_overlap = overlap.len();
        if let Some(problem) = d.preprocess.normalize_problem(labeled.shape.channels) {
            return Err(PipelineError::Input {
                path: labeled_path.display().to_string(),
                message: format!("{problem}; its images have {}", labeled.shape),
            });
        }
        for notice in storage.notices.take() {
            obs.info(&notice);
        }
        obs.info(&format!("unlabeled: {}", unlabeled.describe()));
        obs.info(&format!("labeled pool: {}", labeled.describe()));
        obs.info(&format!("test: {}", test.describe()));
        crate::bounds::check_pipeline(p, labeled.shape, labeled.num_classes(), labeled.len())?;
        if let Some((key, message)) = p.shape_problem(labeled.shape) {
            return Err(PipelineError::Input { path: key, message });
        }
        let found = checks.describe();
        if !found.is_empty() {
            obs.info(&format!("content checks: {found}"));
        }
        Ok(Prepared {
            unlabeled,
            labeled,
            test,
            checks,
            has_labels: true,
        })
    }

    pub fn shape(&self) -> ImageShape {
        self.labeled.shape
    }
}

fn check_shape(a: &ImageShape, b: &ImageShape, pa: &Path, pb: &Path) -> Result<()> {
    if a != b {
        return Err(PipelineError::Input {
            path: pa.display().to_string(),
            message: format!(
                "images are {a} but {} has {b}; set [data.preprocess] channels/height/width so all sources agree",
                pb.display()
            ),
        });
    }
    Ok(())
}

/// A seeded random `most` of `ds`'s images, in their order; all of them when `most` is 0.
fn keep_at_most(ds: Dataset, most: usize, seed: u64) -> Dataset {
    if most == 0 || ds.len() <= most {
        return ds;
    }
    let mut ids: Vec<usize> = (0..ds.len()).collect();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    ids.truncate(most);
    ids.sort_unstable();
    ds.subset(&ids)
}
