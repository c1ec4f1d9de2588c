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

/// An entry that names only its kind takes every setting's default, and one that sets a few
/// keys keeps the rest at theirs (each method's defaults are written once, in `Default`).
#[test]
fn unset_keys_take_the_methods_defaults() {
    let parse = |s: &str| toml::from_str::<PretextConfig>(s).unwrap();
    let defaults = [
        PretextConfig::Reconstruction(reconstruction::Settings::default()),
        PretextConfig::Contrastive(contrastive::Settings::default()),
        PretextConfig::Rotation(rotation::Settings::default()),
        PretextConfig::Byol(byol::Settings::default()),
        PretextConfig::Dino(dino::Settings::default()),
        PretextConfig::Vicreg(vicreg::Settings::default()),
    ];
    assert_eq!(defaults.len(), PretextConfig::KINDS.len());
    for d in defaults {
        assert_eq!(parse(&format!("kind = \"{}\"", d.kind())), d);
    }
    assert_eq!(
        parse("kind = \"contrastive\"\nweight = 2.0"),
        PretextConfig::Contrastive(contrastive::Settings::new(2.0, 0.5))
    );
    let expected = dino::Settings {
        momentum: 0.99,
        crops: LocalCrops {
            local_crops: 6,
            ..LocalCrops::default()
        },
        ..dino::Settings::default()
    };
    assert_eq!(expected.student_temperature, 0.1);
    assert_eq!(expected.crops.local_scale, (0.05, 0.4));
    assert_eq!(
        parse("kind = \"dino\"\nmomentum = 0.99\nlocal_crops = 6"),
        PretextConfig::Dino(expected)
    );
}
