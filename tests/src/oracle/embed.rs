//! embed: out[i] = scale · table[ids[i]]; table `[vocab, dim]` (dequantized), out `[n, dim]`.

pub fn embed(table: &[f32], dim: usize, ids: &[i32], scale: f32) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| {
            table[i as usize * dim..(i as usize + 1) * dim]
                .iter()
                .map(move |&v| v as f64 * scale as f64)
        })
        .collect()
}
