//! glu: out = act(gate) ⊙ up, all `[rows, n]`.

use kiln_core::Activation;

/// x·sigmoid(x), or 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

pub fn glu(gate: &[f32], up: &[f32], a: Activation) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| act(a, g as f64) * u as f64)
        .collect()
}
