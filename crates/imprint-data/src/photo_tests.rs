use super::*;
use crate::augment::{augment_batch, Augment};
use crate::tests::shape;
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Asserts `actual` and `expected` agree to within `tol` everywhere.
fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "at {i}: {a} vs {e}\n{actual:?}");
    }
}

/// An RGB image with every channel varied, values in [0, 1].
fn colourful(height: usize, width: usize) -> Vec<f32> {
    (0..3 * height * width)
        .map(|i| ((i * 37 + 11) % 101) as f32 / 100.0)
        .collect()
}

/// RGB pixels given as (r, g, b) triples, laid out as one row.
fn pixels(colours: &[[f32; 3]]) -> Vec<f32> {
    (0..3)
        .flat_map(|c| colours.iter().map(move |p| p[c]))
        .collect()
}

#[test]
fn hflip_mirrors_each_row_of_a_ramp() {
    let src: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 2 channels, 2x3
    let mut dst = vec![0.0; 12];
    hflip(&src, shape(2, 2, 3), &mut dst);
    assert_eq!(
        dst,
        [2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0, 11.0, 10.0, 9.0]
    );
}

#[test]
fn resized_crop_of_the_whole_image_is_the_identity() {
    let s = shape(3, 4, 5);
    let src = colourful(4, 5);
    let mut dst = vec![0.0; src.len()];
    resized_crop(&src, s, (0, 0, 4, 5), &mut dst);
    assert_eq!(dst, src);
}

#[test]
fn resized_crop_doubles_a_ramp_by_hand() {
    // Columns 1..3 of the ramp 0 1 2 3 are [1, 2]; stretched to 4 with half-pixel centres,
    // output x reads s = max(0, (x + 0.5) / 2 - 0.5) = 0, 0.25, 0.75, 1.25, the last clamped to
    // the crop's edge: 1, 1 + 0.25, 1 + 0.75, 2.
    let src = [0.0, 1.0, 2.0, 3.0];
    let mut dst = [0.0; 4];
    resized_crop(&src, shape(1, 1, 4), (0, 1, 1, 2), &mut dst);
    assert_eq!(dst, [1.0, 1.25, 1.75, 2.0]);
}

#[test]
fn resized_crop_matches_pytorch_bilinear() {
    // x = (torch.arange(16.) / 15).view(1, 1, 4, 4)
    // F.interpolate(x[:, :, 1:4, 0:2], size=(4, 4), mode='bilinear', align_corners=False)
    // (antialias=True gives the same to 6e-8: the crop is upscaled)
    let src: Vec<f32> = (0..16).map(|v| v as f32 / 15.0).collect();
    let mut dst = vec![0.0; 16];
    resized_crop(&src, shape(1, 4, 4), (1, 0, 3, 2), &mut dst);
    let expected = [
        0.26666668, 0.28333336, 0.31666666, 0.33333334, 0.43333337, 0.45000002, 0.48333335, 0.5,
        0.6333333, 0.65000004, 0.68333334, 0.7, 0.8, 0.81666666, 0.85, 0.8666667,
    ];
    assert_close(&dst, &expected, 1e-6);
}

#[test]
fn resized_crop_reads_zero_outside_the_image() {
    // columns 1..3 of [1, 1] are [1, outside = 0], at the same size
    let mut dst = [9.0; 2];
    resized_crop(&[1.0, 1.0], shape(1, 1, 2), (0, 1, 1, 2), &mut dst);
    assert_eq!(dst, [1.0, 0.0]);
    resized_crop(&[1.0, 1.0], shape(1, 1, 2), (0, 0, 1, 0), &mut dst);
    assert_eq!(dst, [0.0, 0.0], "an empty crop");
}

#[test]
fn pad_crop_shifts_in_zeros_exactly() {
    let s = shape(1, 3, 3);
    let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let mut dst = vec![0.0; 9];
    pad_crop(&src, s, 1, (0, 0), &mut dst);
    assert_eq!(dst, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
    pad_crop(&src, s, 1, (2, 2), &mut dst);
    assert_eq!(dst, [5.0, 6.0, 0.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0]);
    pad_crop(&src, s, 1, (1, 1), &mut dst);
    assert_eq!(dst, src, "the centre window is the image");
    pad_crop(&src, s, 4, (0, 8), &mut dst);
    assert_eq!(dst, [0.0; 9], "a window wholly in the padding");
}

#[test]
fn pad_crop_params_cover_zero_to_twice_the_padding() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut seen = [[false; 9]; 2];
    for _ in 0..1000 {
        let (top, left) = pad_crop_params(4, &mut rng);
        assert!(top <= 8 && left <= 8);
        seen[0][top] = true;
        seen[1][left] = true;
    }
    assert_eq!(seen, [[true; 9]; 2], "every offset drawn");
}

#[test]
fn brightness_scales_and_clamps() {
    let mut img = vec![0.0, 0.5, 0.8, 1.0];
    adjust_brightness(&mut img, 0.5);
    assert_eq!(img, [0.0, 0.25, 0.4, 0.5]);
    adjust_brightness(&mut img, 3.0);
    assert_close(&img, &[0.0, 0.75, 1.0, 1.0], 1e-7);
}

#[test]
fn contrast_zero_gives_the_mean_grey_everywhere() {
    // red and blue: lumas 0.299 and 0.114, mean 0.2065
    let s = shape(3, 1, 2);
    let mut img = pixels(&[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
    adjust_contrast(&mut img, s, 0.0);
    assert_close(&img, &[0.2065; 6], 1e-7);
    // a grey image blends with its plain mean: 0.5 * v + 0.5 * 0.4
    let mut grey = vec![0.2, 0.6];
    adjust_contrast(&mut grey, shape(1, 1, 2), 0.5);
    assert_close(&grey, &[0.3, 0.5], 1e-7);
}

#[test]
fn saturation_zero_is_greyscale_and_one_is_the_identity() {
    let s = shape(3, 3, 4);
    let src = colourful(3, 4);
    let mut desaturated = src.clone();
    adjust_saturation(&mut desaturated, s, 0.0);
    let mut grey = src.clone();
    to_grayscale(&mut grey, s);
    assert_close(&desaturated, &grey, 1e-7);
    let mut same = src.clone();
    adjust_saturation(&mut same, s, 1.0);
    assert_eq!(same, src);
    let mut one_channel = vec![0.3, 0.7];
    adjust_saturation(&mut one_channel, shape(1, 1, 2), 0.0);
    assert_eq!(one_channel, [0.3, 0.7], "grey images have no saturation");
}

#[test]
fn hue_half_turns_red_into_cyan() {
    let mut img = pixels(&[[1.0, 0.0, 0.0]]);
    adjust_hue(&mut img, shape(3, 1, 1), 0.5);
    assert_close(&img, &pixels(&[[0.0, 1.0, 1.0]]), 1e-6);
}

#[test]
fn hue_thirds_cycle_the_primaries() {
    let s = shape(3, 1, 3);
    let (red, green, blue) = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]);
    let mut img = pixels(&[red, green, blue]);
    adjust_hue(&mut img, s, 1.0 / 3.0);
    assert_close(&img, &pixels(&[green, blue, red]), 1e-6);
    adjust_hue(&mut img, s, -1.0 / 3.0);
    assert_close(&img, &pixels(&[red, green, blue]), 1e-6);
}

#[test]
fn hue_matches_the_standard_hsv_rotation() {
    // h, s, v = colorsys.rgb_to_hsv(0.8, 0.3, 0.1)
    // colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v) == (0.25, 0.8, 0.1)
    // and for (0.2, 0.5, 0.9) with -0.4: (0.78, 0.9, 0.2)
    let s = shape(3, 1, 1);
    let mut warm = pixels(&[[0.8, 0.3, 0.1]]);
    adjust_hue(&mut warm, s, 0.25);
    assert_close(&warm, &pixels(&[[0.25, 0.8, 0.1]]), 1e-6);
    let mut cool = pixels(&[[0.2, 0.5, 0.9]]);
    adjust_hue(&mut cool, s, -0.4);
    assert_close(&cool, &pixels(&[[0.78, 0.9, 0.2]]), 1e-6);
    // no turn: every colour comes back; greys have no hue to turn
    let src = colourful(2, 5);
    let mut same = src.clone();
    adjust_hue(&mut same, shape(3, 2, 5), 0.0);
    assert_close(&same, &src, 1e-6);
    let mut grey = pixels(&[[0.4, 0.4, 0.4]]);
    adjust_hue(&mut grey, s, 0.3);
    assert_eq!(grey, pixels(&[[0.4, 0.4, 0.4]]));
}

#[test]
fn greyscale_of_red_is_its_luma_in_every_channel() {
    let mut img = pixels(&[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]);
    to_grayscale(&mut img, shape(3, 1, 2));
    assert_eq!(img, [0.299, 1.0, 0.299, 1.0, 0.299, 1.0]);
}

#[test]
fn blur_keeps_a_constant_image() {
    let s = shape(3, 6, 5);
    let mut img = vec![0.625; s.len()];
    gaussian_blur(&mut img, s, 1.3, 5);
    assert_close(&img, &vec![0.625; s.len()], 1e-6);
}

#[test]
fn blur_spreads_a_point_symmetrically_keeping_its_mass() {
    // far enough from the border that reflection adds nothing
    let s = shape(1, 9, 9);
    let mut img = vec![0.0; 81];
    img[4 * 9 + 4] = 1.0;
    gaussian_blur(&mut img, s, 1.0, 5);
    let total: f32 = img.iter().sum();
    assert!((total - 1.0).abs() < 1e-6, "mass {total}");
    for y in 0..9 {
        for x in 0..9 {
            let v = img[y * 9 + x];
            assert!(
                (v - img[(8 - y) * 9 + x]).abs() < 1e-7,
                "up-down at {y},{x}"
            );
            assert!(
                (v - img[y * 9 + 8 - x]).abs() < 1e-7,
                "left-right at {y},{x}"
            );
            assert!((v - img[x * 9 + y]).abs() < 1e-7, "diagonal at {y},{x}");
            let inside = y.abs_diff(4) <= 2 && x.abs_diff(4) <= 2;
            assert_eq!(v > 0.0, inside, "support at {y},{x}");
        }
    }
    assert!(img[4 * 9 + 4] > img[4 * 9 + 5] && img[4 * 9 + 5] > img[4 * 9 + 6]);
}

#[test]
fn blur_matches_pytorch_reflect_padded_convolution() {
    // img = (torch.tensor([(3 * i) % 11 for i in range(42)]) / 10).view(1, 1, 6, 7)
    // p = torch.exp(-0.5 * (torch.linspace(-2, 2, 5) / 1.0) ** 2); k = p / p.sum()
    // F.conv2d(F.pad(img, (2, 2, 2, 2), mode='reflect'), torch.outer(k, k).view(1, 1, 5, 5))
    let s = shape(1, 6, 7);
    let mut img: Vec<f32> = (0..42).map(|i| ((3 * i) % 11) as f32 / 10.0).collect();
    gaussian_blur(&mut img, s, 1.0, 5);
    let expected = [
        0.40584028, 0.42252663, 0.51176405, 0.5300789, 0.40618742, 0.38588232, 0.43052074,
        0.43573916, 0.4248193, 0.49236822, 0.54077774, 0.4499457, 0.39658117, 0.41300052,
        0.45993084, 0.41407588, 0.45340577, 0.56309384, 0.5391566, 0.41563132, 0.37216243,
        0.51525825, 0.45150185, 0.43690625, 0.5465944, 0.56194574, 0.408627, 0.33070976,
        0.64246076, 0.5648447, 0.4592223, 0.50763184, 0.5479365, 0.4295528, 0.3500611, 0.70412064,
        0.6199741, 0.46992114, 0.488236, 0.5502291, 0.46894673, 0.39490837,
    ];
    assert_close(&img, &expected, 1e-6);
}

#[test]
fn reflection_mirrors_about_the_end_samples() {
    let mirrored: Vec<usize> = (-4..9).map(|i| reflect(i, 4)).collect();
    assert_eq!(mirrored, [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
    assert_eq!(reflect(-3, 1), 0);
}

#[test]
fn blur_kernel_is_an_odd_tenth_of_the_side() {
    let sizes: Vec<usize> = [8, 19, 20, 28, 32, 96, 224, 250]
        .map(blur_kernel_size)
        .to_vec();
    assert_eq!(sizes, [1, 1, 3, 3, 3, 9, 23, 25]);
}

#[test]
fn crop_params_stay_inside_the_image_and_near_the_ranges() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let ratio = (3.0 / 4.0, 4.0 / 3.0);
    for (h, w, scale) in [
        (32, 32, (0.08, 1.0)),
        (20, 50, (0.2, 1.0)),
        (7, 9, (0.5, 0.6)),
    ] {
        for _ in 0..1000 {
            let (top, left, ch, cw) = random_resized_crop_params(h, w, scale, ratio, &mut rng);
            assert!(ch >= 1 && cw >= 1 && top + ch <= h && left + cw <= w);
            let central = (top, left, ch, cw) == central_crop(h, w, ratio);
            // sizes are rounded, so the drawn ratio and area lie within half a pixel
            let (chf, cwf) = (ch as f64, cw as f64);
            let ratio_ok =
                (cwf - 0.5) / (chf + 0.5) <= ratio.1 && (cwf + 0.5) / (chf - 0.5) >= ratio.0;
            let area = (h * w) as f64;
            let area_ok = (cwf - 0.5) * (chf - 0.5) <= scale.1 * area
                && (cwf + 0.5) * (chf + 0.5) >= scale.0 * area;
            assert!(central || (ratio_ok && area_ok), "{h}x{w}: {ch}x{cw}");
        }
    }
}

#[test]
fn crop_params_fall_back_to_a_centred_crop_in_the_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // every attempt wants the whole area at least twice as wide as tall: too wide for 10x10,
    // so the full width and half of it in height, centred
    let tall = random_resized_crop_params(10, 10, (1.0, 1.0), (2.0, 3.0), &mut rng);
    assert_eq!(tall, (2, 0, 5, 10));
    // a 10x40 strip and square-at-most crops of all of it: too tall; the widest allowed square
    let wide = random_resized_crop_params(10, 40, (1.0, 1.0), (0.5, 1.0), &mut rng);
    assert_eq!(wide, (0, 15, 10, 10));
    let whole = random_resized_crop_params(10, 12, (1.0, 1.0), (1.2, 1.2), &mut rng);
    assert_eq!(whole, (0, 0, 10, 12), "the image's own ratio");
    assert_eq!(
        random_resized_crop_params(0, 5, (0.5, 1.0), (1.0, 1.0), &mut rng),
        (0, 0, 0, 5)
    );
}

#[test]
fn jitter_draws_a_permutation_and_factors_in_range() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let strengths = [0.4, 1.5, 0.0, 0.1];
    let mut first = [false; 4];
    for _ in 0..1000 {
        let jitter = Jitter::draw(strengths, &mut rng);
        let mut sorted = jitter.order;
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3]);
        first[jitter.order[0]] = true;
        let [b, c, s, h] = jitter.factors;
        assert!(b.is_some_and(|b| (0.6..=1.4).contains(&b)));
        assert!(c.is_some_and(|c| (0.0..=2.5).contains(&c)));
        assert_eq!(s, None);
        assert!(h.is_some_and(|h| (-0.1..=0.1).contains(&h)));
    }
    assert_eq!(first, [true; 4], "each adjustment comes first sometimes");
}

/// `img` after a jitter by `factors` (brightness, contrast, saturation, hue) in `order`.
fn jittered(
    mut img: Vec<f32>,
    s: ImageShape,
    order: [usize; 4],
    factors: [Option<f64>; 4],
) -> Vec<f32> {
    Jitter { order, factors }.apply(&mut img, s);
    img
}

#[test]
fn jitter_applies_in_its_order() {
    let s = shape(3, 1, 1);
    let red = pixels(&[[1.0, 0.0, 0.0]]);
    let factors = [None, None, Some(0.0), Some(0.5)];
    // greying red first leaves nothing for the hue to turn: red's luma
    let grey_first = jittered(red.clone(), s, [2, 3, 0, 1], factors);
    assert_close(&grey_first, &[0.299; 3], 1e-7);
    // turning it first greys cyan: 0.587 + 0.114
    let turned_first = jittered(red, s, [3, 2, 1, 0], factors);
    assert_close(&turned_first, &[0.701; 3], 1e-6);
}

#[test]
fn jitter_on_a_grey_image_changes_only_brightness_and_contrast() {
    let s = shape(1, 1, 2);
    let colour_only = [None, None, Some(0.0), Some(0.5)];
    let img = jittered(vec![0.2, 0.6], s, [0, 1, 2, 3], colour_only);
    assert_eq!(img, [0.2, 0.6]);
    let all = [Some(0.5), Some(0.0), Some(0.0), Some(0.5)];
    let img = jittered(img, s, [3, 2, 1, 0], all);
    assert_close(&img, &[0.2, 0.2], 1e-7);
}

/// Settings with every operation on, each chance strictly between 0 and 1.
fn simclr() -> Augment {
    Augment {
        crop_scale: Some((0.2, 1.0)),
        pad_crop: 2,
        jitter: [0.4, 0.4, 0.4, 0.1],
        jitter_probability: 0.8,
        grayscale: 0.2,
        blur: 0.5,
        ..Augment::default()
    }
}

#[test]
fn operations_that_are_off_draw_nothing() {
    let s = shape(3, 6, 6);
    let src = colourful(6, 6);
    let jitter_never = Augment {
        jitter: [0.4, 0.4, 0.4, 0.1],
        jitter_probability: 0.0,
        ..Augment::default()
    };
    for off in [Augment::default(), jitter_never] {
        assert!(off.is_identity());
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut dst = vec![0.0; src.len()];
        off.apply_photo(&src, s, &mut rng, &mut dst);
        assert_eq!(dst, src);
        assert_eq!(rng.next_u64(), ChaCha8Rng::seed_from_u64(3).next_u64());
    }
    assert!(!simclr().is_identity());
}

#[test]
fn empty_images_go_through_every_operation() {
    for s in [shape(3, 0, 5), shape(3, 4, 0), shape(0, 4, 4)] {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut dst: Vec<f32> = Vec::new();
        simclr().apply_photo(&[], s, &mut rng, &mut dst);
        assert!(dst.is_empty());
    }
}

#[test]
fn apply_draws_in_the_documented_order() {
    let s = shape(3, 20, 20); // a shorter side of 20: kernel 3
    let src = colourful(20, 20);
    let settings = simclr();
    let mut outcomes = Vec::new();
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut dst = vec![0.0; src.len()];
        settings.apply_photo(&src, s, &mut rng, &mut dst);

        let mut by_hand = ChaCha8Rng::seed_from_u64(seed);
        let (top, left) = pad_crop_params(2, &mut by_hand);
        let mut padded = vec![0.0; src.len()];
        pad_crop(&src, s, 2, (top, left), &mut padded);
        let (top, left, ch, cw) =
            random_resized_crop_params(20, 20, (0.2, 1.0), settings.crop_ratio, &mut by_hand);
        let mut expected = vec![0.0; src.len()];
        resized_crop(&padded, s, (top, left, ch, cw), &mut expected);
        let jittered = by_hand.gen::<f64>() < 0.8;
        if jittered {
            Jitter::draw(settings.jitter, &mut by_hand).apply(&mut expected, s);
        }
        let greyed = by_hand.gen::<f64>() < 0.2;
        if greyed {
            to_grayscale(&mut expected, s);
        }
        let blurred = by_hand.gen::<f64>() < 0.5;
        if blurred {
            let sigma = 0.1 + (2.0 - 0.1) * by_hand.gen::<f64>();
            gaussian_blur(&mut expected, s, sigma, 3);
        }
        assert_eq!(dst, expected, "seed {seed}");
        assert_eq!(
            rng.next_u64(),
            by_hand.next_u64(),
            "seed {seed}: draws left"
        );
        outcomes.push([jittered, greyed, blurred]);
    }
    for op in 0..3 {
        let happened = outcomes.iter().filter(|o| o[op]).count();
        assert!(
            happened > 0 && happened < outcomes.len(),
            "chance {op} went both ways"
        );
    }
}

/// `count` copies of the [`colourful`] `side x side` image, and their shape.
fn colourful_batch(count: usize, side: usize) -> (ImageShape, Vec<f32>) {
    let images = (0..count).flat_map(|_| colourful(side, side)).collect();
    (shape(3, side, side), images)
}

/// `images` augmented by [`simclr`] under `seed`.
fn simclr_batch(images: &[f32], s: ImageShape, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0; images.len()];
    augment_batch(images, s, &simclr(), seed, &mut out);
    out
}

#[test]
fn batches_repeat_by_seed_and_vary_across_seeds() {
    let (s, images) = colourful_batch(6, 8);
    let run = |seed| simclr_batch(&images, s, seed);
    let first = run(11);
    assert_eq!(first, run(11));
    assert_ne!(first, run(12));
    let mut images_differ = first.chunks(s.len());
    let one = images_differ.next();
    assert!(
        images_differ.any(|other| Some(other) != one),
        "images draw apart"
    );
    assert!(first.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn batches_do_not_depend_on_the_thread_count() {
    let (s, images) = colourful_batch(16, 10);
    let on_threads = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| simclr_batch(&images, s, 4))
    };
    assert_eq!(on_threads(1), on_threads(3));
}

#[test]
fn problem_names_each_bad_key() {
    let base = simclr();
    assert_eq!(base.problem(), None);
    assert_eq!(Augment::default().problem(), None);
    let cases = [
        (
            Augment {
                crop_scale: Some((0.0, 1.0)),
                ..base
            },
            "augment_crop_scale",
        ),
        (
            Augment {
                crop_scale: Some((0.6, 0.5)),
                ..base
            },
            "augment_crop_scale",
        ),
        (
            Augment {
                crop_scale: Some((0.5, 1.1)),
                ..base
            },
            "augment_crop_scale",
        ),
        (
            Augment {
                crop_ratio: (0.0, 1.0),
                ..base
            },
            "augment_crop_ratio",
        ),
        (
            Augment {
                crop_ratio: (2.0, 1.0),
                ..base
            },
            "augment_crop_ratio",
        ),
        (
            Augment {
                pad_crop: 65,
                ..base
            },
            "augment_pad_crop",
        ),
        (
            Augment {
                jitter: [-0.1, 0.0, 0.0, 0.0],
                ..base
            },
            "augment_jitter",
        ),
        (
            Augment {
                jitter: [0.4, 0.4, f64::NAN, 0.1],
                ..base
            },
            "augment_jitter",
        ),
        (
            Augment {
                jitter: [0.4, 0.4, 0.4, 0.6],
                ..base
            },
            "augment_jitter",
        ),
        (
            Augment {
                jitter_probability: 1.5,
                ..base
            },
            "augment_jitter_probability",
        ),
        (
            Augment {
                grayscale: -0.2,
                ..base
            },
            "augment_grayscale",
        ),
        (
            Augment {
                blur: f64::NAN,
                ..base
            },
            "augment_blur",
        ),
    ];
    for (settings, key) in cases {
        assert_eq!(
            settings.problem().map(|(k, _)| k),
            Some(key),
            "{settings:?}"
        );
    }
    let widest = Augment {
        pad_crop: 64,
        crop_scale: Some((1.0, 1.0)),
        jitter: [0.0, 0.0, 0.0, 0.5],
        ..base
    };
    assert_eq!(widest.problem(), None, "the range ends are allowed");
}

#[test]
fn describe_names_each_operation_in_order() {
    let cifar = Augment {
        pad_crop: 4,
        ..simclr()
    };
    assert_eq!(
        cifar.describe(),
        [
            "4-px padded crops",
            "random resized crops 20-100%",
            "colour jitter 0.4/0.4/0.4/0.1 (p 0.8)",
            "greyscale (p 0.2)",
            "blur (p 0.5)",
        ]
    );
    let certain = Augment {
        crop_scale: Some((0.08, 1.0)),
        crop_ratio: (0.5, 2.0),
        jitter: [0.8, 0.8, 0.8, 0.2],
        grayscale: 1.0,
        ..Augment::default()
    };
    assert_eq!(
        certain.describe(),
        [
            "random resized crops 8-100%, aspect 0.5-2",
            "colour jitter 0.8/0.8/0.8/0.2",
            "greyscale",
        ]
    );
    assert!(Augment::default().describe().is_empty());
}

#[test]
fn settings_read_with_defaults_for_missing_fields() {
    let empty: Augment = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, Augment::default());
    assert!(empty.is_identity());
    let jitter: Augment =
        serde_json::from_str(r#"{"augment_jitter": [0.4, 0.4, 0.4, 0.1]}"#).unwrap();
    assert_eq!(jitter.jitter_probability, 1.0);
    assert_eq!(jitter.crop_ratio, (0.75, 4.0 / 3.0));
    let full = simclr();
    let text = serde_json::to_string(&full).unwrap();
    assert_eq!(serde_json::from_str::<Augment>(&text).unwrap(), full);
}

#[test]
fn resized_crop_to_halves_a_ramp_by_hand() {
    // The whole ramp 0 1 2 3 to 2 columns: output x reads s = (x + 0.5) * 2 - 0.5 = 0.5, 2.5.
    let src = [0.0, 1.0, 2.0, 3.0];
    let mut dst = [0.0; 2];
    resized_crop_to(&src, shape(1, 1, 4), (0, 0, 1, 4), shape(1, 1, 2), &mut dst);
    assert_eq!(dst, [0.5, 2.5]);
}

#[test]
fn small_crops_are_of_the_asked_size_and_repeat() {
    use crate::augment::augment_batch_to;
    // Each image one grey level per channel: any crop of it, at any size, keeps the levels.
    let (big, small) = (shape(3, 8, 8), shape(3, 4, 4));
    let images: Vec<f32> = (0..5)
        .flat_map(|i| (0..3).flat_map(move |c| vec![(i * 3 + c) as f32 / 20.0; 64]))
        .collect();
    let augment = Augment {
        crop_scale: Some((0.1, 0.4)),
        flip: true,
        ..Augment::default()
    };
    let mut out = vec![0.0; 5 * small.len()];
    augment_batch_to(&images, big, &augment, 7, small, &mut out);
    for (i, img) in out.chunks(small.len()).enumerate() {
        for (c, plane) in img.chunks(16).enumerate() {
            let level = (i * 3 + c) as f32 / 20.0;
            assert!(plane.iter().all(|v| (v - level).abs() < 1e-6), "{plane:?}");
        }
    }
    let mut again = vec![0.0; out.len()];
    augment_batch_to(&images, big, &augment, 7, small, &mut again);
    assert_eq!(out, again);
}
