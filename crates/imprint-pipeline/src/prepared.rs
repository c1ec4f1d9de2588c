//! The three data sets a pipeline names, loaded once and made consistent: same image shape,
//! test classes aligned to the labeled set's, and test images kept out of pre-training.

use crate::{Observer, Pipeline, PipelineError, Result};
use imprint_data::{split::stratified_split, Dataset, ImageShape};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

pub struct Prepared {
    /// Images for pre-training, labels dropped.
    pub unlabeled: Dataset,
    /// The pool labeled subsets are drawn from.
    pub labeled: Dataset,
    pub test: Dataset,
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

impl Prepared {
    pub fn load(p: &Pipeline, obs: &dyn Observer) -> Result<Prepared> {
        let d = &p.data;
        let all = imprint_data::load(&d.labeled, &d.preprocess)?;
        require_labels(&all, &d.labeled, "data.labeled")?;
        let labels = all.labels.clone().unwrap_or_default();
        let (labeled, test, pool_idx) = match &d.test {
            Some(path) => {
                let test = imprint_data::load(path, &d.preprocess)?;
                require_labels(&test, path, "data.test")?;
                (all.clone(), test.align_classes(&all.classes)?, None)
            }
            None => {
                let (train, test) =
                    stratified_split(&labels, all.num_classes(), d.test_fraction, d.split_seed);
                (all.subset(&train), all.subset(&test), Some(train))
            }
        };
        let mut unlabeled = if same_file(&d.unlabeled, &d.labeled) {
            // Test images split off this source must stay unseen by pre-training.
            match &pool_idx {
                Some(train) => all.subset(train),
                None => all,
            }
        } else {
            imprint_data::load(&d.unlabeled, &d.preprocess)?
        };
        if d.max_unlabeled > 0 && unlabeled.len() > d.max_unlabeled {
            let mut ids: Vec<usize> = (0..unlabeled.len()).collect();
            ids.shuffle(&mut ChaCha8Rng::seed_from_u64(d.split_seed));
            ids.truncate(d.max_unlabeled);
            ids.sort_unstable();
            unlabeled = unlabeled.subset(&ids);
        }
        unlabeled.labels = None;
        check_shape(
            &unlabeled.shape,
            &labeled.shape,
            d.unlabeled.as_path(),
            d.labeled.as_path(),
        )?;
        check_shape(
            &test.shape,
            &labeled.shape,
            d.test.as_deref().unwrap_or(&d.labeled),
            &d.labeled,
        )?;
        if let Some(problem) = d.preprocess.normalize_problem(labeled.shape.channels) {
            return Err(PipelineError::Input {
                path: d.labeled.display().to_string(),
                message: format!("{problem}; its images have {}", labeled.shape),
            });
        }
        obs.info(&format!("unlabeled: {}", unlabeled.describe()));
        obs.info(&format!("labeled pool: {}", labeled.describe()));
        obs.info(&format!("test: {}", test.describe()));
        Ok(Prepared {
            unlabeled,
            labeled,
            test,
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
