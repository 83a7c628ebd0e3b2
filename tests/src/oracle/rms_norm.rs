//! rms_norm: out = x / sqrt(mean(x²) + eps) · w per row; x, out `[rows, dim]`, w `[dim]`.

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, dim: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| v as f64 * r * g as f64));
    }
    out
}
