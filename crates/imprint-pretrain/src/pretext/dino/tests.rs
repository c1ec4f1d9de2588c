use super::*;

fn matrix(rows: usize, values: Vec<f32>) -> Matrix<Cpu> {
    let cols = values.len() / rows;
    Cpu::default().tensor_from_vec(values, (rows, cols))
}

fn vector(values: Vec<f32>) -> Vector<Cpu> {
    let n = values.len();
    Cpu::default().tensor_from_vec(values, (n,))
}

/// Two outputs, one row, two full-size views, centre (1, 0), teacher temperature 0.5, student
/// 0.25. The teacher's view 0 is (1, ln 3 / 2): centred and sharpened (0, ln 3), so p0 = (1/4,
/// 3/4); view 1 (1 + ln 3 / 2, 0) gives p1 = (3/4, 1/4). The student's view 0 is (0, 0): q0 =
/// (1/2, 1/2); view 1 (ln 3 / 4, 0) gives (ln 3, 0) and q1 = (3/4, 1/4). The pairs are (p0, q1)
/// and (p1, q0): CE = -(1/4 ln 3/4 + 3/4 ln 1/4) and ln 2, and the loss is their mean.
#[test]
fn dino_loss_by_hand() {
    let ln3 = 3f32.ln();
    let teacher = [
        matrix(1, vec![1.0, ln3 / 2.0]),
        matrix(1, vec![1.0 + ln3 / 2.0, 0.0]),
    ];
    let students = vec![
        matrix(1, vec![0.0, 0.0]).leaky_trace(),
        matrix(1, vec![ln3 / 4.0, 0.0]).leaky_trace(),
    ];
    let loss = dino_loss(&teacher, students, &vector(vec![1.0, 0.0]), 0.5, 0.25).as_vec()[0];
    let first = -(0.25 * 0.75f64.ln() + 0.75 * 0.25f64.ln());
    let expected = (first + 2f64.ln()) / 2.0;
    assert!((loss as f64 - expected).abs() < 1e-6, "{loss} against {expected}");
}

/// A small crop is a student view of its own: it meets both teacher views, so three student
/// views make four pairs. With every distribution uniform each pair costs ln(outputs).
#[test]
fn dino_loss_counts_every_pair_but_a_view_with_itself() {
    let flat = || matrix(2, vec![0.0; 6]);
    let students = (0..3).map(|_| flat().leaky_trace()).collect();
    let loss = dino_loss(&[flat(), flat()], students, &vector(vec![0.0; 3]), 0.04, 0.1);
    assert!((loss.as_vec()[0] - 3f32.ln()).abs() < 1e-6);
}

#[test]
fn dino_loss_gradient_matches_finite_differences() {
    let values = |seed: usize| -> Vec<f32> {
        (0..8).map(|i| ((i * 7 + seed * 5) % 11) as f32 / 5.0 - 1.0).collect()
    };
    let teacher = [matrix(2, values(1)), matrix(2, values(2))];
    let center = vector(vec![0.1, -0.2, 0.3, 0.0]);
    let students: Vec<Vec<f32>> = (3..6).map(values).collect();
    let loss_of = |s: &[Vec<f32>]| {
        let taped = s.iter().map(|v| matrix(2, v.clone()).leaky_trace()).collect();
        dino_loss(&teacher, taped, &center, 0.5, 0.3)
    };
    let tensors: Vec<Matrix<Cpu>> = students.iter().map(|v| matrix(2, v.clone())).collect();
    let taped = tensors.iter().map(|t| t.leaky_trace()).collect();
    let grads = dino_loss(&teacher, taped, &center, 0.5, 0.3).backward();
    let eps = 1e-3;
    for (view, tensor) in tensors.iter().enumerate() {
        let analytic = grads.get(tensor).as_vec();
        for i in 0..students[view].len() {
            let at = |d: f32| {
                let mut s = students.clone();
                s[view][i] += d;
                loss_of(&s).as_vec()[0]
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "view {view}, element {i}: finite differences {numeric}, backward {}",
                analytic[i]
            );
        }
    }
}

/// Each output is the cosine between the input row and a weight row, whatever the rows'
/// lengths; the gradients reach the input and the weight, as finite differences say.
#[test]
fn normed_linear_uses_unit_rows_and_its_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let weight = vec![3.0, 4.0, 0.0, -2.0];
    let layer = |w: Vec<f32>| NormedLinear {
        weight: Var::new(&dev, w, &[2, 2], Kind::Param),
    };
    let out = layer(weight.clone()).forward(matrix(1, vec![1.0, 0.0]));
    assert_eq!(out.as_vec(), [0.6, 0.0]);

    let input = vec![0.3, -0.7, 1.1, 0.4];
    let net = layer(weight.clone());
    let x = matrix(2, input.clone());
    // A non-linear function of the outputs, so that the gradient is not a constant.
    let loss = |l: &NormedLinear<Cpu>, x: Matrix<Cpu, OwnedTape<f32, Cpu>>| {
        l.forward(x).square().sum::<(), _>()
    };
    let grads = loss(&net, x.leaky_trace()).backward();
    let (dx, dw) = (grads.get(&x).as_vec(), grads.get(&net.weight.value).as_vec());
    let eps = 1e-3;
    for i in 0..4 {
        let at_x = |d: f32| {
            let mut v = input.clone();
            v[i] += d;
            loss(&net, matrix(2, v).leaky_trace()).as_vec()[0]
        };
        let at_w = |d: f32| {
            let mut w = weight.clone();
            w[i] += d;
            loss(&layer(w), x.leaky_trace()).as_vec()[0]
        };
        for (what, numeric, analytic) in [
            ("input", (at_x(eps) - at_x(-eps)) / (2.0 * eps), dx[i]),
            ("weight", (at_w(eps) - at_w(-eps)) / (2.0 * eps), dw[i]),
        ] {
            assert!(
                (numeric - analytic).abs() < 2e-3,
                "{what} {i}: finite differences {numeric}, backward {analytic}"
            );
        }
    }
}
