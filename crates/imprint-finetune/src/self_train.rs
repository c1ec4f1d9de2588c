//! Self-training's pseudo-labels: the trained model labels the unlabeled images, keeping for
//! each class the images it is surest of.

use crate::Classifier;
use imprint_data::Dataset;
use imprint_nn::ImprintDevice;

/// The teacher's pseudo-labels for the `pool`: image ids and a label for every pool image (only
/// those in `ids` count). Each class keeps at most `fraction * pool / classes` images, those it
/// is most confident of, so that no class crowds out the others.
pub(crate) fn pseudo_labels<D: ImprintDevice>(
    dev: &D,
    teacher: &mut Classifier<D>,
    pool: &Dataset,
    fraction: f64,
) -> (Vec<usize>, Vec<usize>) {
    let predicted = teacher.predict(dev, &pool.pixels);
    let classes = teacher.classes.len();
    let quota = (fraction * pool.len() as f64 / classes as f64).round() as usize;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &(class, _)) in predicted.iter().enumerate() {
        by_class[class].push(i);
    }
    let mut ids = Vec::new();
    for mut members in by_class {
        // Most confident first; ties by index, so the choice does not depend on the sort.
        members.sort_by(|&a, &b| predicted[b].1.total_cmp(&predicted[a].1).then(a.cmp(&b)));
        members.truncate(quota);
        ids.extend(members);
    }
    ids.sort_unstable();
    (ids, predicted.into_iter().map(|(class, _)| class).collect())
}
