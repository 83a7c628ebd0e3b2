//! all_reduce_sum: every member ends with the elementwise sum of all members' values.

pub fn sum(parts: &[Vec<f32>]) -> Vec<f64> {
    let n = parts[0].len();
    (0..n)
        .map(|i| parts.iter().map(|p| p[i] as f64).sum())
        .collect()
}
