//! add (out = a + b, same shape) and add_bias (out = x + bias, bias `[n]` over the rows of x).

pub fn add(a: &[f32], b: &[f32]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x as f64 + y as f64)
        .collect()
}

pub fn add_bias(x: &[f32], bias: &[f32]) -> Vec<f64> {
    x.chunks_exact(bias.len())
        .flat_map(|row| row.iter().zip(bias).map(|(&v, &b)| v as f64 + b as f64))
        .collect()
}
