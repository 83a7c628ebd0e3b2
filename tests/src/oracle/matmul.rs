//! matmul: y = x·Wᵀ, x `[m, k]`, W `[n, k]`, y `[m, n]`.

/// Σ a[i]·b[i] in f64 (four partial sums: same value up to f64 rounding, 4× fewer stalls).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut s = [0f64; 4];
    let n4 = a.len() / 4 * 4;
    for i in (0..n4).step_by(4) {
        for l in 0..4 {
            s[l] += a[i + l] as f64 * b[i + l] as f64;
        }
    }
    let tail: f64 = (n4..a.len()).map(|i| a[i] as f64 * b[i] as f64).sum();
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// y[i, j] = Σ_k x[i, k]·w[j, k]: x `[m, k]`, w `[n, k]` (dequantized), y `[m, n]`.
pub fn matmul(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            y[i * n + j] = dot(xr, &w[j * k..(j + 1) * k]);
        }
    }
    y
}

/// Same, with x in f64 (for the moe oracle's intermediate).
pub fn matvec_f64(x: &[f64], w: &[f32], n: usize, k: usize) -> Vec<f64> {
    (0..n)
        .map(|j| {
            w[j * k..(j + 1) * k]
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b)
                .sum()
        })
        .collect()
}
