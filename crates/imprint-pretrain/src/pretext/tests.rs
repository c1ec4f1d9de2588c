use super::*;

/// BYOL's momentum, lightly's `cosine_schedule(step, steps, 0.99, 1)`: the base at the first
/// step, halfway at the middle one (cos 90° = 0), 1 at the last.
#[test]
fn the_cosine_schedule_runs_from_the_base_to_one() {
    let at = |step| Progress { step, steps: 5 };
    assert!((at(0).cosine(0.99, 1.0) - 0.99).abs() < 1e-12);
    assert!((at(2).cosine(0.99, 1.0) - 0.995).abs() < 1e-12);
    assert_eq!(at(4).cosine(0.99, 1.0), 1.0);
    assert_eq!(Progress { step: 0, steps: 1 }.cosine(0.99, 1.0), 1.0);
}

/// DINO's teacher temperature: 0.04 rising by equal steps to 0.07 over the first 30% of 10
/// steps (3 of them), then 0.07.
#[test]
fn the_warm_up_rises_linearly_then_holds() {
    let at = |step| Progress { step, steps: 10 }.warm_up(0.04, 0.07, 0.3);
    let got: Vec<f64> = (0..5).map(at).collect();
    for (g, e) in got.iter().zip([0.04, 0.05, 0.06, 0.07, 0.07]) {
        assert!((g - e).abs() < 1e-12, "{got:?}");
    }
    assert_eq!(
        Progress { step: 0, steps: 10 }.warm_up(0.04, 0.07, 0.0),
        0.07
    );
}
