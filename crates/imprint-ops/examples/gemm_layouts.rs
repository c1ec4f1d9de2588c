//! Times the dense layer's forward product in the two layouts gemm could be given, on the dense
//! autoencoder's layer sizes at batch 128: `x·Wᵀ` with `W` read transposed, and `yᵀ = W·xᵀ` with
//! both operands row-major (the one `linear` uses, transposes of `x` and `y` included).
//! `cargo run --release -p imprint-ops --example gemm_layouts`
use std::time::Instant;

/// `dst (m x n) = lhs (m x k) · rhs (k x n)`, each given by (column stride, row stride).
fn product(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    d: (isize, isize),
    lhs: &[f32],
    l: (isize, isize),
    rhs: &[f32],
    r: (isize, isize),
) {
    let (m, n, k) = shape;
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the strides describe dense matrices inside the slices, whose sizes are checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d.0,
            d.1,
            false,
            lhs.as_ptr(),
            l.0,
            l.1,
            rhs.as_ptr(),
            r.0,
            r.1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// The tiled transpose `linear` uses (`cpu_util::transpose`).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let out = &mut dst[c * rows + r0..c * rows + r1];
                for (o, r) in out.iter_mut().zip(r0..r1) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
}

fn micros(mut f: impl FnMut()) -> f64 {
    (0..20).for_each(|_| f());
    let t = Instant::now();
    (0..300).for_each(|_| f());
    t.elapsed().as_secs_f64() * 1e6 / 300.0
}

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
        let b = 128;
        for (i, o) in [(784, 512), (512, 256), (256, 64), (64, 256), (256, 512), (512, 784)] {
            let x: Vec<f32> = (0..b * i).map(|v| (v % 7) as f32).collect();
            let w: Vec<f32> = (0..o * i).map(|v| (v % 5) as f32).collect();
            let (mut y, mut xt, mut yt) = (vec![0.0; b * o], vec![0.0; b * i], vec![0.0; b * o]);
            let read_transposed = micros(|| product((b, o, i), &mut y, (1, o as isize), &x, (1, i as isize), &w, (i as isize, 1)));
            let both_row_major = micros(|| {
                transpose(&x, b, i, &mut xt);
                product((o, b, i), &mut yt, (1, b as isize), &w, (1, i as isize), &xt, (1, b as isize));
                transpose(&yt, o, b, &mut y);
            });
            println!("{i:>4} -> {o:<4} x·Wᵀ {read_transposed:6.0} µs   (W·xᵀ)ᵀ {both_row_major:6.0} µs   {:.2}x", read_transposed / both_row_major);
        }
    });
}
